"""Logging to stdout (stderr for a one-off command), with the request id (web) or the job id (worker) on
every line."""
from __future__ import annotations

import logging
import sys
from typing import TextIO

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(context)s] %(message)s"


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
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(_ContextFilter())
    root.addHandler(handler)
    root.setLevel(level)
