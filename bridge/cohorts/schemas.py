"""The shape of Amplitude's cohort webhook body, checked before anything is stored."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import orjson
from marshmallow import RAISE, EXCLUDE, Schema, ValidationError, fields, validate

from bridge import times
from bridge.fields import DisplayName, as_identifier, path_segment, printable, sentence
from bridge.mapping import non_placeholder_id
from bridge.text import has_unprintable

MAX_USER_ID_LENGTH = 256
MAX_UNUSABLE_EXAMPLES = 20  # unusable entries described per batch; the rest are only counted

# Why an entry of `users` has no usable user_id: the stable codes of the sync record and the report.
UNUSABLE_REASONS = {
    "not_an_object": "the entry is not a JSON object",
    "missing_user_id": "user_id is absent or null",
    "blank_user_id": "user_id is empty or only whitespace",
    "wrong_type_user_id": "user_id is neither a string nor an integer: a boolean, a decimal number, an object or "
                          "an array",
    "too_long_user_id": f"user_id is longer than {MAX_USER_ID_LENGTH} characters once stripped",
    "nul_in_user_id": "user_id contains a NUL character",
    "control_character_in_user_id": "user_id contains another control character or a bidirectional mark, which "
                                    "no External User ID of the channel registry holds",
    "placeholder_user_id": "user_id is a placeholder such as null, undefined, anonymous or 0, which the channel "
                           "registry never stores as an External User ID",
}


class EpochSeconds(fields.Field):
    """Whole epoch seconds inside the bridge's window (`bridge.times`: 2000-01-01 to one day after its
    clock), sent as a string of digits ("1763856000", as Amplitude does) or as a number (a fraction is
    dropped). A value in a finer unit is refused with a message naming it: stored as seconds it would lie
    millennia ahead, and no later batch could update its users."""

    def _deserialize(self, value, attr, data, **kwargs):
        seconds = _whole_number(value)
        if seconds is None:
            raise ValidationError("Must be epoch seconds, as a string of digits or a number.")
        try:
            return int(times.check_epoch_seconds(seconds))
        except ValueError as exc:
            raise ValidationError(sentence(exc)) from None


def _whole_number(value: object) -> int | None:
    """`value` as an integer: a JSON number (a fraction dropped), or a string of ASCII digits with optional
    surrounding whitespace. None for anything else."""
    if isinstance(value, str):
        digits = value.strip()
        if not (digits.isascii() and digits.isdigit()):
            return None
        digits = digits.lstrip("0") or "0"
        return int(digits) if len(digits) <= 30 else 10**30  # far out of range; int() refuses 4,300 digits
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value)


@dataclass(frozen=True)
class Unusable:
    """Why one entry of `users` has no usable user_id: a code of UNUSABLE_REASONS, and a message for people
    that says what was sent."""

    reason: str
    message: str


def usable_user_id(entry: object) -> str | Unusable:
    """The user id of one `users` entry, stripped as the channel registry stores External User IDs (an
    integer as its decimal string), or why it has none a channel record could match."""
    if not isinstance(entry, dict):
        return Unusable("not_an_object", f"Must be an object with a user_id, not {_described(entry)}.")
    value = entry.get("user_id")
    if value is None:
        if "user_id" in entry:
            return Unusable("missing_user_id", "user_id is null.")
        keys = ", ".join(key[:40] for key in list(entry)[:3]) + (", ..." if len(entry) > 3 else "")
        return Unusable("missing_user_id", f"No user_id; the entry has {keys or 'no keys'}.")
    text = as_identifier(value)
    if text is None:
        return Unusable("wrong_type_user_id", f"Must be a string or an integer, not {_described(value)}.")
    value = text.strip()
    if not value:
        return Unusable("blank_user_id", "user_id is empty or only whitespace.")
    if len(value) > MAX_USER_ID_LENGTH:
        return Unusable("too_long_user_id", f"user_id is {len(value):,} characters long; at most "
                                            f"{MAX_USER_ID_LENGTH} are allowed.")
    if "\x00" in value:
        return Unusable("nul_in_user_id", "user_id contains a NUL character.")
    if has_unprintable(value):
        return Unusable("control_character_in_user_id",
                        f"user_id {orjson.dumps(value).decode()[:80]} contains a control character or a bidirectional mark.")
    if non_placeholder_id(value) is None:
        return Unusable("placeholder_user_id",
                        f"user_id {orjson.dumps(value).decode()} is a placeholder, never an External User ID.")
    return value


def _described(value: object) -> str:
    """What a JSON value is, with its first characters: 'a boolean (true)', 'an array ([1,2])'."""
    kind = ("a boolean" if isinstance(value, bool) else "a decimal number" if isinstance(value, float)
            else "a string" if isinstance(value, str) else "an array" if isinstance(value, list)
            else "an object" if isinstance(value, dict) else "a number" if isinstance(value, int) else "null")
    text = orjson.dumps(value).decode()
    return f"{kind} ({text[:40]}{'...' if len(text) > 40 else ''})"


def reason_counts(counts: Counter[str]) -> dict[str, int]:
    """Counts per reason as the API shows them: the most frequent first, then by name."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


@dataclass
class BatchUsers:
    """The `users` array as loaded: the usable user ids in the order sent (repeats kept), and the entries
    set aside because they have no usable user_id, counted per reason with the first few described."""

    user_ids: list[str]
    unusable_reasons: dict[str, int] = field(default_factory=dict)  # reason → entries
    unusable_examples: list[dict[str, object]] = field(default_factory=list)  # {"index", "field", "reason", "message"}

    @property
    def unusable(self) -> int:
        """Entries set aside."""
        return sum(self.unusable_reasons.values())

    @property
    def sent(self) -> int:
        """Entries in the array, usable or not."""
        return len(self.user_ids) + self.unusable


class CohortUsers(fields.Field):
    """The `users` array, loaded as `BatchUsers`. Only the array itself is required: an entry without a
    usable user_id (see `usable_user_id`) is set aside and counted, so it cannot refuse the users beside
    it. Their `user_properties` are not kept: nothing here uses them.

    Checked in one plain loop rather than one nested schema per user: a batch holds up to 10,000
    users and the whole request must be acknowledged within Amplitude's 1–2 s.
    """

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, list):
            raise ValidationError("Must be an array of objects with a user_id.")
        user_ids: list[str] = []
        reasons: Counter[str] = Counter()
        examples: list[dict[str, object]] = []
        for index, entry in enumerate(value):
            user_id = usable_user_id(entry)
            if isinstance(user_id, str):
                user_ids.append(user_id)
                continue
            reasons[user_id.reason] += 1
            if len(examples) < MAX_UNUSABLE_EXAMPLES:
                path = f"users.{index}" if user_id.reason == "not_an_object" else f"users.{index}.user_id"
                examples.append({"index": index, "field": path, "reason": user_id.reason,
                                 "message": user_id.message})
        return BatchUsers(user_ids, reason_counts(reasons), examples)


class CohortWebhookSchema(Schema):
    """Amplitude's default cohort webhook body. Unknown keys are ignored."""

    class Meta:
        unknown = EXCLUDE

    cohort_id = fields.String(required=True, validate=[validate.Length(min=1, max=128), printable, path_segment])
    cohort_name = DisplayName(500, load_default="")
    in_cohort = fields.Boolean(required=True, truthy={True}, falsy={False})
    computed_time = EpochSeconds(required=True)
    message_id = fields.String(required=True, validate=[validate.Length(min=1, max=256), printable])
    users = CohortUsers(required=True)


WEBHOOK_SCHEMA = CohortWebhookSchema()


# -- what the cohort endpoints answer: each view dumps its answer with one of these, and the OpenAPI
# document describes them ------------------------------------------------------------------------------


_REASON_CODES = ", ".join(f"`{code}` ({meaning})" for code, meaning in UNUSABLE_REASONS.items())


def _unusable_reasons(whose: str) -> fields.Dict:
    return fields.Dict(keys=fields.String(validate=validate.OneOf(list(UNUSABLE_REASONS))), values=fields.Integer(),
                       required=True, metadata={"description": f"{whose}, per reason, the most frequent first: "
                                                               f"{_REASON_CODES}."})


class UnusableExampleSchema(Schema):
    """One entry of `users` that had no usable user_id, as Amplitude sent it."""

    index = fields.Integer(required=True, metadata={"description": "Its position in the batch's `users` array."})
    field = fields.String(required=True, metadata={"description": "Where in the body, e.g. `users.3.user_id`."})
    reason = fields.String(required=True, validate=validate.OneOf(list(UNUSABLE_REASONS)))
    message = fields.String(required=True, metadata={"description": "What was wrong, with what was sent; `(removed by an erasure on request)` once the person it quoted was erased."})


class WebhookAckSchema(Schema):
    """The webhook's answer: the batch as stored, or as found when Amplitude re-sent a message_id. Dumped
    from {"batch": the `bridge.cohorts.webhook.StoredBatch`, "body": the body as `CohortWebhookSchema` loads it}."""

    status = fields.Function(lambda ack: "duplicate" if ack["batch"].duplicate else "accepted", required=True,
                             validate=validate.OneOf(["accepted", "duplicate"]), metadata={"type": "string"})
    batch_id = fields.String(required=True, attribute="batch.public_id", metadata={
        "description": "The batch's id in this app: 16 random hex characters (not a count of anything)."})
    cohort_id = fields.String(required=True, attribute="body.cohort_id")
    message_id = fields.String(required=True, attribute="body.message_id")
    users = fields.Integer(required=True, attribute="body.users.sent",
                           metadata={"description": "Entries of `users` in this body."})
    unusable_users = fields.Integer(required=True, attribute="body.users.unusable", metadata={
        "description": "Of those, entries without a usable user_id: set aside (see the sync record), not applied."})
    state = fields.String(required=True, attribute="batch.state")
    retries = fields.Integer(required=True, attribute="batch.retries")


class CohortSummarySchema(Schema):
    """One cohort of the app's list."""

    cohort_id = fields.String(required=True)
    cohort_name = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    users_in_cohort = fields.Integer(required=True)


class SyncSchema(Schema):
    """One webhook batch of a cohort and what it did to the membership. Once it is processed, every entry
    of its `users` is counted once: user_count = entered + left + already_known + stale + duplicate_users
    + unusable_users."""

    batch_id = fields.String(required=True, metadata={"description": "As in the webhook's answer."})
    message_id = fields.String(required=True)
    in_cohort = fields.Boolean(required=True)
    computed_time = fields.Integer(required=True)
    user_count = fields.Integer(required=True, metadata={"description": "Entries of `users` Amplitude sent."})
    state = fields.String(required=True)
    entered = fields.Integer(required=True)
    left = fields.Integer(required=True)
    already_known = fields.Integer(required=True)
    stale = fields.Integer(required=True)
    duplicate_users = fields.Integer(required=True)
    unusable_users = fields.Integer(required=True, metadata={
        "description": "Entries without a usable user_id, set aside when the batch arrived and never applied."})
    unusable_reasons = _unusable_reasons("The unusable entries")
    unusable_examples = fields.List(fields.Nested(UnusableExampleSchema), required=True, metadata={
        "description": f"The first {MAX_UNUSABLE_EXAMPLES} unusable entries, in the order sent."})
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


class PlatformSyncRequestSchema(Schema):
    """`PUT /v1/apps/<app_id>/cohorts/<cohort_id>/platform-sync`: turn the cohort's tags on or off."""

    class Meta:
        unknown = RAISE

    enabled = fields.Boolean(required=True, truthy={True}, falsy={False})
    tag_key = fields.String(load_default=None, allow_none=True, metadata={
        "description": "1 to 128 of letters, digits, '_', '.', ':', '-'; default `amplitude_cohort_<cohort_id>`."})


class PlatformSyncSchema(Schema):
    """What the platform did with a cohort's tags (`bridge.cohorts.tagging.SyncStatus`)."""

    enabled = fields.Boolean(required=True)
    tag_key = fields.String(required=True)
    tagged = fields.Integer(required=True, metadata={"description": "users the platform has the tag for"})
    untagged = fields.Integer(required=True, metadata={"description": "users whose tag was removed, having left"})
    pending = fields.Integer(required=True, metadata={"description": "tags waiting to be sent, or retried"})
    not_on_platform = fields.Integer(required=True, metadata={
        "description": "users the platform does not know (404); tried again only when their membership changes"})
    failed = fields.Method("_failed", required=True, metadata={
        "description": "{total, reasons}: tags the platform refused (conflict, rejected) or that kept failing "
                       "(retry_window_exceeded); `bridge cohorts platform-replay` sends them again"})
    last_error = fields.String(required=True, allow_none=True)
    last_synced_at = fields.DateTime(required=True, allow_none=True)

    def _failed(self, status) -> dict[str, object]:
        return {"total": sum(status.failed.values()), "reasons": dict(status.failed)}


class PlatformPlanSchema(Schema):
    """`GET .../platform-sync/plan`: what turning the sync on, or its next sends, would change; nothing is sent."""

    enabled = fields.Boolean(required=True)
    tag_key = fields.String(required=True)
    adds = fields.Integer(required=True, metadata={"description": "users who would get the tag"})
    removes = fields.Integer(required=True, metadata={"description": "users whose tag would be removed"})
    sample = fields.Nested(Schema.from_dict({"adds": fields.List(fields.String(), required=True),
                                             "removes": fields.List(fields.String(), required=True)},
                                            name="PlanSample"), required=True,
                           metadata={"description": "up to 10 user ids of each, in id order"})


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
    unusable_users = fields.Integer(required=True, metadata={
        "description": "Entries without a usable user_id in all of this cohort's batches. They were never applied, "
                       "so they are in none of the other numbers; `context` says so when there are any."})
    unusable_reasons = _unusable_reasons("The same entries")
    platform_sync = fields.Nested(PlatformSyncSchema, required=True, allow_none=True, metadata={
        "description": "null: the cohort was never applied to the platform"})
    recent_syncs = fields.List(fields.Nested(SyncSchema), required=True)


def page_schema(name: str, item: fields.Field) -> type[Schema]:
    """A page of a listing: its `items` (each shown as `item`, which leaves out the columns it does not
    name, such as the keys a page is cut at) and the `next` cursor (null on the last page)."""
    return Schema.from_dict({"items": fields.List(item, required=True),
                             "next": fields.String(required=True, allow_none=True)}, name=name)


CohortPageSchema = page_schema("CohortPage", fields.Nested(CohortSummarySchema))
SyncPageSchema = page_schema("SyncPage", fields.Nested(SyncSchema))
UnmatchedPageSchema = page_schema("UnmatchedPage", fields.Pluck(Schema.from_dict({"user_id": fields.String()}), "user_id"))
AudiencePageSchema = page_schema("AudiencePage", fields.Nested(AudienceRecordSchema))
