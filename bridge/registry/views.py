"""POST /v1/apps/<app_id>/subscriptions (bulk upsert) and GET .../subscriptions/<subscription_id>."""
from __future__ import annotations

from datetime import datetime

from flask import Blueprint

from bridge.auth import require_token
from bridge.errors import ApiError
from bridge.intake.views import read_items
from bridge.registry.models import Subscription
from bridge.registry.schemas import load_records
from bridge.registry.service import UpsertCounts, find_record, upsert_records
from bridge.request_scope import get_db

bp = Blueprint("registry", __name__)

MAX_RECORDS_PER_REQUEST = 1000


@bp.post("/v1/apps/<app_id>/subscriptions")
@require_token("api")
def post_subscriptions(app_id: str):
    items = read_items(MAX_RECORDS_PER_REQUEST)
    records, rejected = load_records(items)
    if not records:
        raise ApiError(400, "invalid_subscriptions", "No record in the request is valid; see details.rejected.",
                       {**UpsertCounts().as_dict(), "rejected": rejected})
    counts = upsert_records(get_db(), app_id, records)
    return {**counts.as_dict(), "rejected": rejected}, 200


@bp.get("/v1/apps/<app_id>/subscriptions/<subscription_id>")
@require_token("api")
def get_subscription(app_id: str, subscription_id: str):
    record = find_record(get_db(), app_id, subscription_id)
    if record is None:
        raise ApiError(404, "subscription_not_found", f"No subscription {subscription_id!r} in this app.")
    return describe(record)


def describe(record: Subscription) -> dict[str, object]:
    """A record as the API shows it (SubscriptionSchema): the fields it accepts, plus when the bridge
    recorded and last changed it. `subscribed` is true, false, or None when the state is unknown."""
    return {
        "subscription_id": record.subscription_id, "channel": record.channel, "type": record.type,
        "identifier": record.identifier, "external_id": record.external_id,
        "notification_types": record.notification_types, "invalid_identifier": record.invalid_identifier,
        "subscribed": record.subscribed, "device_model": record.device_model, "device_os": record.device_os,
        "language": record.language, "timezone": record.timezone, "country": record.country,
        "last_active": _iso(record.last_active_at), "created_at": _iso(record.source_created_at),
        "recorded_at": _iso(record.created_at), "updated_at": _iso(record.updated_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
