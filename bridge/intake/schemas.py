"""The shape of one event-stream item, as the messaging platform posts it."""
from __future__ import annotations

import orjson
from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from bridge import times
from bridge.fields import DateTimeText, EpochTime, Identifier, OptionalText, path_segment, printable, without_nul
from bridge.text import path_segment_problem
from bridge.text import has_unprintable
from bridge.mapping import KINDS_REQUIRING_MESSAGE_ID, KNOWN_KINDS, localized
from bridge.validation import RejectedItemSchema

_ID = validate.Length(min=1, max=128)
MAX_FREE_FORM_BYTES = 16 * 1024  # `data` and `user`: kept as sent, so bounded as a whole


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
    Blank text (empty or whitespace only) is absent (None). Its length is not limited here: the
    mapping cuts it to Amplitude's 1,024 characters."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, dict):
            if not value:
                return None
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise ValidationError("Must be a string or an object of language code to string.")
            return _unless_blank(localized(value))
        if isinstance(value, str):
            return _unless_blank(value)
        raise ValidationError("Must be a string or an object of language code to string.")


def _unless_blank(text: str | None) -> str | None:
    return text if text and not text.isspace() else None


class EventSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = Identifier(required=True, validate=[_ID, printable])
    kind = fields.String(required=True, validate=[validate.Length(min=1, max=64), without_nul], metadata={
        "description": "One of the stream's kinds listed (older spellings included); a kind the app does not "
                       "send, or any other, is counted as ignored.",
        "anyOf": [{"enum": sorted(KNOWN_KINDS)}, {"not": {"enum": sorted(KNOWN_KINDS)}}]})
    timestamp = EpochTime(load_default=None, allow_none=True, metadata={
        "description": "Epoch seconds (or milliseconds); wins over `datetime` when both are given."})
    datetime = DateTimeText(load_default=None, allow_none=True, metadata={
        "description": "ISO 8601; no zone means UTC. Used when `timestamp` is absent."})
    subscription_id = Identifier(required=True, validate=[_ID, printable, path_segment])
    subscription_device_type = fields.String(load_default=None, allow_none=True,
                                             validate=[validate.Length(max=64), without_nul])
    external_id = Identifier(load_default=None, allow_none=True, validate=[validate.Length(max=256), printable])
    data = FreeFormObject(load_default=None, allow_none=True, metadata={
        "description": "The stream's channel-specific fields (`failure_reason`, `page_id`, `page_name`, "
                       "`target_id`, `target_name`), kept as sent."})

    @pre_load
    def _blank_time_is_absent(self, data, **kwargs):
        """A template prints a variable the event lacks as "": the other time, if given, is the event's."""
        if isinstance(data, dict) and (data.get("timestamp") == "" or data.get("datetime") == ""):
            return {**data, **{name: None for name in ("timestamp", "datetime") if data.get(name) == ""}}
        return data

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _has_time(self, data, original, **kwargs):
        if original.get("timestamp") in (None, "") and original.get("datetime") in (None, ""):
            raise ValidationError("One of event.timestamp (epoch seconds) or event.datetime (ISO 8601) is required.", "timestamp")


class MessageSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = Identifier(load_default=None, allow_none=True, validate=[validate.Length(max=128), printable])
    name = OptionalText(metadata={"description": "Blank or absent once OneSignal no longer keeps the message "
                                                 "(30 days); longer than 1,024 characters is cut."})
    title = LocalizedText(load_default=None, allow_none=True)
    contents = LocalizedText(load_default=None, allow_none=True)
    template_id = Identifier(load_default=None, allow_none=True, validate=[validate.Length(max=128), printable])

    @pre_load
    def _blank_id_is_absent(self, data, **kwargs):
        if isinstance(data, dict) and data.get("id") == "":
            return {**data, "id": None}
        return data


class ItemSchema(Schema):
    """One event-stream object: `event`, `message`, optional `data` (in-app click target) and `user`."""

    class Meta:
        unknown = EXCLUDE

    event = fields.Nested(EventSchema, required=True)
    message = fields.Nested(MessageSchema, required=True, metadata={
        "description": "May be absent, or hold only `id`, for events of messages OneSignal no longer keeps."})
    data = FreeFormObject(load_default=None, allow_none=True, metadata={
        "description": "Channel-specific fields as in `event.data`, for stream templates that put them here; "
                       "`event.data` wins."})
    user = FreeFormObject(load_default=None, allow_none=True, metadata={
        "description": "The user's fields; `language` becomes the `language` property under onesignal-current."})

    @pre_load
    def _message_may_be_absent(self, data, **kwargs):
        if isinstance(data, dict) and data.get("message") is None:
            return {**data, "message": {}}
        return data

    @validates_schema
    def _message_id_when_needed(self, data, **kwargs):
        kind = data["event"]["kind"]
        if kind in KINDS_REQUIRING_MESSAGE_ID and not data["message"].get("id"):
            raise ValidationError({"id": ["Required for this event kind (it becomes delivery_id)."]}, "message")


ITEM_SCHEMA = ItemSchema()
_LOCALIZED = MessageSchema._declared_fields["title"]


def load_item(raw: object) -> dict:
    """An event-stream item validated and loaded exactly as `ITEM_SCHEMA.load` would (same result, same
    ValidationError), several times faster for the items that are plainly valid (`fast_load`)."""
    item = fast_load(raw)
    return item if item is not None else ITEM_SCHEMA.load(raw)


def fast_load(raw: object) -> dict | None:
    """`ITEM_SCHEMA.load(raw)` for an item whose every field is plainly valid; None for anything
    else, which then goes through the schema: the schema stays the only source of error messages and
    of the OpenAPI document. tests/test_intake_schemas.py holds the two equal over generated items."""
    if type(raw) is not dict:
        return None
    event, message = raw.get("event"), raw.get("message")
    if type(event) is not dict or type(message) is not dict:
        return None
    kind = event.get("kind")
    if not (_text(event.get("id"), 1, 128) and _text(kind, 1, 64) and _text(event.get("subscription_id"), 1, 128) and path_segment_problem(event["subscription_id"]) is None
            and _optional_text(event.get("subscription_device_type"), 64) and _optional_text(event.get("external_id"), 256)):
        return None
    timestamp = event.get("timestamp")
    if timestamp is not None:
        if type(timestamp) not in (int, float) or not times.plausible_epoch(timestamp):
            return None
        timestamp = float(timestamp)
    moment = event.get("datetime")
    if moment is not None:
        if type(moment) is not str:
            return None
        try:
            moment = times.check_moment(times.parse_datetime(moment))
        except ValueError:
            return None
    elif timestamp is None:
        return None
    message_id, name = message.get("id"), message.get("name")
    if not (_optional_text(message_id, 128) and (name is None or type(name) is str)
            and _optional_text(message.get("template_id"), 128)):
        return None
    if not message_id:
        if message_id is not None or kind in KINDS_REQUIRING_MESSAGE_ID:
            return None
    title, contents = _localized(message.get("title")), _localized(message.get("contents"))
    data, user, details = _free_form(raw.get("data")), _free_form(raw.get("user")), _free_form(event.get("data"))
    if title is _INVALID or contents is _INVALID or data is _INVALID or user is _INVALID or details is _INVALID:
        return None
    return {
        "event": {"id": event["id"], "kind": kind, "timestamp": timestamp, "datetime": moment,
                  "subscription_id": event["subscription_id"], "subscription_device_type": event.get("subscription_device_type"),
                  "external_id": event.get("external_id"), "data": details},
        "message": {"id": message_id, "name": _unless_blank(name), "title": title, "contents": contents,
                    "template_id": message.get("template_id")},
        "data": data,
        "user": user,
    }


_INVALID = object()


def _text(value: object, shortest: int, longest: int) -> bool:
    return type(value) is str and shortest <= len(value) <= longest and not has_unprintable(value)


def _optional_text(value: object, longest: int) -> bool:
    return value is None or _text(value, 0, longest)


def _localized(value: object) -> object:
    if value is None:
        return None
    if type(value) is str:
        return _unless_blank(value)
    try:
        return _LOCALIZED.deserialize(value)
    except ValidationError:
        return _INVALID


def _free_form(value: object) -> object:
    if value is None:
        return None
    if type(value) is not dict or len(orjson.dumps(value)) > MAX_FREE_FORM_BYTES:
        return _INVALID
    return dict(value)


class IntakeResultSchema(Schema):
    """The answer to `POST /v1/apps/<app_id>/events`, dumped from `bridge.intake.service.IntakeResult`:
    every item counted in exactly one bucket."""

    accepted = fields.Integer(required=True)
    skipped = fields.Integer(required=True)
    duplicates = fields.Integer(required=True)
    ignored = fields.Integer(required=True)
    rejected = fields.List(fields.Nested(RejectedItemSchema), required=True)
