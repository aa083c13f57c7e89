"""The dashboard's pages. Each reads the services the API's views read, never those views:

GET  /dashboard                                   the apps
GET  /dashboard/login, POST /dashboard/login      the login form (ADMIN_TOKEN), POST /dashboard/logout
GET  /dashboard/apps/<app_id>                     delivery health, dead letters by reason, the cohorts
POST /dashboard/apps/<app_id>/replay              re-queue dead (or unresolved) events, by reason
GET  /dashboard/apps/<app_id>/cohorts/<cohort_id> users versus devices (as last computed), platform sync,
                                                  sync history
POST /dashboard/apps/<app_id>/cohorts/<cohort_id>/recompute   queue a recompute of the cohort's report

Registered by bridge.web only when ADMIN_TOKEN is set; otherwise /dashboard is a 404.
"""
from __future__ import annotations

import logging

from flask import Blueprint, Flask, abort, current_app, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from bridge.apidoc import pages_for_people
from bridge.apps.models import App
from bridge.cohorts import report, snapshots, tagging
from bridge.cohorts.models import RECEIVED, Cohort
from bridge.dashboard import auth, charts
from bridge.db import utcnow
from bridge.delivery.models import REPLAYABLE_REASONS
from bridge.delivery.replay import replay as run_replay
from bridge.delivery.stats import delivery_stats
from bridge.request_scope import get_db
from bridge.settings import Settings

log = logging.getLogger(__name__)

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


@bp.app_template_filter("ago")
def _ago(at) -> str:
    """How long before now `at` was, in its largest whole unit: "42 s", "3 min", "5 h", "2 days"."""
    seconds = max(0, int((utcnow() - at).total_seconds()))
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}s" if unit == "day" and n != 1 else f"{n} {unit}"
    return f"{seconds} s"


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
    """The cohort's report as last computed (`snapshots.latest`: what the API answered at its
    `computed_at`), as a waterfall and tables, with how old it is and whether the cohort changed since,
    or that it is being computed; its platform sync and its SYNC_HISTORY latest batches, read now.
    Never computes the report: that takes seconds for a large cohort. 404 for an unknown app or cohort."""
    db = get_db()
    app = _app(app_id)
    cohort = _cohort(app, cohort_id)
    snapshot = snapshots.latest(db, app.id, cohort.cohort_id)
    body = None if snapshot is None else snapshot.report
    interval, now = snapshots.refresh_interval(current_app.extensions["bridge"]), utcnow()
    syncs = report.sync_history(db, cohort, before=None, limit=SYNC_HISTORY).items
    return render_template(
        "dashboard/cohort.html", app=app, cohort=cohort, snapshot=snapshot, report=body, now=now,
        changed=snapshot is not None and cohort.updated_at > snapshot.cohort_updated_at,
        refresh_due=None if snapshot is None else snapshot.computed_at + interval,
        refresh_seconds=int(interval.total_seconds()),
        # what holds the sweep's recompute back (snapshots.schedule_stale_reports)
        batches_waiting=any(s["state"] == RECEIVED and s["received_at"] > now - interval for s in syncs),
        steps=None if body is None else charts.waterfall(body["users"]["in_cohort"], body["explanations"],
                                                         body["segment_size"]),
        sync=tagging.sync_status(db, app.id, cohort.cohort_id), syncs=syncs)


@bp.post("/apps/<app_id>/cohorts/<cohort_id>/recompute")
def recompute(app_id: str, cohort_id: str):
    """Queue a recompute of the cohort's report, unless one is already waiting or running, then 303 back
    to its page, which says which. Queued at once: it writes nothing, so no commit is waited for. 404 for
    an unknown app or cohort."""
    app = _app(app_id)
    cohort = _cohort(app, cohort_id)
    try:
        queued = snapshots.schedule_refresh(current_app.extensions["bridge"], app.id, cohort.cohort_id)
    except Exception as exc:  # noqa: BLE001 - Redis unreachable: the operator is told, the page still answers
        log.warning("could not queue the recompute of cohort %s/%s: %s", app.id, cohort.cohort_id, exc)
        flash("The recompute could not be queued: the job queue did not answer. Try again in a moment.")
    else:
        flash("A recompute of this cohort's report is queued; reload this page to see it once it is done." if queued
              else "A recompute of this cohort's report is already queued or running. What changed after it started "
                   "is not in it: press again once this page shows it.")
    return redirect(url_for("dashboard.cohort_page", app_id=app.id, cohort_id=cohort.cohort_id), 303)


def _app(app_id: str) -> App:
    app = get_db().get(App, app_id)
    if app is None:
        abort(404, f"No app {app_id!r}.")
    return app


def _cohort(app: App, cohort_id: str) -> Cohort:
    cohort = get_db().get(Cohort, (app.id, cohort_id))
    if cohort is None:
        abort(404, f"No cohort {cohort_id!r} has been synced to this app.")
    return cohort
