"""The shape of Amplitude's cohort webhook body, checked before anything is stored."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

MAX_USER_ID_LENGTH = 256
MAX_EPOCH_SECONDS = 2**31 - 1  # the columns are 32-bit integers


def _without_nul(value: str) -> None:
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters.")


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

    cohort_id = fields.String(required=True, validate=[validate.Length(min=1, max=128), _without_nul])
    cohort_name = fields.String(load_default="", validate=[validate.Length(max=500), _without_nul])
    in_cohort = fields.Boolean(required=True, truthy={True}, falsy={False})
    computed_time = EpochSeconds(required=True)
    message_id = fields.String(required=True, validate=[validate.Length(min=1, max=256), _without_nul])
    users = CohortUsers(required=True)


WEBHOOK_SCHEMA = CohortWebhookSchema()
