"""Logging to stdout (stderr for a one-off command), with the request id (web) or the job id (worker) on
every line."""
from __future__ import annotations

import logging
import sys
import traceback
from typing import TextIO

from bridge.text import escape_unprintable

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(context)s] %(message)s"


def _escape_but_newlines(text: str) -> str:
    return "\n".join(escape_unprintable(line) for line in text.split("\n"))


# The chunks of a formatted traceback that the interpreter writes from code, never from data: the
# header, the chaining notes and the frames (file, line, function, source line).
_TRACEBACK_STRUCTURE = ("Traceback (most recent call last):", "\nThe above exception was", "\nDuring handling of",
                        "  File ", "  [Previous line repeated")


def _safe_chunk(chunk: str) -> str:
    """A chunk of `TracebackException.format()`: structure kept as it is; anything else (an exception's
    message and notes, which may hold request data) escaped into one line."""
    if chunk.startswith(_TRACEBACK_STRUCTURE):
        return _escape_but_newlines(chunk)
    body = chunk[:-1] if chunk.endswith("\n") else chunk
    return escape_unprintable(body) + "\n"


class SafeFormatter(logging.Formatter):
    """The log format, with every control character of the message (ids, names and errors that came
    from requests) written as an escape, so one log record prints as it reads and only a traceback
    spans several lines. A traceback keeps its lines, but an exception's message (and its notes) is
    escaped like the message: a newline or an ANSI escape in it cannot forge a line or rewrite the
    terminal."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info:
            record.exc_text = None  # another handler may have cached a traceback formatted without escapes
        elif record.exc_text:
            record.exc_text = _escape_but_newlines(record.exc_text)
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_unprintable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:
        if ei[1] is None:
            return super().formatException(ei)
        chunks = traceback.TracebackException(type(ei[1]), ei[1], ei[2]).format(chain=True)
        return "".join(_safe_chunk(chunk) for chunk in chunks).removesuffix("\n")

    def formatStack(self, stack_info: str) -> str:
        return _escape_but_newlines(stack_info)


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
