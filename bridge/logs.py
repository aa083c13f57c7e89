"""Logging to stdout (stderr for a one-off command), one line per record in the format LOG_FORMAT names.

- `text`: key=value pairs (logfmt), e.g.
  `time=2026-11-29T10:00:00.123Z level=WARNING logger=bridge.errors req=4f1c… msg="database unavailable: …"`;
  a value is quoted when it holds a space, `=`, `"` or `\\`, with `"` and `\\` escaped inside the quotes.
- `json`: one JSON object per line with the same keys.

Every line has `time` (UTC, ISO 8601, milliseconds), `level` and `logger`; then the request id (`req`,
web) or the job id (`job`, worker) when there is one; then the record's own fields (the access log's,
bridge/webserver.py); then `msg`. A value that came from a request cannot forge a line: its control
characters and bidi marks are written as escapes (`bridge.text.escape_unprintable`) in both formats.
"""
from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

from bridge.text import escape_unprintable


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


class LineFormatter(logging.Formatter):
    """One log record, one line in `log_format` ("text" or "json"; see the module's docstring). A record
    logged with `extra={"fields": {...}}` carries those fields (str, int or float values; None leaves a
    field out). A traceback or a stack keeps its lines: after the record's line in text, in the `exc` and
    `stack` fields in json. An exception's message (and its notes) is escaped into one line like any
    value, since it may hold request data; the traceback's own structure (frames, chaining notes) is not."""

    def __init__(self, log_format: str = "text"):
        super().__init__()
        self.log_format = log_format

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = {"time": _timestamp(record.created), "level": record.levelname,
                                     "logger": record.name, **_context(), **getattr(record, "fields", {})}
        message = record.getMessage()
        if message:
            fields["msg"] = message
        values = {key: escape_unprintable(value) if isinstance(value, str) else value
                  for key, value in fields.items() if value is not None}
        # Another handler may have cached a traceback formatted without escapes: formatted again here.
        trace = {"exc": self.formatException(record.exc_info) if record.exc_info
                 else _escape_but_newlines(record.exc_text) if record.exc_text else None,
                 "stack": _escape_but_newlines(record.stack_info) if record.stack_info else None}
        trace = {key: text for key, text in trace.items() if text}
        if self.log_format == "json":
            return json.dumps({**values, **trace}, ensure_ascii=False)
        return " ".join(f"{key}={_text_value(value)}" for key, value in values.items()) + "".join(
            f"\n{text}" for text in trace.values())

    def formatException(self, ei) -> str:
        if ei[1] is None:
            return _escape_but_newlines(super().formatException(ei))
        chunks = traceback.TracebackException(type(ei[1]), ei[1], ei[2]).format(chain=True)
        return "".join(_safe_chunk(chunk) for chunk in chunks).removesuffix("\n")


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text_value(value: object) -> str:
    """A logfmt value: as it is, or quoted when it is empty or holds a space, `=`, `"` or a backslash."""
    text = str(value)
    if text and not any(char.isspace() or char in '="\\' for char in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _context() -> Mapping[str, str]:
    """`req` (in a request) or `job` (in an RQ job), or nothing."""
    from flask import g, has_request_context  # here: a one-off command need not import flask at all

    if has_request_context():
        return {"req": getattr(g, "request_id", "-")}
    try:
        from rq import get_current_job

        job = get_current_job()
    except Exception:  # noqa: BLE001 - logging must never fail
        job = None
    return {"job": job.id} if job is not None else {}


def configure(level: str = "INFO", stream: TextIO | None = None, log_format: str = "text") -> None:
    """Send every log line to `stream` (default: stdout) in `log_format` (`LineFormatter`). Safe to call
    more than once: the first call chooses the stream, the last the level and the format."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_bridge", False)), None)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stdout)
        handler._bridge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(LineFormatter(log_format))
    root.setLevel(level)
    # httpx logs every request at INFO: hundreds of lines a second from the tagger. The bridge logs its own
    # summaries (per batch, per tagger run); httpx's own lines only at DEBUG.
    logging.getLogger("httpx").setLevel(logging.DEBUG if str(level).upper() == "DEBUG" else logging.WARNING)
