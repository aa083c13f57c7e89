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
import re
import time
from collections.abc import Callable, Iterable

from gunicorn.glogging import Logger
from gunicorn.workers.base import Worker
from waitress import wasyncore
from waitress.server import create_server

from bridge import logs
from bridge.settings import Settings

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
    """gunicorn's logger, writing its own lines and the access log in LOG_FORMAT, as the app's logs are
    written (`bridge.logs.LineFormatter`): one access line per request answered, with the fields of
    `access_fields`. `bridge web` sets it (`--logger-class`)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        formatter = logs.LineFormatter(Settings.from_env().log_format)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter)

    def access(self, resp, req, environ, request_time) -> None:
        self.access_log.info("", extra={"fields": access_fields(resp, environ, request_time)})


# The most characters of a value the client chose (path, query, user agent) that an access line keeps.
ACCESS_VALUE_MAX_CHARS = 512
# A path ending in a person's External User ID (erasure on request, bridge/privacy): logged without it.
# It is recognised in the path routing sees (PATH_INFO: percent-escapes decoded, runs of slashes merged
# as werkzeug merges them), never in the raw URI, which may spell the same route otherwise (`user%73`,
# `v1%2Fapps`, `apps/A//users`).
PERSONAL_PATH = re.compile(r"^/v1/apps/([^/]+)/users/")


def access_fields(answer: _Answer, environ: dict, request_time: datetime.timedelta) -> dict[str, object]:
    """The access-log fields of one request: `method`; `path` and `query` as the client sent them
    (percent-escapes kept; no `query` when there is none); `status`; `bytes`, the body bytes sent;
    `duration_ms`, from the app's start on the buffered request to its last byte handed to waitress;
    `req`, the X-Request-ID the answer carries (the id the app's own lines show); `remote`, the peer's
    address; `ua`, the User-Agent. The client's values are cut to ACCESS_VALUE_MAX_CHARS (ending in
    `…`), and the formatter escapes their control characters and bidi marks (header bytes are read as
    Latin-1, so a C1 control or a bidi override's bytes would otherwise reach the terminal as sent). The
    External User ID of `/v1/apps/<app_id>/users/<external_id>`, however the client spelled that path,
    is written as `(redacted)` (`logged_path`).
    Nothing else of the request is written: no credentials, no cookie, no HTTP Basic user. A field the
    request lacks (`req`, `ua`, `query`) is None."""
    query = environ.get("REQUEST_URI", "").partition("?")[2]
    return {"method": environ.get("REQUEST_METHOD"), "path": _cut(logged_path(environ)), "query": _cut(query) or None,
            "status": int(answer.status.split(" ", 1)[0]), "bytes": answer.sent,
            "duration_ms": round(request_time.total_seconds() * 1000, 1),
            "req": next((value for name, value in answer.headers if name.lower() == "x-request-id"), None),
            "remote": environ.get("REMOTE_ADDR"), "ua": _cut(environ.get("HTTP_USER_AGENT", "")) or None}


def logged_path(environ: dict) -> str:
    """The path an access line shows: the raw path as the client sent it, unless what routing sees
    (PATH_INFO, slashes merged) is `/v1/apps/<app_id>/users/...`, which names a person; then
    `/v1/apps/<app_id>/users/(redacted)`, built from the decoded path and nothing of the raw one."""
    personal = PERSONAL_PATH.match(re.sub("/{2,}", "/", environ.get("PATH_INFO", "")))
    if personal is not None:
        return f"/v1/apps/{personal[1]}/users/(redacted)"
    return environ.get("REQUEST_URI", "").partition("?")[0]


def _cut(value: str) -> str:
    return value if len(value) <= ACCESS_VALUE_MAX_CHARS else value[:ACCESS_VALUE_MAX_CHARS] + "…"


class _AccessLog:
    """WSGI middleware writing an access-log line (through gunicorn's logger, to its `--access-logfile`)
    for each request served, as gunicorn's own workers do."""

    def __init__(self, app: Callable, log):
        self.app = app
        self.log = log

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
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
            self.log.access(answer, [], environ, datetime.timedelta(seconds=time.perf_counter() - started))


class _Answer:
    """What the access log reads of a response: status, headers, bytes sent."""

    def __init__(self):
        self.status = "500 Internal Server Error"
        self.headers: list[tuple[str, str]] = []
        self.sent = 0
