"""The shape of one event-stream item, as the messaging platform posts it."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from bridge.mapping import KINDS_REQUIRING_MESSAGE_ID, localized

_ID = validate.Length(min=1, max=128)


class LocalizedText(fields.Field):
    """A string, or an object of language code → string (the `en` text is taken, else the first)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, dict):
            if not value:
                return None
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise ValidationError("Must be a string or an object of language code to string.")
            return localized(value)
        if isinstance(value, str):
            return value
        raise ValidationError("Must be a string or an object of language code to string.")


class EventSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True, validate=_ID)
    kind = fields.String(required=True, validate=validate.Length(min=1, max=64))
    timestamp = fields.Float(load_default=None, allow_nan=False, validate=validate.Range(min=0))
    datetime = fields.AwareDateTime(load_default=None, format="iso", default_timezone=None)
    subscription_id = fields.String(required=True, validate=_ID)
    subscription_device_type = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    external_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=256))

    @validates_schema(skip_on_field_errors=False)
    def _has_time(self, data, **kwargs):
        if data.get("timestamp") is None and data.get("datetime") is None:
            raise ValidationError("One of event.timestamp (epoch seconds) or event.datetime (ISO 8601) is required.", "timestamp")


class MessageSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.String(load_default=None, allow_none=True, validate=_ID)
    name = fields.String(required=True, validate=validate.Length(min=1, max=2048))
    title = LocalizedText(load_default=None, allow_none=True)
    contents = LocalizedText(load_default=None, allow_none=True)
    template_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128))


class ItemSchema(Schema):
    """One event-stream object: `event`, `message`, optional `data` (in-app click target) and `user`."""

    class Meta:
        unknown = EXCLUDE

    event = fields.Nested(EventSchema, required=True)
    message = fields.Nested(MessageSchema, required=True)
    data = fields.Dict(load_default=None, allow_none=True)
    user = fields.Dict(load_default=None, allow_none=True)

    @validates_schema
    def _message_id_when_needed(self, data, **kwargs):
        kind = data["event"]["kind"]
        if kind in KINDS_REQUIRING_MESSAGE_ID and not data["message"].get("id"):
            raise ValidationError({"id": ["Required for this event kind (it becomes delivery_id)."]}, "message")


ITEM_SCHEMA = ItemSchema()


def flatten_errors(errors: dict, prefix: str = "") -> dict[str, str]:
    """marshmallow's nested error dict → {"event.kind": "message", ...}, one message per field."""
    flat: dict[str, str] = {}
    for key, value in errors.items():
        path = f"{prefix}.{key}" if prefix and key != "_schema" else (prefix or str(key))
        if isinstance(value, dict):
            flat.update(flatten_errors(value, path))
        elif isinstance(value, list):
            flat[path] = " ".join(str(v) for v in value)
        else:
            flat[path] = str(value)
    return flat
