"""The dashboard's pages. Each reads the services the API's views read, never those views:

GET  /dashboard                                   the apps
GET  /dashboard/login, POST /dashboard/login      the login form (ADMIN_TOKEN), POST /dashboard/logout
GET  /dashboard/apps/<app_id>                     delivery health, dead letters by reason, the cohorts
POST /dashboard/apps/<app_id>/replay              re-queue dead (or unresolved) events, by reason
GET  /dashboard/apps/<app_id>/cohorts/<cohort_id> users versus devices, platform sync, sync history

Registered by bridge.web only when ADMIN_TOKEN is set; otherwise /dashboard is a 404.
"""
from __future__ import annotations

from flask import Blueprint, Flask, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from bridge.apidoc import pages_for_people
from bridge.apps.models import App
from bridge.cohorts import report
from bridge.cohorts.models import Cohort
from bridge.dashboard import auth, charts
from bridge.db import utcnow
from bridge.delivery.models import REPLAYABLE_REASONS
from bridge.delivery.replay import replay as run_replay
from bridge.delivery.stats import delivery_stats
from bridge.request_scope import get_db
from bridge.settings import Settings

bp = pages_for_people(Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates",
                                static_folder="static"))

MOST_APPS = 500
MOST_COHORTS = 200
SYNC_HISTORY = 20
PUBLIC_ENDPOINTS = ("dashboard.login", "dashboard.static")


def init_app(app: Flask, settings: Settings) -> None:
    """Serve the dashboard on `app`: its login, cookie and CSRF checks (`auth.init_app`), then its pages."""
    auth.init_app(app, settings)
    app.register_blueprint(bp)


@bp.before_request
def _guard():
    auth.check_csrf()  # every POST, the login's too, before anything else
    if request.endpoint not in PUBLIC_ENDPOINTS and not auth.logged_in():
        return redirect(url_for("dashboard.login"), 303)
    return None


@bp.after_request
def _headers(response):
    return auth.secure_headers(response, page=request.endpoint != "dashboard.static")


@bp.context_processor
def _session_state() -> dict[str, object]:
    return {"logged_in": auth.logged_in()}


@bp.app_template_filter("count")
def _count(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


@bp.app_template_filter("when")
def _when(at) -> str:
    return "–" if at is None else at.strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The login form; POST: 303 to the apps with a new session for ADMIN_TOKEN, else the form again, 401."""
    if request.method == "POST":
        if auth.log_in(request.form.get("token", "")):
            return redirect(url_for("dashboard.apps"), 303)
        return render_template("dashboard/login.html", refused=True), 401
    return render_template("dashboard/login.html", refused=False)


@bp.post("/logout")
def logout():
    auth.log_out()
    return redirect(url_for("dashboard.login"), 303)


@bp.get("")
def apps():
    """The apps, the first MOST_APPS by name."""
    rows = get_db().execute(select(App.id, App.name, App.region, App.platform).order_by(App.name, App.id)
                            .limit(MOST_APPS)).all()
    return render_template("dashboard/apps.html", apps=rows, most=MOST_APPS)


@bp.get("/apps/<app_id>")
def app_page(app_id: str):
    """Delivery health (`delivery_stats`, what /deliveries/stats answers), dead letters by reason with
    their replay buttons, and the app's cohorts (the first MOST_COHORTS by id). 404 for an unknown app."""
    db = get_db()
    app = _app(app_id)
    stats = delivery_stats(db, app)
    now = utcnow()
    oldest = stats["oldest_pending_at"]
    hour = stats["delivered_last_hour"]
    return render_template(
        "dashboard/app.html", app=app, stats=stats, now=now,
        oldest_age_seconds=None if oldest is None else max(0, int((now - oldest).total_seconds())),
        delivered_in_hour=sum(hour["per_minute"]), minutes=charts.minutes(hour["start"], hour["per_minute"]),
        cohorts=report.list_cohorts(db, app.id, after=None, limit=MOST_COHORTS).items, most_cohorts=MOST_COHORTS,
        replayable=REPLAYABLE_REASONS)


@bp.post("/apps/<app_id>/replay")
def replay(app_id: str):
    """Re-queue the app's dead events of `reason` (all of them without one; "unresolved_user" resolves
    skipped events again), then 303 back to the app's page, which says how many. 400 for another reason,
    404 for an unknown app."""
    app = _app(app_id)
    reason = request.form.get("reason") or None
    if reason is not None and reason not in REPLAYABLE_REASONS:
        abort(400, f"reason must be one of {', '.join(REPLAYABLE_REASONS)}")
    db = get_db()
    result = run_replay(db, app_id=app.id, reason=reason, checkpoint=db.commit)
    flash(f"{result.requeued:,} event(s) re-queued for delivery"
          + (f"; {result.still_unresolved:,} still without a known user" if result.still_unresolved else "") + ".")
    return redirect(url_for("dashboard.app_page", app_id=app.id), 303)  # the request's commit queues the drain


@bp.get("/apps/<app_id>/cohorts/<cohort_id>")
def cohort_page(app_id: str, cohort_id: str):
    """The cohort's report (`report.cohort_report`, what the API answers) as a waterfall and tables, its
    platform sync and its SYNC_HISTORY latest batches. 404 for an unknown app or cohort."""
    db = get_db()
    app = _app(app_id)
    cohort = db.get(Cohort, (app.id, cohort_id))
    if cohort is None:
        abort(404, f"No cohort {cohort_id!r} has been synced to this app.")
    body = report.cohort_report(db, cohort)
    return render_template(
        "dashboard/cohort.html", app=app, report=body,
        steps=charts.waterfall(body["users"]["in_cohort"], body["explanations"], body["segment_size"]),
        syncs=report.sync_history(db, cohort, before=None, limit=SYNC_HISTORY).items)


def _app(app_id: str) -> App:
    app = get_db().get(App, app_id)
    if app is None:
        abort(404, f"No app {app_id!r}.")
    return app
