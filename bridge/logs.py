"""Logging to stdout (stderr for a one-off command), with the request id (web) or the job id (worker) on
every line."""
from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

from bridge.text import UNPRINTABLE

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(context)s] %(message)s"


def _escaped(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class SafeFormatter(logging.Formatter):
    """The log format, with every control character of the message (ids, names and errors that came
    from requests) written as an escape, so one log record is always one line that prints as it reads.
    A traceback, which the formatter appends itself, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = UNPRINTABLE.sub(_escaped, record.message)
        return super().formatMessage(record)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.context = _context()
        return True


def _context() -> str:
    from flask import g, has_request_context  # here: a one-off command need not import flask at all

    if has_request_context():
        return f"req={getattr(g, 'request_id', '-')}"
    try:
        from rq import get_current_job

        job = get_current_job()
    except Exception:  # noqa: BLE001 - logging must never fail
        job = None
    return f"job={job.id}" if job is not None else "-"


def configure(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log line to `stream` (default: stdout) in one format. Safe to call more than once: the
    first call chooses the stream."""
    root = logging.getLogger()
    if any(getattr(h, "_bridge", False) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(stream or sys.stdout)
    handler._bridge = True  # type: ignore[attr-defined]
    handler.setFormatter(SafeFormatter(_FORMAT))
    handler.addFilter(_ContextFilter())
    root.addHandler(handler)
    root.setLevel(level)
