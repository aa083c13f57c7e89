"""The cohort webhook Amplitude posts to, and the cohort reads of the API.

POST /v1/apps/<app_id>/amplitude/cohorts                 webhook (cohort token): store, queue, answer 200
GET  /v1/apps/<app_id>/cohorts                           the app's cohorts (paged)
GET  /v1/apps/<app_id>/cohorts/<cohort_id>               the report, with the 10 latest syncs
GET  /v1/apps/<app_id>/cohorts/<cohort_id>/syncs         the sync history, newest first (paged)
GET  /v1/apps/<app_id>/cohorts/<cohort_id>/unmatched     user ids without a channel record (paged)
GET  /v1/apps/<app_id>/cohorts/<cohort_id>/devices       the resolved audience (paged JSON, or CSV)
PUT  /v1/apps/<app_id>/cohorts/<cohort_id>/platform-sync the cohort's tags on the platform, on or off
GET  /v1/apps/<app_id>/cohorts/<cohort_id>/platform-sync/plan   what that would change (a dry run)

Paged reads take `limit` (1–1000, default 100) and `after` (the `next` of the previous page) and
answer {"items": [...], "next": cursor-or-null}; cursors are opaque and bound to their listing (`bridge.paging`).
"""
from __future__ import annotations

import gc
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, Response, current_app, request
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from bridge.apidoc import APP_ID, Body, documented, path_parameter, query_parameter
from bridge.apps.auth import require_token
from bridge.apps.models import App
from bridge.cohorts import report, tagging
from bridge.cohorts.tagger import tag_after_commit
from bridge.cohorts.models import Cohort
from bridge.cohorts.schemas import (
    WEBHOOK_SCHEMA,
    AudiencePageSchema,
    CohortPageSchema,
    CohortReportSchema,
    CohortWebhookSchema,
    PlatformPlanSchema,
    PlatformSyncRequestSchema,
    PlatformSyncSchema,
    SyncPageSchema,
    UnmatchedPageSchema,
    WebhookAckSchema,
)
from bridge.cohorts.webhook import store_batch
from bridge.errors import ApiError
from bridge.http import choice_arg, csv_response, read_json_body, wants_csv
from bridge.paging import DEFAULT_LIMIT, MAX_LIMIT, after_key, next_cursor, page_limit
from bridge.registry.models import CHANNELS
from bridge.request_scope import get_db
from bridge.validation import flatten_errors

bp = Blueprint("cohorts", __name__)

RECENT_SYNCS = 10

COHORT_PATH = (APP_ID, path_parameter("cohort_id", 128))
PAGING = (query_parameter("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}),
          query_parameter("after", {"type": "string"}, "The `next` of the previous page."))


# A body over this many bytes (or of unknown length) is parsed only while one of the process's
# COHORT_MAX_CONCURRENT_BODIES slots is free: a handful of parsed bodies fit any process's memory. (The
# server has already buffered the raw body, in a temporary file above 512 KB: bridge.webserver.)
LARGE_BODY_BYTES = 1024 * 1024


@bp.record_once
def _set_up(state) -> None:
    settings = state.app.extensions["bridge"].settings
    state.app.extensions["bridge.cohort_bodies"] = threading.BoundedSemaphore(settings.cohort_max_concurrent_bodies)


@bp.post("/v1/apps/<app_id>/amplitude/cohorts")
@documented("Amplitude's cohort webhook", answer=WebhookAckSchema, path=(APP_ID,),
            body=Body(CohortWebhookSchema, max_bytes=lambda settings: settings.cohort_max_body_bytes))
@require_token("cohort")
def receive_batch(app_id: str):
    """Amplitude's cohort webhook: 200 as soon as the batch is stored; the membership work is queued.

    Answers `WebhookAckSchema`. Entries of `users` without a usable user_id are set aside and counted
    (`unusable_users`), never a reason to refuse the batch; only a malformed envelope is a 400
    `invalid_payload` naming the fields, and then nothing is stored. Also, with nothing stored: 413
    `payload_too_large` over COHORT_MAX_BODY_BYTES, 413 `too_many_users` over
    COHORT_MAX_USERS_PER_BATCH entries, and 503 `overloaded` (Retry-After) while the process already
    parses COHORT_MAX_CONCURRENT_BODIES large bodies."""
    runtime = current_app.extensions["bridge"]
    request.max_content_length = runtime.settings.cohort_max_body_bytes
    if (request.content_length or 0) > request.max_content_length:
        raise RequestEntityTooLarge()  # refused before a slot is taken or a byte is read
    with _body_slot(), _collector_paused():
        data = _webhook_payload(runtime.settings.cohort_max_users_per_batch)
    stored = store_batch(get_db(), app_id, data)  # its job is queued by the request's commit
    return WebhookAckSchema().dump({"batch": stored, "body": data})


def _webhook_payload(max_users: int) -> dict:
    """The validated webhook body, `users` loaded as `BatchUsers`. The parsed JSON (two dicts per user)
    is freed on return; only the user ids are kept. 413 `too_many_users` when `users` has more than
    `max_users` entries."""
    body = read_json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "The body must be a JSON object (Amplitude's cohort webhook payload).")
    users = body.get("users")
    if isinstance(users, list) and len(users) > max_users:
        raise ApiError(413, "too_many_users",
                       f"The batch has {len(users):,} users; at most {max_users:,} are accepted per webhook batch "
                       f"(COHORT_MAX_USERS_PER_BATCH). Nothing was stored.",
                       {"field": "users", "limit": max_users, "received": len(users)})
    try:
        return WEBHOOK_SCHEMA.load(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid_payload", "The cohort webhook body is invalid; see details.",
                       flatten_errors(exc.messages)) from None


@contextmanager
def _body_slot() -> Iterator[None]:
    """Hold one of the process's slots for large bodies while a body over LARGE_BODY_BYTES (or of unknown
    length) is parsed; when none is free, answer 503 at once rather than hold more parsed bodies in
    memory (Amplitude retries). Smaller bodies need no slot."""
    length = request.content_length
    if length is not None and length <= LARGE_BODY_BYTES:
        yield
        return
    slots = current_app.extensions["bridge.cohort_bodies"]
    if not slots.acquire(blocking=False):
        raise ApiError(503, "overloaded", "This process is already parsing as many large cohort bodies as it may "
                       "(COHORT_MAX_CONCURRENT_BODIES); retry shortly. Nothing was stored.", retry_after=2)
    try:
        yield
    finally:
        slots.release()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector from running while a webhook body is parsed.

    A 10,000-user body is ~20,000 short-lived dicts. Collections triggered while they are alive promote
    them, and every few requests that sets off a full collection of the process's whole heap (50–150 ms,
    the ack's tail latency). Paused, they are freed by reference counting before the collector runs.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@bp.get("/v1/apps/<app_id>/cohorts")
@documented("The app's cohorts", answer=CohortPageSchema, errors=(400,), path=(APP_ID,), query=PAGING)
@require_token("api")
def list_cohorts(app_id: str):
    (after,) = after_key((str,)) or (None,)
    return _paged(CohortPageSchema(), report.list_cohorts(get_db(), app_id, after=after, limit=page_limit()))


@bp.get("/v1/apps/<app_id>/cohorts/<cohort_id>")
@documented("A cohort's report", answer=CohortReportSchema, path=COHORT_PATH)
@require_token("api")
def cohort_report(app_id: str, cohort_id: str):
    cohort = _cohort(app_id, cohort_id)
    body = report.cohort_report(get_db(), cohort)
    body["recent_syncs"] = report.sync_history(get_db(), cohort, before=None, limit=RECENT_SYNCS).items
    return CohortReportSchema().dump(body)


@bp.get("/v1/apps/<app_id>/cohorts/<cohort_id>/syncs")
@documented("A cohort's sync history, newest first", answer=SyncPageSchema, errors=(400,), path=COHORT_PATH,
            query=PAGING)
@require_token("api")
def cohort_syncs(app_id: str, cohort_id: str):
    cohort = _cohort(app_id, cohort_id)
    (before,) = after_key((int,)) or (None,)
    return _paged(SyncPageSchema(), report.sync_history(get_db(), cohort, before=before, limit=page_limit()))


@bp.get("/v1/apps/<app_id>/cohorts/<cohort_id>/unmatched")
@documented("A cohort's users without a channel record", answer=UnmatchedPageSchema, errors=(400,),
            path=COHORT_PATH, query=PAGING)
@require_token("api")
def cohort_unmatched(app_id: str, cohort_id: str):
    cohort = _cohort(app_id, cohort_id)
    (after,) = after_key((str,)) or (None,)
    return _paged(UnmatchedPageSchema(), report.unmatched_users(get_db(), cohort, after=after, limit=page_limit()))


@bp.get("/v1/apps/<app_id>/cohorts/<cohort_id>/devices")
@documented("A cohort's resolved audience", answer=AudiencePageSchema, errors=(400,), path=COHORT_PATH,
            query=(*PAGING, query_parameter("channel", {"type": "string", "enum": list(CHANNELS)}),
                   query_parameter("subscribed", {"type": "string", "enum": ["true", "false", "unknown"]},
                                   "One subscription state: true, false (unsubscribed only) or unknown."),
                   query_parameter("format", {"type": "string", "enum": ["json", "csv"]},
                                   "csv (or 'Accept: text/csv') streams every matching record as CSV.")),
            media_types=("application/json", "text/csv"))
@require_token("api")
def cohort_devices(app_id: str, cohort_id: str):
    """The resolved audience. `channel=push|email|sms`, `subscribed=true|false|unknown` (false lists only
    unsubscribed records, never those of unknown state); `format=csv` (or `Accept: text/csv`) streams
    every matching record as CSV instead of one JSON page, an unknown state as an empty cell."""
    cohort = _cohort(app_id, cohort_id)
    channel = choice_arg("channel", CHANNELS)
    subscribed = _state_arg("subscribed")
    if wants_csv():
        return _csv_response(cohort, channel, subscribed)
    after = after_key((str, int))
    return _paged(AudiencePageSchema(),
                  report.audience(get_db(), cohort, channel=channel, subscribed=subscribed, after=after, limit=page_limit()))


PLATFORM_SYNC_REQUEST = PlatformSyncRequestSchema()


@bp.put("/v1/apps/<app_id>/cohorts/<cohort_id>/platform-sync")
@documented("Turn a cohort's platform tags on or off", answer=PlatformSyncSchema, errors=(400, 409),
            path=COHORT_PATH, body=Body(PlatformSyncRequestSchema, max_bytes=lambda settings: settings.max_body_bytes))
@require_token("api")
def put_platform_sync(app_id: str, cohort_id: str):
    """While on, users entering the cohort get the tag (value "1") on the app's platform and users
    leaving it have it removed; turning it on queues the tags of the cohort's current members. 409 when
    the app has no platform connection (`bridge apps update --platform`) or the tag key is taken."""
    try:
        wanted = PLATFORM_SYNC_REQUEST.load(_object_body())
    except ValidationError as exc:
        raise ApiError(400, "invalid_request", "The body is not a valid platform-sync setting.",
                       {"errors": flatten_errors(exc.messages)}) from None
    db = get_db()
    if wanted["enabled"] and db.get(App, app_id).platform is None:
        raise ApiError(409, "platform_not_connected", "Connect the app to its platform first: bridge apps update "
                       "APP_ID --platform onesignal --platform-app-id ID --platform-api-key KEY.")
    try:
        tagging.set_platform_sync(db, app_id, cohort_id, enabled=wanted["enabled"], tag_key=wanted["tag_key"])
    except tagging.InvalidTagKey as exc:
        raise ApiError(400, "invalid_request", "The body is not a valid platform-sync setting.",
                       {"errors": {"tag_key": str(exc)}}) from None
    except tagging.PlatformSyncError as exc:
        raise ApiError(409, "tag_key_conflict", str(exc)) from None
    if wanted["enabled"]:
        tag_after_commit(db, app_id)  # bridge.web commits once this returns
    return PlatformSyncSchema().dump(tagging.sync_status(db, app_id, cohort_id))


@bp.get("/v1/apps/<app_id>/cohorts/<cohort_id>/platform-sync/plan")
@documented("What a cohort's platform sync would change (a dry run)", answer=PlatformPlanSchema, errors=(400,),
            path=COHORT_PATH, query=(query_parameter("tag_key", {"type": "string"},
                                                     "The key to plan with while the sync was never set."),))
@require_token("api")
def platform_sync_plan(app_id: str, cohort_id: str):
    """Counts and a sample of the tags turning the sync on (or, while it is on, its next sends) would
    add and remove. Sends nothing, changes nothing."""
    try:
        return PlatformPlanSchema().dump(tagging.plan(get_db(), app_id, cohort_id, request.args.get("tag_key")))
    except tagging.PlatformSyncError as exc:
        raise ApiError(400, "invalid_request", str(exc), {"errors": {"tag_key": str(exc)}}) from None


def _object_body() -> dict:
    body = read_json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "The body must be a JSON object.")
    return body


def _cohort(app_id: str, cohort_id: str) -> Cohort:
    cohort = get_db().get(Cohort, (app_id, cohort_id))
    if cohort is None:
        raise ApiError(404, "cohort_not_found", f"No cohort {cohort_id!r} has been synced to this app.")
    return cohort


def _csv_response(cohort: Cohort, channel: str | None, subscribed: report.State) -> Response:
    runtime = current_app.extensions["bridge"]

    def rows():
        with runtime.session() as session:
            for item in report.iter_audience(session, cohort, channel=channel, subscribed=subscribed):
                yield [_csv_value(item[column]) for column in report.AUDIENCE_COLUMNS]

    filename = re.sub(r"[^A-Za-z0-9._-]", "_", cohort.cohort_id)
    return csv_response(report.AUDIENCE_COLUMNS, rows(), f"cohort-{filename}-devices.csv")


def _csv_value(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def _state_arg(name: str) -> report.State:
    raw = request.args.get(name)
    if raw is None:
        return None
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    if raw.lower() == report.UNKNOWN:
        return report.UNKNOWN
    raise ApiError(400, "invalid_parameter", f"{name} must be true, false or unknown.", {name: raw})


def _paged(schema: Schema, page: report.Page) -> dict[str, object]:
    """`page` as `schema` (`bridge.cohorts.schemas.page_schema`) shows it, with the cursor to the next one."""
    return schema.dump({"items": page.items, "next": next_cursor(page.next_key)})
