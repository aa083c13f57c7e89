"""POST /v1/apps/<app_id>/events — the messaging platform's event stream."""
from __future__ import annotations

import json
import re

import orjson
from flask import Blueprint, current_app, g, request

from bridge.auth import require_token
from bridge.db import make_session_factory
from bridge.errors import ApiError
from bridge.intake.backlog import Backlog
from bridge.intake.committer import GroupCommit, Overloaded
from bridge.intake.service import prepare
from bridge.jobs import BatchedSender, session_info

bp = Blueprint("intake", __name__)

# Deepest nesting of arrays and objects a body may have. Real payloads need 4 or 5 levels; a deeper one
# could exhaust a serializer later (orjson refuses to write more than 254 levels).
MAX_JSON_DEPTH = 32


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


def read_json_body() -> object:
    """The request's JSON body, or a 4xx: 415 if it is not declared JSON, 400 if it does not parse or
    nests arrays and objects more than MAX_JSON_DEPTH levels deep."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON with 'Content-Type: application/json'.")
    raw = request.get_data(cache=False)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        body = _repaired(raw, exc)
    if _nested_deeper_than(body, MAX_JSON_DEPTH):
        raise ApiError(400, "too_deeply_nested",
                       f"The body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep.", {"limit": MAX_JSON_DEPTH})
    return body


_SURROGATE = re.compile("[\ud800-\udfff]")


def _repaired(raw: bytes, error: orjson.JSONDecodeError) -> object:
    """The body parsed despite broken text, or 400 invalid_json if it is not JSON at all.

    orjson refuses a whole body for one string holding a lone UTF-16 surrogate escape (`"\\ud83c"`, a
    half emoji cut by a client) or a byte that is not UTF-8. Such text is repaired instead: each broken
    character becomes U+FFFD, so one broken title does not refuse the other items of the request,
    nor make the platform resend it forever. Only bodies orjson refuses take this slower path.
    """
    try:
        body = json.loads(raw.decode("utf-8", errors="replace"), parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {error}.") from None
    if _nested_deeper_than(body, MAX_JSON_DEPTH):
        return body  # refused by the caller as too deeply nested; not walked here
    return _without_lone_surrogates(body)


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _without_lone_surrogates(value: object) -> object:
    """`value` with every lone surrogate in its strings (keys too) replaced by U+FFFD. json pairs the
    valid surrogate escapes into one character, so any surrogate left is a lone one."""
    if type(value) is str:
        return _SURROGATE.sub("\ufffd", value)
    if type(value) is list:
        return [_without_lone_surrogates(item) for item in value]
    if type(value) is dict:
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


def _nested_deeper_than(value: object, limit: int) -> bool:
    """True if `value` has more than `limit` levels of arrays and objects (a scalar has none).
    Walks level by level, without recursion, and stops at the first level past the limit."""
    level = [value] if type(value) in (dict, list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    below.append(child)
        level = below
    return False


def read_items(limit: int) -> list[object]:
    """One object or an array of up to `limit` objects, as a list."""
    body = read_json_body()
    if isinstance(body, dict):
        return [body]
    if not isinstance(body, list):
        raise ApiError(400, "invalid_body", "The body must be a JSON object or an array of objects.")
    if not body:
        raise ApiError(400, "empty_batch", "The array holds no items.")
    if len(body) > limit:
        raise ApiError(413, "too_many_items", f"At most {limit} items per request; this one has {len(body)}.",
                       {"limit": limit, "received": len(body)})
    return body


@bp.post("/v1/apps/<app_id>/events")
@require_token("api")
def post_events(app_id: str):
    """Answers 202 once the request's events are committed (with those of concurrent requests:
    committer.py); 429 while the app's backlog is past INTAKE_MAX_BACKLOG; 503 when the process
    cannot store them in time. Both with Retry-After, and nothing of the request stored."""
    committer, backlog = current_app.extensions["bridge.intake"]
    items = read_items(current_app.extensions["bridge"].settings.max_items_per_request)
    prepared = prepare(app_id, g.app.enabled_kinds, items)
    if prepared.events:
        if backlog.full(app_id):
            raise ApiError(429, "backlog_full", f"More than {backlog.limit:,} of this app's events wait for delivery "
                           "to Amplitude; retry later.", {"limit": backlog.limit}, retry_after=30)
        try:
            committer.submit(prepared)
        except Overloaded as exc:
            raise ApiError(503, "overloaded", f"The bridge cannot take events this fast: {exc}",
                           retry_after=exc.retry_after) from None
    body = prepared.result.as_dict()
    if prepared.result.rejected and len(prepared.result.rejected) == len(items):
        raise ApiError(400, "invalid_events", "No item in the request is valid; see details.rejected.", body)
    return body, 202
