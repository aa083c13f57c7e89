"""marshmallow fields every feature's schemas share: identifiers, optional text, times.

The rules they apply are the bridge's own, written once: an id sent as a JSON integer is its decimal
string; blank text is absent; times follow `bridge.times`.
"""
from __future__ import annotations

from marshmallow import ValidationError, fields

from bridge import times
from bridge.text import has_unprintable, path_segment_problem


def without_nul(value: str) -> None:
    """Refuse a string holding a NUL character: PostgreSQL cannot store one in a text column."""
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters.")


def printable(value: str) -> None:
    """Refuse an id holding a control character (C0, C1, DEL; NUL among them, which PostgreSQL cannot
    store) or a bidirectional mark: bridge.text."""
    if has_unprintable(value):
        raise ValidationError("Must not contain control characters or bidirectional marks.")


def path_segment(value: str) -> None:
    """Refuse an id that is a segment of a URL path (subscription id, cohort id) holding a "/", or one that
    is "." or "..": bridge.text."""
    problem = path_segment_problem(value)
    if problem:
        raise ValidationError(f"{problem[0].upper()}{problem[1:]}.")


def as_identifier(value: object) -> str | None:
    """An identifier as the bridge keeps it: a string as is, a JSON integer (not a boolean) as its
    decimal string (40521 → "40521"); None for anything else."""
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    return None


class Identifier(fields.Field):
    """A string id, or a JSON integer taken as its decimal string (platforms send numeric External
    User IDs and Amplitude numeric user ids). A float or a boolean is refused: it is not an id."""

    default_error_messages = {"invalid": "Must be a string (or a whole number)."}

    def _deserialize(self, value, attr, data, **kwargs):
        text = as_identifier(value)
        if text is None:
            raise self.make_error("invalid")
        return text


class OptionalText(fields.String):
    """Text that may be blank: an empty or whitespace-only string means the same as null or absent
    (None). Kept as sent otherwise."""

    def __init__(self, **kwargs):
        super().__init__(load_default=None, allow_none=True, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        return text if text.strip() else None


class DisplayName(fields.String):
    """A name shown to people and never matched on (a cohort's name): cut to `limit` characters rather
    than refused, a NUL character replaced by U+FFFD, so a long or odd name never refuses what it names."""

    def __init__(self, limit: int, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit

    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, **kwargs)[: self.limit].replace("\x00", "\ufffd")


class EpochTime(fields.Field):
    """A time in epoch seconds (or milliseconds), as a JSON number or its digits as a string, inside
    the window of `bridge.times`; loaded as the number sent (a float)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and value.isascii() and value.strip().replace(".", "", 1).isdigit():
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError("Must be epoch seconds (or milliseconds) as a number.")
        try:
            return float(times.check_epoch(value))
        except ValueError as exc:
            raise ValidationError(sentence(exc)) from None


class DateTimeText(fields.Field):
    """An ISO 8601 date-time (no zone means UTC; `2026-11-20 08:15:00 UTC` too), inside the window
    of `bridge.times`; loaded as an aware UTC datetime."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise ValidationError("Must be an ISO 8601 date-time string.")
        try:
            return times.check_moment(times.parse_datetime(value))
        except ValueError as exc:
            raise ValidationError(sentence(exc)) from None


class Timestamp(fields.Field):
    """A time sent either way: epoch seconds or milliseconds (a number or its digits) or an ISO 8601
    date-time; loaded as an aware UTC datetime (`bridge.times.parse_time`). Null or absent: None."""

    def __init__(self, **kwargs):
        super().__init__(load_default=None, allow_none=True, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValidationError("Must be an ISO 8601 date-time or epoch seconds.")
        try:
            return times.parse_time(value)
        except ValueError as exc:
            raise ValidationError(sentence(exc)) from None


def sentence(exc: ValueError) -> str:
    """A ValueError's message as a sentence: capitalised, with a full stop."""
    text = str(exc)
    return f"{text[:1].upper()}{text[1:]}."
