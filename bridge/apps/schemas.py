"""What `GET /v1/apps/<app_id>` answers: an app's settings (`bridge.apps.service.describe`) and its
vocabulary, kind by kind (`bridge.mapping.Vocabulary.rows`)."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from bridge.mapping import KINDS, NAMINGS


class KindSchema(Schema):
    """One event kind of the stream, as this app treats it."""

    kind = fields.String(required=True, validate=validate.OneOf(KINDS))
    event_type = fields.String(required=True, allow_none=True,
                               metadata={"description": "Amplitude's event_type; null when nothing names the kind."})
    named_by = fields.String(required=True, allow_none=True, validate=validate.OneOf(["profile", "override"]),
                             metadata={"description": "Where the name comes from: the naming profile or the app's own."})
    sent = fields.Boolean(required=True, metadata={"description": "False: the kind's events are counted as ignored."})


class PlatformConnectionSchema(Schema):
    """The app's messaging platform, where cohorts are applied as tags; its API key masked."""

    name = fields.String(required=True)
    app_id = fields.String(required=True, metadata={"description": "The app's id on the platform."})
    api_key = fields.String(required=True, metadata={"description": "Masked: its first 4 characters."})
    rate_per_second = fields.Float(required=True, allow_none=True, metadata={
        "description": "Requests per second to the platform; null: the platform's default."})
    held = fields.Dict(required=True, allow_none=True, metadata={
        "description": "{reason, until}: tags wait (kept) until then, after a 429 or a refused key; null: not held."})
    last_error = fields.String(required=True, allow_none=True)


class AppSchema(Schema):
    """An app: never its tokens; its Amplitude key masked."""

    app_id = fields.String(required=True)
    name = fields.String(required=True)
    region = fields.String(required=True)
    amplitude_api_key = fields.String(required=True, metadata={"description": "Masked: its first 4 characters."})
    naming = fields.String(required=True, validate=validate.OneOf(NAMINGS))
    event_names = fields.Dict(keys=fields.String(), values=fields.String(), required=True,
                              metadata={"description": "The app's own event_type by kind, over the profile's."})
    enabled_kinds = fields.List(fields.String(), required=True, allow_none=True,
                                metadata={"description": "The kinds the app sends; null: every kind with a name."})
    event_types = fields.Dict(keys=fields.String(), values=fields.String(), required=True,
                              metadata={"description": "The event_type of every kind the app sends."})
    delivery_held_reason = fields.String(required=True, allow_none=True)
    platform = fields.Nested(PlatformConnectionSchema, required=True, allow_none=True, metadata={
        "description": "null: not connected (bridge apps update --platform)."})
    created_at = fields.String(required=True, metadata={"description": "ISO 8601, UTC."})
    kinds = fields.List(fields.Nested(KindSchema), required=True,
                        metadata={"description": "Every kind of the stream, in the platform's order."})
