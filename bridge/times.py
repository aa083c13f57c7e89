"""The one way the bridge reads a time, whoever sends it: the event stream (`event.timestamp`,
`event.datetime`), the registry API and CSV import (`last_active`, `created_at`), the cohort webhook
(`computed_time`).

- **Epoch numbers** are seconds, or milliseconds when that large (at least 10^11: seconds that large
  would be past the year 5000). A number that only makes sense as microseconds or nanoseconds is
  refused, its message naming the unit it looks like.
- **Date-time text** is ISO 8601 (`2026-11-20T08:15:00Z`, `2026-11-20T08:15:00+01:00`), also with a
  space for the `T` and a ` UTC` suffix (`2026-11-20 08:15:00 UTC`, as OneSignal's CSV exports write
  it), or a date alone. A time without a zone is UTC. Digits alone are an epoch number.
- **Plausible window**: a time must fall between `EARLIEST` (2000-01-01T00:00:00Z) and
  `FUTURE_MARGIN` (one day) after the bridge's clock. Outside it, the value is refused with a message
  that says what it reads as (`0` is 1970-01-01, `99999999999` is the year 5138).

Every parser raises ValueError with a message meant for the API's per-field errors; the callers wrap it
(marshmallow fields, CSV rows).
"""
from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime, timedelta

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_MARGIN = timedelta(days=1)
_EARLIEST_SECONDS = EARLIEST.timestamp()
_MARGIN_SECONDS = FUTURE_MARGIN.total_seconds()
MILLIS_FROM = 1e11  # an epoch number this large is milliseconds (as seconds: the year 5138)
_UNITS = ((1e11, "seconds"), (1e14, "milliseconds"), (1e17, "microseconds"), (float("inf"), "nanoseconds"))
_EPOCH_TEXT = re.compile(r"[0-9]+(\.[0-9]+)?")


class NotADateTime(ValueError):
    """Text that is not an ISO 8601 date-time at all (as opposed to one outside the window)."""


def likely_unit(number: float) -> str:
    """The epoch unit a positive number most likely is: seconds, milliseconds, microseconds or nanoseconds."""
    return next(unit for bound, unit in _UNITS if abs(number) < bound)


def epoch_millis(number: float) -> int:
    """Epoch seconds (milliseconds when at least 10^11) as whole epoch milliseconds. No checks: see
    `check_epoch` for the values the bridge accepts."""
    return int(number if number >= MILLIS_FROM else number * 1000)


def plausible_epoch(number: float) -> bool:
    """Whether `number` is an epoch time inside the window, in seconds or in milliseconds (the two
    ranges do not overlap, and `MILLIS_FROM` lies between them). Cheap: no datetime is built."""
    latest = _latest_seconds()
    return _EARLIEST_SECONDS <= number <= latest or _EARLIEST_SECONDS * 1000 <= number <= latest * 1000


def check_epoch(number: float) -> float:
    """`number` if it is a plausible epoch time (seconds or milliseconds, inside the window); else
    ValueError naming the unit it looks like or the date it reads as."""
    if plausible_epoch(number):
        return number
    raise _refused(number, ("seconds", "milliseconds"), "send epoch seconds (or milliseconds)")


def check_epoch_seconds(number: float) -> float:
    """`number` if it is a plausible time in whole epoch seconds (inside the window); else ValueError
    naming the unit it looks like (`1764201600000 looks like milliseconds (2025-11-27T00:00:00Z)`) or
    the date it reads as."""
    if _EARLIEST_SECONDS <= number <= _latest_seconds():
        return number
    raise _refused(number, ("seconds",), "send epoch seconds")


def _refused(number: float, accepted: tuple[str, ...], advice: str) -> ValueError:
    """Why an epoch number outside the window is refused: the finer unit it looks like, when read in
    that unit it falls inside the window; else the date it reads as."""
    if not math.isfinite(number):
        return ValueError(f"{number!r} is not a time")
    unit = likely_unit(number)
    if unit not in accepted:
        divisor = {"milliseconds": 1, "microseconds": 1e3, "nanoseconds": 1e6}.get(unit)
        moment = _from_millis(number / divisor) if divisor else None
        if moment is not None and _inside(moment):
            return ValueError(f"{_number(number)} looks like {unit} ({moment:%Y-%m-%dT%H:%M:%SZ}); {advice}")
    read_as = unit if unit in accepted else "seconds"
    moment = _from_millis(epoch_millis(number) if read_as == unit else number * 1000)
    where = f"the year {_year(number, read_as)}" if moment is None else f"{moment:%Y-%m-%dT%H:%M:%SZ}"
    return ValueError(f"{_number(number)} as epoch {read_as} is {where}, {_WINDOW}")


def check_moment(moment: datetime) -> datetime:
    """`moment` if it falls inside the window; else ValueError."""
    if not _inside(moment):
        raise ValueError(f"{moment.isoformat()} is {_WINDOW}")
    return moment


def parse_datetime(text: str) -> datetime:
    """An aware UTC datetime from date-time text (see the module's rules); ValueError if it is not one.
    The window is not checked here (`check_moment`)."""
    stripped = text.strip()
    body = stripped.removesuffix(" UTC").removesuffix(" utc")
    try:
        parsed = datetime.fromisoformat(body)
    except ValueError:
        raise NotADateTime(f"{text!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        # Parsing again with the zone is several times faster than .replace(tzinfo=UTC).
        return datetime.fromisoformat(f"{body}+00:00") if len(body) > 10 else parsed.replace(tzinfo=UTC)
    if parsed.tzinfo is UTC:
        return parsed
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-14:00 is past the last date Python can hold in UTC
        raise ValueError(f"{text!r} is {_WINDOW}") from None


def parse_time(value: str | int | float) -> datetime:
    """An aware UTC datetime inside the window, from an epoch number (or its digits as text) or
    date-time text. ValueError says why not."""
    if isinstance(value, str):
        text = value.strip()
        if not _EPOCH_TEXT.fullmatch(text):
            try:
                moment = parse_datetime(value)
            except NotADateTime:
                raise ValueError(f"{value!r} is not a date-time (ISO 8601) or epoch seconds") from None
            return check_moment(moment)
        value = float(text)
    check_epoch(value)
    moment = _from_millis(epoch_millis(value))
    assert moment is not None
    return moment


def _latest_seconds() -> float:
    return time.time() + _MARGIN_SECONDS


def _inside(moment: datetime) -> bool:
    return _EARLIEST_SECONDS <= moment.timestamp() <= _latest_seconds()


def _from_millis(millis: int) -> datetime | None:
    try:
        return datetime.fromtimestamp(millis / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _year(number: float, unit: str) -> str:
    seconds = number / 1000 if unit == "milliseconds" else number
    return f"{1970 + seconds / 31_556_952:,.0f}"


def _number(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(number)


_WINDOW = f"outside the accepted window ({EARLIEST:%Y-%m-%d} to one day after the bridge's clock)"
