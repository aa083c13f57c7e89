"""POST /v1/apps/<app_id>/subscriptions (bulk upsert) and GET .../subscriptions/<subscription_id>."""
from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint

from bridge.apidoc import APP_ID, Body, documented, path_parameter
from bridge.apps.auth import require_token
from bridge.errors import ApiError
from bridge.http import read_items
from bridge.registry.schemas import (MAX_LENGTH, MAX_RECORDS_PER_REQUEST, SUBSCRIPTION_SCHEMA, RecordSchema,
                                     SubscriptionSchema, UpsertResultSchema, load_records)
from bridge.registry.service import UpsertCounts, find_record, upsert_records
from bridge.request_scope import get_db

bp = Blueprint("registry", __name__)

UPSERT_RESULT = UpsertResultSchema()


@bp.post("/v1/apps/<app_id>/subscriptions")
@documented("Add or update channel records", answer=UpsertResultSchema, path=(APP_ID,),
            body=Body(RecordSchema, max_bytes=lambda settings: settings.max_body_bytes,
                      max_items=MAX_RECORDS_PER_REQUEST))
@require_token("api")
def post_subscriptions(app_id: str):
    items = read_items(MAX_RECORDS_PER_REQUEST)
    records, rejected = load_records(items)
    if not records:
        raise ApiError(400, "invalid_subscriptions", "No record in the request is valid; see details.rejected.",
                       UPSERT_RESULT.dump({**asdict(UpsertCounts()), "rejected": rejected}))
    counts = upsert_records(get_db(), app_id, records)
    return UPSERT_RESULT.dump({**asdict(counts), "rejected": rejected}), 200


@bp.get("/v1/apps/<app_id>/subscriptions/<subscription_id>")
@documented("One channel record", answer=SubscriptionSchema,
            path=(APP_ID, path_parameter("subscription_id", MAX_LENGTH["subscription_id"])))
@require_token("api")
def get_subscription(app_id: str, subscription_id: str):
    record = find_record(get_db(), app_id, subscription_id)
    if record is None:
        raise ApiError(404, "subscription_not_found", f"No subscription {subscription_id!r} in this app.")
    return SUBSCRIPTION_SCHEMA.dump(record)
