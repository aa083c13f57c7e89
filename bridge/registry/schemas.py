"""What a channel record is made of: types and channels, the rules for identifiers and text, and the
shape of the records the API accepts (times follow the bridge's one rule, `bridge.times`).

The parsers here are shared by the CSV importer (called per cell, so they are plain functions that
raise ValueError) and by the API schema (which wraps them in marshmallow fields).
"""
from __future__ import annotations

import re

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate

from bridge.fields import Timestamp, sentence
from bridge.text import has_unprintable, path_segment_problem
from bridge.validation import RejectedItemSchema, rejection
from bridge.mapping import non_placeholder_id
from bridge.registry.models import CHANNELS, Subscription

# At most this many records per `POST /v1/apps/<app_id>/subscriptions`.
MAX_RECORDS_PER_REQUEST = 1000

CHANNEL_OF_TYPE: dict[str, str] = {
    "iOSPush": "push", "AndroidPush": "push", "FireOSPush": "push", "WindowsPhonePush": "push",
    "ChromeExtensionPush": "push", "ChromePush": "push", "WindowsPush": "push", "SafariPush": "push",
    "FirefoxPush": "push", "macOSPush": "push", "AlexaPush": "push", "HuaweiPush": "push",
    "Email": "email", "SMS": "sms",
}

# The legacy export's numeric device_type.
LEGACY_DEVICE_TYPES: dict[int, str] = {
    0: "iOSPush", 1: "AndroidPush", 2: "FireOSPush", 3: "WindowsPhonePush", 4: "ChromeExtensionPush",
    5: "ChromePush", 6: "WindowsPush", 7: "SafariPush", 8: "FirefoxPush", 9: "macOSPush", 10: "AlexaPush",
    11: "Email", 13: "HuaweiPush", 14: "SMS",
}


def _alias_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# Spellings seen in the event stream ("iOS", "Android", "ChromePush", "Email") and in API calls.
_TYPE_ALIASES: dict[str, str] = {
    **{_alias_key(t).removesuffix("push"): t for t in CHANNEL_OF_TYPE},
    **{_alias_key(t): t for t in CHANNEL_OF_TYPE},
    "amazon": "FireOSPush", "kindle": "FireOSPush", "chromeweb": "ChromePush", "chromeapp": "ChromeExtensionPush",
    "safarilegacy": "SafariPush", "safarilegacypush": "SafariPush", "mac": "macOSPush",
}

MAX_LENGTH: dict[str, int] = {
    column.name: column.type.length
    for column in Subscription.__table__.columns
    if getattr(column.type, "length", None)
}
INT32 = (-(2**31), 2**31 - 1)

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_PHONE_SEPARATORS = re.compile(r"[\s().\-]")


def resolve_type(name: str | None) -> str | None:
    """The record type for a type or device-type name in any usual spelling ("iOS", "iospush",
    "ChromePush", "email"), or None when it is not a known one."""
    return _TYPE_ALIASES.get(_alias_key(name)) if name else None


def clean_text(value: str, limit: int) -> str | None:
    """`value` stripped; None when empty. ValueError when longer than `limit` or holding a NUL."""
    value = value.strip()
    if not value:
        return None
    if len(value) > limit:
        raise ValueError(f"longer than {limit} characters")
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


def clean_id(value: str, limit: int) -> str | None:
    """`clean_text` for an id (subscription id, External User ID, identifier): ValueError also when it
    holds a control character or a bidirectional mark (bridge.text)."""
    value = clean_text(value, limit)
    if value is not None and has_unprintable(value):
        raise ValueError("contains a control character or a bidirectional mark")
    return value


def clean_path_id(value: str, limit: int) -> str | None:
    """`clean_id` for an id that is a segment of a URL path (the subscription id): ValueError also when
    it holds a "/" or is "." or ".." (bridge.text)."""
    value = clean_id(value, limit)
    problem = None if value is None else path_segment_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def clean_identifier(channel: str, value: str) -> str | None:
    """The identifier as stored: an e-mail address lowercased, a phone number in E.164 (spaces, dashes,
    dots and brackets dropped), a push token as given. ValueError names what is wrong with it."""
    value = clean_id(value, MAX_LENGTH["identifier"])
    if value is None:
        return None
    if channel == "email":
        if not _EMAIL.fullmatch(value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value.lower()
    if channel == "sms":
        phone = _PHONE_SEPARATORS.sub("", value)
        if not _E164.fullmatch(phone):
            raise ValueError(f"{value!r} is not an E.164 phone number (+ and 8 to 15 digits)")
        return phone
    return value


def parse_int32(value: str) -> int:
    """A 32-bit integer from text in ASCII digits (int() would also take "١٠" as 10)."""
    try:
        if not value.isascii():
            raise ValueError
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an integer") from None
    if not INT32[0] <= number <= INT32[1]:
        raise ValueError(f"{number} is out of range")
    return number


class Text(fields.Field):
    """A string (or an integer, taken as its digits) no longer than the column it is stored in.
    Blank means absent, which a required Text refuses."""

    def __init__(self, column: str, *, required: bool = False, is_id: bool = False, in_path: bool = False, **kwargs):
        defaults = {} if required else {"load_default": None, "allow_none": True}
        super().__init__(required=required, **defaults, **kwargs)
        self.limit = MAX_LENGTH[column]
        self.clean = clean_path_id if in_path else clean_id if is_id else clean_text

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValidationError("Must be a string.")
        try:
            text = self.clean(value, self.limit)
        except ValueError as exc:
            raise ValidationError(sentence(exc)) from None
        if text is None and self.required:
            raise ValidationError("Must not be blank.")
        return text


class ExternalId(Text):
    """An External User ID; empty and placeholder values ("null", "anonymous", ...) mean none."""

    def _deserialize(self, value, attr, data, **kwargs):
        return non_placeholder_id(super()._deserialize(value, attr, data, **kwargs))


class RecordType(fields.Field):
    """A record type (iOSPush, AndroidPush, ..., Email, SMS), also in the event stream's spellings."""

    def _deserialize(self, value, attr, data, **kwargs):
        resolved = resolve_type(value) if isinstance(value, str) else None
        if resolved is None:
            raise ValidationError(f"Unknown type {value!r}; expected one of {', '.join(CHANNEL_OF_TYPE)}.")
        return resolved


class RecordSchema(Schema):
    """One record of `POST /v1/apps/<app_id>/subscriptions`. A field left out (or null) keeps what
    the registry holds; `subscribed`, when not given, follows notification_types and invalid_identifier
    (unsubscribed if the identifier is invalid or notification_types is 0 or negative, subscribed if it
    is positive). A new record given none of the three has an unknown subscription state (null)."""

    class Meta:
        unknown = EXCLUDE

    subscription_id = Text("subscription_id", required=True, in_path=True)
    type = RecordType(required=True)
    identifier = fields.String(load_default=None, allow_none=True)
    external_id = ExternalId("external_id", is_id=True)
    notification_types = fields.Integer(load_default=None, allow_none=True, strict=True, validate=validate.Range(*INT32))
    invalid_identifier = fields.Boolean(load_default=None, allow_none=True)
    subscribed = fields.Boolean(load_default=None, allow_none=True)
    device_model = Text("device_model")
    device_os = Text("device_os")
    language = Text("language")
    timezone = Text("timezone")
    country = Text("country")
    last_active_at = Timestamp(data_key="last_active")
    source_created_at = Timestamp(data_key="created_at")

    @post_load
    def _channel_and_identifier(self, data, **kwargs):
        data["channel"] = CHANNEL_OF_TYPE[data["type"]]
        if data["identifier"] is not None:
            try:
                data["identifier"] = clean_identifier(data["channel"], data["identifier"])
            except ValueError as exc:
                raise ValidationError(sentence(exc), "identifier") from None
        return data


RECORD_SCHEMA = RecordSchema()


class UpsertResultSchema(Schema):
    """The answer to `POST /v1/apps/<app_id>/subscriptions`, dumped from the fields of an
    `UpsertCounts` and the records refused: every record counted in exactly one bucket."""

    added = fields.Integer(required=True)
    updated = fields.Integer(required=True)
    unchanged = fields.Integer(required=True)
    rejected = fields.List(fields.Nested(RejectedItemSchema), required=True)


class SubscriptionSchema(Schema):
    """A channel record (`Subscription`) as the API shows it. Three fields have an API name other than
    their column's, declared here (`attribute`) and in RecordSchema (`data_key`) only: `last_active`
    (last_active_at), `created_at` (source_created_at: when the platform created the record) and
    `recorded_at` (created_at: when the bridge first recorded it)."""

    subscription_id = fields.String(required=True)
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    type = fields.String(required=True, validate=validate.OneOf(list(CHANNEL_OF_TYPE)))
    identifier = fields.String(required=True, allow_none=True)
    external_id = fields.String(required=True, allow_none=True)
    notification_types = fields.Integer(required=True, allow_none=True)
    invalid_identifier = fields.Boolean(required=True)
    subscribed = fields.Boolean(required=True, allow_none=True,
                                metadata={"description": "null: unknown, nothing imported or observed says it"})
    device_model = fields.String(required=True, allow_none=True)
    device_os = fields.String(required=True, allow_none=True)
    language = fields.String(required=True, allow_none=True)
    timezone = fields.String(required=True, allow_none=True)
    country = fields.String(required=True, allow_none=True)
    last_active = fields.DateTime(required=True, allow_none=True, attribute="last_active_at")
    created_at = fields.DateTime(required=True, allow_none=True, attribute="source_created_at")
    recorded_at = fields.DateTime(required=True, attribute="created_at")
    updated_at = fields.DateTime(required=True)


SUBSCRIPTION_SCHEMA = SubscriptionSchema()


def load_records(items: list[object]) -> tuple[list[dict], list[dict]]:
    """The valid records among `items`, and for each invalid one {"index", "errors": {field: message}}."""
    records, rejected = [], []
    for index, raw in enumerate(items):
        try:
            if not isinstance(raw, dict):
                raise ValidationError({"_item": ["Each record must be a JSON object."]})
            records.append(RECORD_SCHEMA.load(raw))
        except ValidationError as exc:
            rejected.append(rejection(index, exc))
    return records, rejected
