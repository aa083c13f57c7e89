"""The shape of one event-stream item, as the messaging platform posts it."""
from __future__ import annotations

import orjson
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from bridge.mapping import KINDS_REQUIRING_MESSAGE_ID, MAPPED_KINDS, localized

_ID = validate.Length(min=1, max=128)
# event.timestamp is epoch seconds, or milliseconds when that large (mapping.epoch_millis); in either
# unit it must fall before the year 10000, like event.datetime.
MAX_EPOCH_MILLIS = 253_402_300_799_999
MAX_FREE_FORM_BYTES = 16 * 1024  # `data` and `user`: kept as sent, so bounded as a whole


def without_nul(value: str) -> None:
    """Refuse a string holding a NUL character: PostgreSQL cannot store one in a text column."""
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters.")


class FreeFormObject(fields.Dict):
    """A JSON object kept as sent, refused when it is larger than `MAX_FREE_FORM_BYTES` written as JSON:
    that one bound covers its strings, keys and entries alike."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if len(orjson.dumps(value)) > MAX_FREE_FORM_BYTES:
            raise ValidationError(f"Larger than {MAX_FREE_FORM_BYTES:,} bytes as JSON.")
        return value


class LocalizedText(fields.Field):
    """A string, or an object of language code → string (the `en` text is taken, else the first).
    Its length is not limited here: the mapping cuts it to Amplitude's 1,024 characters."""

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

    id = fields.String(required=True, validate=[_ID, without_nul])
    kind = fields.String(required=True, validate=[validate.Length(min=1, max=64), without_nul], metadata={
        "description": "One of the mapped kinds listed; any other kind is counted as ignored.",
        "anyOf": [{"enum": sorted(MAPPED_KINDS)}, {"not": {"enum": sorted(MAPPED_KINDS)}}]})
    timestamp = fields.Float(load_default=None, allow_nan=False, validate=validate.Range(min=0, max=MAX_EPOCH_MILLIS))
    datetime = fields.AwareDateTime(load_default=None, format="iso", default_timezone=None)
    subscription_id = fields.String(required=True, validate=[_ID, without_nul])
    subscription_device_type = fields.String(load_default=None, allow_none=True,
                                             validate=[validate.Length(max=64), without_nul])
    external_id = fields.String(load_default=None, allow_none=True, validate=[validate.Length(max=256), without_nul])

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
    data = FreeFormObject(load_default=None, allow_none=True)
    user = FreeFormObject(load_default=None, allow_none=True)

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


class RejectedItemSchema(Schema):
    """An item a request could not take: its position in the array and a message per field."""

    index = fields.Integer(required=True)
    errors = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


class IntakeResultSchema(Schema):
    """The answer to `POST /v1/apps/<app_id>/events`: every item counted in exactly one bucket."""

    accepted = fields.Integer(required=True)
    skipped = fields.Integer(required=True)
    duplicates = fields.Integer(required=True)
    ignored = fields.Integer(required=True)
    rejected = fields.List(fields.Nested(RejectedItemSchema), required=True)
