"""POST /v1/apps/<app_id>/subscriptions (bulk upsert) and GET .../subscriptions/<subscription_id>."""
from __future__ import annotations

from flask import Blueprint, g

from bridge.apps.auth import require_token
from bridge.errors import ApiError
from bridge.http import read_items
from bridge.registry.models import Subscription
from bridge.registry.schemas import MAX_RECORDS_PER_REQUEST, SUBSCRIPTION_SCHEMA, load_records
from bridge.registry.service import UpsertCounts, find_record, upsert_records

bp = Blueprint("registry", __name__)


@bp.post("/v1/apps/<app_id>/subscriptions")
@require_token("api")
def post_subscriptions(app_id: str):
    items = read_items(MAX_RECORDS_PER_REQUEST)
    records, rejected = load_records(items)
    if not records:
        raise ApiError(400, "invalid_subscriptions", "No record in the request is valid; see details.rejected.",
                       {**UpsertCounts().as_dict(), "rejected": rejected})
    counts = upsert_records(g.db, app_id, records)
    g.db.commit()
    return {**counts.as_dict(), "rejected": rejected}, 200


@bp.get("/v1/apps/<app_id>/subscriptions/<subscription_id>")
@require_token("api")
def get_subscription(app_id: str, subscription_id: str):
    record = find_record(g.db, app_id, subscription_id)
    if record is None:
        raise ApiError(404, "subscription_not_found", f"No subscription {subscription_id!r} in this app.")
    return describe(record)


def describe(record: Subscription) -> dict[str, object]:
    """A record as the API shows it (SubscriptionSchema, which names its fields): the fields it accepts,
    plus when the bridge recorded and last changed it. `subscribed` is true, false, or None when the
    state is unknown."""
    return SUBSCRIPTION_SCHEMA.dump(record)
