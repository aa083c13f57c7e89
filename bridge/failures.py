"""What the bridge records about a failure where the record outlives a log line (RQ's failed-job
registry, a cohort batch's `error` in the sync history): the exception's type, and where it was raised,
never its message. A message may quote the values the code was working on (an External User ID, an
e-mail address, a database row's key), and these records are kept for days and shown to API clients.

The full message stays in the worker's log, escaped (`bridge.logs`), for the operator.
"""
from __future__ import annotations

import traceback
from pathlib import Path
from types import TracebackType

from sqlalchemy.exc import DBAPIError

_ROOT = Path(__file__).resolve().parent.parent


def describe(exc: BaseException) -> str:
    """One line naming the failure without its message, e.g.
    `IntegrityError (UniqueViolation, SQLSTATE 23505, constraint uq_cohort_members) at
    bridge/cohorts/membership.py:57 in apply_batch`. A database error names the driver's error class,
    its SQLSTATE (PostgreSQL) or error name (SQLite) and the constraint, which are code, not data."""
    where = _location(exc.__traceback__)
    return f"{_kind(exc)} at {where}" if where else _kind(exc)


def trace(exc: BaseException) -> str:
    """The traceback of `exc` and of the exceptions it was raised from (frames and source lines, as
    Python prints them), each exception's line reduced to `_kind`: what RQ keeps of a failed job."""
    parts: list[str] = []
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = "".join(traceback.format_tb(current.__traceback__))
        parts.append(f"Traceback (most recent call last):\n{frames}{_kind(current)}: (message withheld)\n")
        if current.__cause__ is not None:
            parts.append("\nThe above exception was the direct cause of the following exception:\n\n")
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            parts.append("\nDuring handling of the above exception, another exception occurred:\n\n")
            current = current.__context__
        else:
            current = None
    return "".join(reversed(parts))


def _kind(exc: BaseException) -> str:
    name = type(exc).__name__
    if not isinstance(exc, DBAPIError) or exc.orig is None:
        return name
    orig = exc.orig
    details = [type(orig).__name__]
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    if code:
        details.append(f"SQLSTATE {code}" if getattr(orig, "sqlstate", None) else code)
    constraint = getattr(getattr(orig, "diag", None), "constraint_name", None)
    if constraint:
        details.append(f"constraint {constraint}")
    return f"{name} ({', '.join(details)})"


def _location(tb: TracebackType | None) -> str | None:
    """The innermost frame of the bridge's own code (else the innermost frame), as `path:line in function`."""
    frames = traceback.extract_tb(tb)
    if not frames:
        return None
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(_ROOT / "bridge")]
    frame = (ours or frames)[-1]
    path = Path(frame.filename).resolve()
    shown = path.relative_to(_ROOT) if path.is_relative_to(_ROOT) else path.name
    return f"{shown}:{frame.lineno} in {frame.name}"
