"""The cohort webhook Amplitude posts to, and the cohort reads of the API.

POST /v1/apps/<app_id>/amplitude/cohorts                 webhook (cohort token): store, queue, answer 200
GET  /v1/apps/<app_id>/cohorts                           the app's cohorts (paged)
GET  /v1/apps/<app_id>/cohorts/<cohort_id>               the report, with the 10 latest syncs
GET  /v1/apps/<app_id>/cohorts/<cohort_id>/syncs         the sync history, newest first (paged)
GET  /v1/apps/<app_id>/cohorts/<cohort_id>/unmatched     user ids without a channel record (paged)
GET  /v1/apps/<app_id>/cohorts/<cohort_id>/devices       the resolved audience (paged JSON, or CSV)

Paged reads take `limit` (1–1000, default 100) and `after` (the `next` of the previous page) and
answer {"items": [...], "next": cursor-or-null}; cursors are opaque and bound to their listing (`bridge.paging`).
"""
from __future__ import annotations

import csv
import gc
import io
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, Response, current_app, request
from marshmallow import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from bridge.auth import require_token
from bridge.cohorts import report
from bridge.cohorts.models import Cohort
from bridge.cohorts.schemas import WEBHOOK_SCHEMA
from bridge.cohorts.webhook import store_batch
from bridge.errors import ApiError
from bridge.intake.schemas import flatten_errors
from bridge.intake.views import read_json_body
from bridge.paging import after_key, next_cursor
from bridge.registry.models import CHANNELS
from bridge.request_scope import get_db
from bridge.spreadsheet import safe_row

bp = Blueprint("cohorts", __name__)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
RECENT_SYNCS = 10
_CSV_FLUSH_ROWS = 1000


# A body over this many bytes (or of unknown length) is parsed only while one of the process's
# COHORT_MAX_CONCURRENT_BODIES slots is free: a handful of parsed bodies fit any process's memory. (The
# server has already buffered the raw body, in a temporary file above 512 KB: bridge.webserver.)
LARGE_BODY_BYTES = 1024 * 1024


@bp.record_once
def _set_up(state) -> None:
    settings = state.app.extensions["bridge"].settings
    state.app.extensions["bridge.cohort_bodies"] = threading.BoundedSemaphore(settings.cohort_max_concurrent_bodies)


@bp.post("/v1/apps/<app_id>/amplitude/cohorts")
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
    return {
        "status": "duplicate" if stored.duplicate else "accepted",
        "batch_id": stored.public_id,
        "cohort_id": data["cohort_id"],
        "message_id": data["message_id"],
        "users": data["users"].sent,
        "unusable_users": data["users"].unusable,
        "state": stored.state,
        "retries": stored.retries,
    }


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
@require_token("api")
def list_cohorts(app_id: str):
    (after,) = after_key((str,)) or (None,)
    return _paged(report.list_cohorts(get_db(), app_id, after=after, limit=_limit()))


@bp.get("/v1/apps/<app_id>/cohorts/<cohort_id>")
@require_token("api")
def cohort_report(app_id: str, cohort_id: str):
    cohort = _cohort(app_id, cohort_id)
    body = report.cohort_report(get_db(), cohort)
    body["recent_syncs"] = report.sync_history(get_db(), cohort, before=None, limit=RECENT_SYNCS).items
    return body


@bp.get("/v1/apps/<app_id>/cohorts/<cohort_id>/syncs")
@require_token("api")
def cohort_syncs(app_id: str, cohort_id: str):
    cohort = _cohort(app_id, cohort_id)
    (before,) = after_key((int,)) or (None,)
    return _paged(report.sync_history(get_db(), cohort, before=before, limit=_limit()))


@bp.get("/v1/apps/<app_id>/cohorts/<cohort_id>/unmatched")
@require_token("api")
def cohort_unmatched(app_id: str, cohort_id: str):
    cohort = _cohort(app_id, cohort_id)
    (after,) = after_key((str,)) or (None,)
    page = report.unmatched_users(get_db(), cohort, after=after, limit=_limit())
    return {"items": [item["user_id"] for item in page.items], "next": next_cursor(page.next_key)}


@bp.get("/v1/apps/<app_id>/cohorts/<cohort_id>/devices")
@require_token("api")
def cohort_devices(app_id: str, cohort_id: str):
    """The resolved audience. `channel=push|email|sms`, `subscribed=true|false|unknown` (false lists only
    unsubscribed records, never those of unknown state); `format=csv` (or `Accept: text/csv`) streams
    every matching record as CSV instead of one JSON page, an unknown state as an empty cell."""
    cohort = _cohort(app_id, cohort_id)
    channel = request.args.get("channel")
    if channel is not None and channel not in CHANNELS:
        raise ApiError(400, "invalid_parameter", f"channel must be one of {', '.join(CHANNELS)}.", {"channel": channel})
    subscribed = _state_arg("subscribed")
    if _wants_csv():
        return _csv_response(cohort, channel, subscribed)
    after = after_key((str, int))
    return _paged(report.audience(get_db(), cohort, channel=channel, subscribed=subscribed, after=after, limit=_limit()))


def _cohort(app_id: str, cohort_id: str) -> Cohort:
    cohort = get_db().get(Cohort, (app_id, cohort_id))
    if cohort is None:
        raise ApiError(404, "cohort_not_found", f"No cohort {cohort_id!r} has been synced to this app.")
    return cohort


def _csv_response(cohort: Cohort, channel: str | None, subscribed: report.State) -> Response:
    runtime = current_app.extensions["bridge"]

    def rows():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(report.AUDIENCE_COLUMNS)
        with runtime.session() as session:
            for n, item in enumerate(report.iter_audience(session, cohort, channel=channel, subscribed=subscribed), 1):
                writer.writerow(safe_row(_csv_value(item[column]) for column in report.AUDIENCE_COLUMNS))
                if n % _CSV_FLUSH_ROWS == 0:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
        yield buffer.getvalue()

    filename = re.sub(r"[^A-Za-z0-9._-]", "_", cohort.cohort_id)
    return Response(rows(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="cohort-{filename}-devices.csv"'})


def _csv_value(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def _wants_csv() -> bool:
    if "format" in request.args:
        fmt = request.args["format"]
        if fmt not in ("json", "csv"):
            raise ApiError(400, "invalid_parameter", "format must be json or csv.", {"format": fmt})
        return fmt == "csv"
    return request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv"


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


def _limit() -> int:
    raw = request.args.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "invalid_parameter", f"limit must be a whole number from 1 to {MAX_LIMIT}.", {"limit": raw})
    return int(raw)


def _paged(page: report.Page) -> dict[str, object]:
    return {"items": page.items, "next": next_cursor(page.next_key)}
