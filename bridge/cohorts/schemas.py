"""The shape of Amplitude's cohort webhook body, checked before anything is stored."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from bridge.intake.schemas import without_nul

MAX_USER_ID_LENGTH = 256
MAX_EPOCH_SECONDS = 2**31 - 1  # the columns are 32-bit integers


class EpochSeconds(fields.Field):
    """Whole epoch seconds, sent as a string ("1763856000", as Amplitude does) or as a number."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_EPOCH_SECONDS:
            return int(value)
        raise ValidationError("Must be epoch seconds (up to 2038), as a string or a number.")


class CohortUsers(fields.Field):
    """The `users` array: objects with a non-empty string `user_id`, loaded as the list of those ids in
    the order sent (repeats kept). Their `user_properties` are not kept: nothing here uses them.

    Checked in one plain loop rather than one nested schema per user: a batch holds up to 10,000
    users and the whole request must be acknowledged within Amplitude's 1–2 s.
    """

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, list):
            raise ValidationError("Must be an array of objects with a user_id.")
        user_ids: list[str] = []
        errors: dict[int, dict[str, list[str]]] = {}
        for index, user in enumerate(value):
            user_id = user.get("user_id") if isinstance(user, dict) else None
            if not isinstance(user, dict):
                errors[index] = {"_schema": ["Must be an object with a user_id."]}
            elif not isinstance(user_id, str) or not user_id or "\x00" in user_id:
                errors[index] = {"user_id": ["Must be a non-empty string without NUL characters."]}
            elif len(user_id) > MAX_USER_ID_LENGTH:
                errors[index] = {"user_id": [f"Longer than {MAX_USER_ID_LENGTH} characters."]}
            else:
                user_ids.append(user_id)
            if len(errors) >= 20:
                break
        if errors:
            raise ValidationError(errors)
        return user_ids


class CohortWebhookSchema(Schema):
    """Amplitude's default cohort webhook body. Unknown keys are ignored."""

    class Meta:
        unknown = EXCLUDE

    cohort_id = fields.String(required=True, validate=[validate.Length(min=1, max=128), without_nul])
    cohort_name = fields.String(load_default="", validate=[validate.Length(max=500), without_nul])
    in_cohort = fields.Boolean(required=True, truthy={True}, falsy={False})
    computed_time = EpochSeconds(required=True)
    message_id = fields.String(required=True, validate=[validate.Length(min=1, max=256), without_nul])
    users = CohortUsers(required=True)


WEBHOOK_SCHEMA = CohortWebhookSchema()


# -- what the cohort endpoints answer (documented in the OpenAPI document) ---------------------------


class WebhookAckSchema(Schema):
    """The webhook's answer: the batch as stored, or as found when Amplitude re-sent a message_id."""

    status = fields.String(required=True, validate=validate.OneOf(["accepted", "duplicate"]))
    batch_id = fields.Integer(required=True)
    cohort_id = fields.String(required=True)
    message_id = fields.String(required=True)
    users = fields.Integer(required=True)
    state = fields.String(required=True)
    retries = fields.Integer(required=True)


class CohortSummarySchema(Schema):
    """One cohort of the app's list."""

    cohort_id = fields.String(required=True)
    cohort_name = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    users_in_cohort = fields.Integer(required=True)


class SyncSchema(Schema):
    """One webhook batch of a cohort and what it did to the membership."""

    batch_id = fields.Integer(required=True)
    message_id = fields.String(required=True)
    in_cohort = fields.Boolean(required=True)
    computed_time = fields.Integer(required=True)
    user_count = fields.Integer(required=True)
    state = fields.String(required=True)
    entered = fields.Integer(required=True)
    left = fields.Integer(required=True)
    already_known = fields.Integer(required=True)
    stale = fields.Integer(required=True)
    duplicate_users = fields.Integer(required=True)
    retries = fields.Integer(required=True)
    error = fields.String(required=True, allow_none=True)
    received_at = fields.DateTime(required=True)
    processed_at = fields.DateTime(required=True, allow_none=True)


class AudienceRecordSchema(Schema):
    """One channel record of the resolved audience."""

    subscription_id = fields.String(required=True)
    external_id = fields.String(required=True)
    channel = fields.String(required=True)
    type = fields.String(required=True)
    identifier = fields.String(required=True, allow_none=True)
    subscribed = fields.Boolean(required=True, allow_none=True, metadata={"description": "null: unknown"})


def _counts(name: str, *keys: str) -> type[Schema]:
    """A schema of whole-number counts named `keys`."""
    return Schema.from_dict({key: fields.Integer(required=True) for key in keys}, name=name)


class ExplanationSchema(Schema):
    """One step from Amplitude's user count to the segment size."""

    cause = fields.String(required=True)
    delta = fields.Integer(required=True)
    text = fields.String(required=True)


class DeviceCountsSchema(Schema):
    """The cohort users' channel records, in all and per channel; total = subscribed + unsubscribed + unknown."""

    total = fields.Integer(required=True)
    subscribed = fields.Integer(required=True)
    unsubscribed = fields.Integer(required=True)
    unknown = fields.Integer(required=True, metadata={"description": "records whose subscription state is unknown"})
    extra_from_multiple_devices = fields.Integer(required=True)
    by_channel = fields.Dict(keys=fields.String(), required=True, values=fields.Nested(
        _counts("ChannelCounts", "total", "subscribed", "unsubscribed", "unknown")))


class CohortReportSchema(Schema):
    """`GET /v1/apps/<app_id>/cohorts/<cohort_id>`: users, devices, and why the two counts differ."""

    cohort_id = fields.String(required=True)
    cohort_name = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    users = fields.Nested(_counts("UserCounts", "in_cohort", "matched", "unmatched", "with_multiple_devices",
                                  "with_no_subscribed_record", "with_only_unsubscribed_records",
                                  "with_unknown_state_and_no_subscribed_record"), required=True)
    devices = fields.Nested(DeviceCountsSchema, required=True)
    segment_size = fields.Integer(required=True, metadata={"description": "the subscribed records"})
    segment_size_range = fields.Nested(_counts("SegmentSizeRange", "min", "max"), required=True, metadata={
        "description": "min: the subscribed records; max: if every record of unknown state were subscribed"})
    explanations = fields.List(fields.Nested(ExplanationSchema), required=True)
    arithmetic = fields.String(required=True)
    summary = fields.String(required=True)
    context = fields.List(fields.String(), required=True)
    recent_syncs = fields.List(fields.Nested(SyncSchema), required=True)


def page_schema(name: str, item: fields.Field) -> type[Schema]:
    """A page of a listing: its `items` and the `next` cursor (null on the last page)."""
    return Schema.from_dict({"items": fields.List(item, required=True),
                             "next": fields.String(required=True, allow_none=True)}, name=name)


CohortPageSchema = page_schema("CohortPage", fields.Nested(CohortSummarySchema))
SyncPageSchema = page_schema("SyncPage", fields.Nested(SyncSchema))
UnmatchedPageSchema = page_schema("UnmatchedPage", fields.String())
AudiencePageSchema = page_schema("AudiencePage", fields.Nested(AudienceRecordSchema))
