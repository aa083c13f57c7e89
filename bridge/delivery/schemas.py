"""What `GET /v1/apps/<app_id>/deliveries/stats` answers (`bridge.delivery.stats.delivery_stats`)."""
from __future__ import annotations

from marshmallow import Schema, fields


class ReasonCountsSchema(Schema):
    total = fields.Integer(required=True)
    reasons = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)


class LastErrorSchema(Schema):
    message = fields.String(required=True)
    at = fields.DateTime(required=True, allow_none=True)


class HeldSchema(Schema):
    reason = fields.String(required=True, allow_none=True)
    until = fields.DateTime(required=True)


class MessageDetailsSchema(Schema):
    """What the message catalog did to the app's events (`bridge.catalog`), counted since migration 0011."""

    enriched = fields.Integer(required=True, metadata={
        "description": "Events that arrived with a blank name, title, contents or template_id and got it from the catalog."})
    unseen = fields.Integer(required=True, metadata={
        "description": "Events that arrived with only their message id, of a message the catalog never saw: sent without details."})
    catalog_messages = fields.Integer(required=True, metadata={
        "description": "Messages the app's catalog holds now (pruned after MESSAGE_CATALOG_RETENTION_DAYS unseen)."})


class DeliveredLastHourSchema(Schema):
    start = fields.DateTime(required=True, metadata={"description": "The start (UTC) of the first minute counted."})
    per_minute = fields.List(fields.Integer(), required=True, metadata={
        "description": "Events Amplitude accepted in each of the last 60 minutes, oldest first; the last is the "
                       "current minute, still counting."})


class DeliveryStatsSchema(Schema):
    """Counts per outbox state, what is retrying, the last error, whether delivery is held, and what the
    message catalog did."""

    pending = fields.Integer(required=True)
    retrying = fields.Integer(required=True)
    oldest_pending_at = fields.DateTime(required=True, allow_none=True)
    delivered = fields.Integer(required=True)
    delivered_last_hour = fields.Nested(DeliveredLastHourSchema, required=True)
    dead = fields.Nested(ReasonCountsSchema, required=True)
    skipped = fields.Nested(ReasonCountsSchema, required=True)
    last_error = fields.Nested(LastErrorSchema, required=True, allow_none=True)
    last_delivered_at = fields.DateTime(required=True, allow_none=True)
    held = fields.Nested(HeldSchema, required=True, allow_none=True)
    message_details = fields.Nested(MessageDetailsSchema, required=True)
