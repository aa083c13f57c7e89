"""POST /v1/apps/<app_id>/events — the messaging platform's event stream."""
from __future__ import annotations

from flask import Blueprint, current_app, g

from bridge import metrics
from bridge.apidoc import APP_ID, Body, documented
from bridge.apps.auth import require_token
from bridge.db import make_session_factory
from bridge.errors import ApiError
from bridge.http import read_items
from bridge.intake.backlog import Backlog
from bridge.intake.committer import GroupCommit, Overloaded
from bridge.intake.schemas import IntakeResultSchema, ItemSchema
from bridge.intake.service import IntakeResult, prepare
from bridge.jobs import BatchedSender, session_info

bp = Blueprint("intake", __name__)


@bp.record_once
def _set_up(state) -> None:
    """One group commit and one backlog bound per web process (see committer.py and backlog.py). The
    group commit's sessions send the drains their commits ask for through a `BatchedSender`: with Redis,
    a few calls per second per app, not one per commit."""
    runtime = state.app.extensions["bridge"]
    settings = runtime.settings
    sessions = make_session_factory(runtime.engine, session_info(BatchedSender(runtime.runner)))
    state.app.extensions["bridge.intake"] = (
        GroupCommit(sessions, max_queued_events=settings.intake_max_queued_events,
                    max_wait_seconds=settings.intake_max_wait_seconds),
        Backlog(runtime.sessions, settings.intake_max_backlog),
    )


INTAKE_RESULT = IntakeResultSchema()


@bp.post("/v1/apps/<app_id>/events")
@documented("Post event-stream items", answer=IntakeResultSchema, status=202, errors=(429,), path=(APP_ID,),
            body=Body(ItemSchema, max_bytes=lambda settings: settings.max_body_bytes,
                      max_items=lambda settings: settings.max_items_per_request, dotted_keys=True))
@require_token("api")
def post_events(app_id: str):
    """Answers 202 once the request's events are committed (with those of concurrent requests:
    committer.py); 429 while the app's backlog is past INTAKE_MAX_BACKLOG; 503 when the process
    cannot store them in time. Both with Retry-After, and nothing of the request stored."""
    committer, backlog = current_app.extensions["bridge.intake"]
    items = read_items(current_app.extensions["bridge"].settings.max_items_per_request)
    prepared = prepare(app_id, g.app.vocabulary, items)
    if prepared.events:
        if backlog.full(app_id):
            raise ApiError(429, "backlog_full", f"More than {backlog.limit:,} of this app's events wait for delivery "
                           "to Amplitude; retry later.", {"limit": backlog.limit}, retry_after=30)
        try:
            committer.submit(prepared)
        except Overloaded as exc:
            raise ApiError(503, "overloaded", f"The bridge cannot take events this fast: {exc}",
                           retry_after=exc.retry_after) from None
    _count_events(app_id, prepared.result)
    body = INTAKE_RESULT.dump(prepared.result)
    if prepared.result.rejected and len(prepared.result.rejected) == len(items):
        raise ApiError(400, "invalid_events", "No item in the request is valid; see details.rejected.", body)
    return body, 202


@bp.after_request
def _count_request(response):
    """bridge_intake_requests_total: by the app that authenticated (else UNAUTHENTICATED, so a client
    cannot make up label values) and the outcome, `accepted` or the error code answered."""
    access = g.get("app")
    outcome = "accepted" if response.status_code == 202 else g.get("error_code", str(response.status_code))
    metrics.INTAKE_REQUESTS.labels(access.id if access else metrics.UNAUTHENTICATED, outcome).inc()
    return response


def _count_events(app_id: str, result: IntakeResult) -> None:
    """bridge_intake_events_total, once the request's events are stored: each item in its bucket."""
    for outcome, count in (("accepted", result.accepted), ("skipped", result.skipped),
                           ("duplicates", result.duplicates), ("ignored", result.ignored),
                           ("rejected", len(result.rejected))):
        if count:
            metrics.INTAKE_EVENTS.labels(app_id, outcome).inc(count)
