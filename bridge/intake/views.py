"""POST /v1/apps/<app_id>/events — the messaging platform's event stream."""
from __future__ import annotations

import orjson
from flask import Blueprint, current_app, g, request

from bridge.auth import require_token
from bridge.delivery.scheduling import schedule_drain
from bridge.errors import ApiError
from bridge.intake.service import ingest

bp = Blueprint("intake", __name__)


def read_json_body() -> object:
    """The request's JSON body, or a 4xx: 415 if it is not declared JSON, 400 if it does not parse."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON with 'Content-Type: application/json'.")
    raw = request.get_data(cache=False)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {exc}.") from None


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
    runtime = current_app.extensions["bridge"]
    items = read_items(runtime.settings.max_items_per_request)
    result = ingest(g.db, g.app, items)
    if result.accepted:
        schedule_drain(runtime, app_id)
    body = result.as_dict()
    if result.rejected and len(result.rejected) == len(items):
        raise ApiError(400, "invalid_events", "No item in the request is valid; see details.rejected.", body)
    return body, 202
