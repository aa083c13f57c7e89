"""The web tier's server: gunicorn's processes, each reading its connections with waitress.

gunicorn's own threaded worker hands a connection to one of its 8 threads as soon as its first bytes
arrive, and that thread then waits for the rest of the request: 16 clients that send their headers or
their body one byte at a time take every thread of a 2-process web tier, and `/healthz` stops
answering. Here gunicorn keeps what it does well (WEB_CONCURRENCY processes on one port, restarts,
SIGTERM's graceful stop, the access log) and each process serves its connections with waitress:

- waitress reads every connection in one event loop and buffers the whole request (headers and body;
  a body above 512 KB spills to a temporary file) before a thread runs the app, so a slow client holds
  a socket and some memory, never a thread;
- a connection that sends nothing for `WEB_READ_TIMEOUT_SECONDS` (partial request or idle keep-alive)
  is closed;
- a process holds at most `WEB_MAX_CONNECTIONS` connections; past that it stops accepting until some
  close (the other processes still accept);
- a body larger than the largest the app accepts (`COHORT_MAX_BODY_BYTES` or `MAX_BODY_BYTES`) is
  refused with 413 from its Content-Length, before it is read.

`bridge web` runs it: `gunicorn --worker-class bridge.webserver.BufferingWorker`.
"""
from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Iterable

from gunicorn.glogging import Logger
from gunicorn.workers.base import Worker
from waitress import wasyncore
from waitress.server import create_server

from bridge.settings import Settings
from bridge.text import escape_unprintable

# How long the event loop waits for network activity before it beats gunicorn's heartbeat again (s).
LOOP_SECONDS = 1.0
# While stopping, how often the loop looks again whether the requests already read are all answered (s);
# it gives up after gunicorn's --graceful-timeout.
STOP_POLL_SECONDS = 0.1


class BufferingWorker(Worker):
    """A gunicorn worker process that serves the app with waitress on gunicorn's listening sockets,
    with `--threads` app threads and `--worker-connections` (WEB_MAX_CONNECTIONS) connections at most."""

    def run(self) -> None:
        settings = Settings.from_env()
        channels: dict = {}
        server = create_server(
            _AccessLog(self.wsgi, self.log), map=channels, sockets=[s.sock for s in self.sockets],
            threads=self.cfg.threads, connection_limit=self.cfg.worker_connections,
            channel_timeout=settings.web_read_timeout_seconds,
            cleanup_interval=max(1, min(30, settings.web_read_timeout_seconds // 2)),
            max_request_body_size=max(settings.max_body_bytes, settings.cohort_max_body_bytes),
            ident="bridge", expose_tracebacks=False)
        while self.alive and self.is_parent_alive():
            self.notify()
            wasyncore.loop(timeout=LOOP_SECONDS, map=channels, count=1)
        self._stop(server, channels)

    def is_parent_alive(self) -> bool:
        if self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            return False
        return True

    def _stop(self, server, channels: dict) -> None:
        """Stop accepting, finish the requests already read (within --graceful-timeout), then close."""
        server.accepting = False
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while time.monotonic() < deadline and any(
                getattr(c, "requests", None) or getattr(c, "total_outbufs_len", 0) for c in list(channels.values())):
            self.notify()
            wasyncore.loop(timeout=STOP_POLL_SECONDS, map=channels, count=1)
        server.task_dispatcher.shutdown(timeout=1)
        wasyncore.close_all(channels)


class AccessLogger(Logger):
    """gunicorn's logger, with every value of an access-log line from the request (request line, path,
    query, referer, user agent, any header) escaped (`bridge.text.escape_unprintable`): header bytes
    are read as Latin-1, so C1 controls (a terminal's CSI among them) and the bytes of a bidi override
    would otherwise reach the operator's terminal as sent. `bridge web` sets it (`--logger-class`)."""

    def atoms(self, resp, req, environ, request_time) -> dict:
        return {key: escape_unprintable(value) if isinstance(value, str) else value
                for key, value in super().atoms(resp, req, environ, request_time).items()}


class _AccessLog:
    """WSGI middleware writing gunicorn's access-log line (its format, its `--access-logfile`) for each
    request served, as gunicorn's own workers do."""

    def __init__(self, app: Callable, log):
        self.app = app
        self.log = log

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = datetime.datetime.now()
        answer = _Answer()

        def recording_start_response(status, headers, exc_info=None):
            answer.status, answer.headers = status, headers
            return start_response(status, headers, exc_info)

        body = self.app(environ, recording_start_response)
        try:
            for chunk in body:
                answer.sent += len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()
            environ.setdefault("RAW_URI", environ.get("REQUEST_URI", ""))
            self.log.access(answer, [], environ, datetime.datetime.now() - started)


class _Answer:
    """What gunicorn's access log reads of a response: status, headers, bytes sent."""

    def __init__(self):
        self.status = "500 Internal Server Error"
        self.headers: list[tuple[str, str]] = []
        self.sent = 0
