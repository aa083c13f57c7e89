"""A local server that speaks OneSignal's user-tag contract (bridge.platforms.onesignal), with fault injection.

It stands in for api.onesignal.com in the demo, the tests and the benchmarks: it knows the users it is told
of, checks the `Authorization: Key` header, keeps each user's tags, records when each request arrived (so a
test can check the 1-request-per-second-per-user rule), and can answer scripted faults or, when asked,
enforce OneSignal's rate limits with 429. Driven from Python (`PlatformServer`) or over HTTP (`/_platform/...`):

    bridge platform-server --port 18090 [--host 127.0.0.1] [--api-key KEY ...] [--every-user-known] [--enforce-limits]
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from bridge.localserver import JsonHandler, LocalServer, serve_until_signal

from bridge.platforms.onesignal import OneSignal

log = logging.getLogger(__name__)

USER_PATH = re.compile(r"/apps/([^/]+)/users/by/external_id/([^/]+)")  # on the raw (URL-encoded) path
FAULT_KEYS = frozenset({"status", "times", "users", "delay", "reset", "apply", "retry_after", "message", "failed_tags"})
USERS_KEYS = {"app_id", "external_ids"}  # the body of POST /_platform/users
TITLES = {401: "Please include an 'Authorization: Key <API key>' header", 403: "Access denied: invalid API key",
          404: "User not found", 409: "The user was changed by another request", 429: "API rate limit exceeded"}


class _Reply(NamedTuple):
    status: int | None  # None: close the connection without answering
    body: object = None
    headers: dict[str, str] = {}
    delay: float = 0.0


def _errors(status: int, message: str | None = None, **meta) -> _Reply:
    """A OneSignal error answer: `{"errors": [{"title": ..., "meta": ...}]}`."""
    error: dict = {"title": message or TITLES.get(status) or HTTPStatus(status).phrase}
    if meta:
        error["meta"] = meta
    return _Reply(status, {"errors": [error]}, {"Retry-After": "1"} if status == 429 else {})


@dataclass(frozen=True)
class _Fault:
    status: int | None  # None: close the connection without answering
    users: frozenset[str] | None  # None: any user
    delay: float
    apply: bool
    retry_after: str | None
    message: str | None
    failed_tags: frozenset[str]

    def reply(self, tags: dict[str, str] | None) -> _Reply:
        if self.status is None:
            return _Reply(None, delay=self.delay)
        headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
        if self.failed_tags:
            body = {"properties": {"tags": {k: v for k, v in (tags or {}).items() if k not in self.failed_tags}},
                    "errors": [{"title": self.message or "These tags could not be set",
                                "meta": {"tags": sorted(self.failed_tags)}}]}
        elif self.status < 300:
            body = {"errors": [{"title": self.message}]}
        else:
            body = _errors(self.status, self.message).body
        return _Reply(self.status, body, headers, self.delay)


def _parse_fault(spec: object) -> tuple[_Fault, int]:
    """A fault and how many requests it answers, from its dict; ValueError when the dict makes no sense."""
    if not isinstance(spec, dict) or not spec.keys() <= FAULT_KEYS:
        raise ValueError(f"a fault is a dict with keys among {sorted(FAULT_KEYS)}: {spec!r}")
    status, times, delay, users = spec.get("status"), spec.get("times", 1), spec.get("delay", 0), spec.get("users")
    reset, apply, message = spec.get("reset", False), spec.get("apply", False), spec.get("message")
    retry_after, failed_tags = spec.get("retry_after"), spec.get("failed_tags", [])
    if type(reset) is not bool or type(apply) is not bool:
        raise ValueError(f"reset and apply are true or false: {spec!r}")
    if type(times) is not int or times < 1:
        raise ValueError(f"times must be a positive integer: {spec!r}")
    if type(delay) not in (int, float) or delay < 0:
        raise ValueError(f"delay must be a number of seconds: {spec!r}")
    if users is not None and not _strings(users):
        raise ValueError(f"users must be a list of external ids: {spec!r}")
    if message is not None and not isinstance(message, str):
        raise ValueError(f"message must be a string: {spec!r}")
    if not _strings(failed_tags):
        raise ValueError(f"failed_tags must be a list of tag keys: {spec!r}")
    if retry_after is not None and not (type(retry_after) in (int, float) and retry_after >= 0
                                        or isinstance(retry_after, str) and retry_after.strip()):
        raise ValueError(f"retry_after must be seconds or an HTTP date: {spec!r}")
    successful = type(status) is int and status in (200, 202)
    if reset:
        if status is not None:
            raise ValueError(f"a reset answers nothing: no status: {spec!r}")
    elif successful:
        if not (message or failed_tags) or apply:
            raise ValueError(f"a 2xx fault carries errors: a message or failed_tags (and no apply): {spec!r}")
    elif not (type(status) is int and 400 <= status <= 599):
        raise ValueError(f"a fault needs status 4xx, 5xx, 200 or 202 (with errors), or reset: true: {spec!r}")
    if failed_tags and not successful:
        raise ValueError(f"failed_tags go with status 200 or 202: {spec!r}")
    return _Fault(None if reset else status, None if users is None else frozenset(users), float(delay), apply,
                  None if retry_after is None else str(retry_after), message, frozenset(failed_tags)), times


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) and item for item in value)


def _read_tags(raw: bytes) -> dict[str, str] | _Reply:
    """The tags of an Update-user body, or the 400 OneSignal answers."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _errors(400, "Invalid JSON request body")
    properties = body.get("properties") if isinstance(body, dict) else None
    tags = properties.get("tags") if isinstance(properties, dict) else None
    if not isinstance(tags, dict):
        return _errors(400, "The body must be {\"properties\": {\"tags\": {...}}}")
    bad = sorted(key for key, value in tags.items() if not key or not isinstance(value, str))
    if bad:
        return _errors(400, "Tag values must be strings and keys non-empty", tags=bad)
    return tags


class PlatformServer(LocalServer):
    """A OneSignal-compatible user-tag server on a daemon thread; every method is thread-safe."""

    label = "platform server"
    request_queue_size = 1024

    @property
    def handler(self):  # defined below the class
        return _Handler

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_keys: Iterable[str] | None = None, *,
                 every_user_known: bool = False, enforce_limits: bool = False,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time):
        """`api_keys`: the only keys accepted (None: any key, still sent as `Authorization: Key ...`).
        `every_user_known`: no 404 for users never added. `enforce_limits`: answer 429 (Retry-After: 1) to a
        request for a user whose previous request arrived less than 1 s before, or for an app that already had
        1,000 requests in the second before it. `clock` and `wall_clock`: seconds, monotonic and since the
        epoch, for the arrival times (tests pass their own)."""
        super().__init__(host, port)
        self.api_keys = None if api_keys is None else frozenset(api_keys)
        self.every_user_known, self.enforce_limits = every_user_known, enforce_limits
        self._clock, self._wall_clock = clock, wall_clock
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self._users: defaultdict[str, set[str]] = defaultdict(set)
        self._tags: defaultdict[str, dict[str, dict[str, str]]] = defaultdict(dict)
        self._faults: list[list] = []  # [fault, requests it still answers]
        self._request_log: list[dict] = []
        self._statuses: Counter[int] = Counter()
        self._resets = self._spacing_violations = self._over_app_rate = 0
        self._last_arrival: dict[tuple[str, str], float] = {}
        self._min_spacing: float | None = None
        self._windows: defaultdict[str, deque[float]] = defaultdict(deque)
        self._max_per_second: Counter[str] = Counter()

    def add_users(self, app_id: str, external_ids: Iterable[str]) -> None:
        """Make these users known to the app `app_id` (the others get 404, unless every_user_known)."""
        external_ids = list(external_ids)
        if not isinstance(app_id, str) or not app_id or not _strings(external_ids):
            raise ValueError("users are an app_id and a list of external ids, all non-empty strings")
        with self._lock:
            self._users[app_id].update(external_ids)

    def add_faults(self, faults: Iterable[dict]) -> None:
        """Queue faults that answer the next user-tag requests, in order, instead of the normal handling
        (before the key is checked). Each request takes the first queued fault whose "users" it matches.

        A fault is a dict: "status" (the 4xx or 5xx to answer; or 200/202 with "message", the whole
        request failing with that error, or with "failed_tags", a list of keys named as failed while the
        other tags apply), "times" (how many requests it answers, default 1), "users" (external ids it is
        limited to; default any), "message" (the error's title), "retry_after" (a Retry-After header to
        send: seconds or an HTTP date), "delay" (seconds to wait before answering), "reset" (true: drop the
        connection without an answer; no status), "apply" (true: apply the tags first, as a request whose
        answer was lost would have). Raises ValueError, queuing nothing, if any fault is malformed."""
        parsed = [_parse_fault(spec) for spec in faults]
        with self._lock:
            self._faults.extend([fault, times] for fault, times in parsed)

    def tags(self, app_id: str, external_id: str) -> dict[str, str]:
        """The tags the user has now (empty for a user without any)."""
        with self._lock:
            return dict(self._tags[app_id].get(external_id, {}))

    def all_tags(self, app_id: str) -> dict[str, dict[str, str]]:
        """external id → tags, for every user of the app `app_id` that has tags."""
        with self._lock:
            return {user: dict(tags) for user, tags in self._tags[app_id].items() if tags}

    def requests(self) -> list[dict]:
        """Every user-tag request in arrival order: `{"app_id", "external_id", "tags": the tags sent (None:
        an unreadable body), "at": wall-clock seconds it arrived, "monotonic": the same on the monotonic
        clock, "status": the status answered (None: the connection was dropped unanswered)}`."""
        with self._lock:
            return [dict(entry) for entry in self._request_log]

    def stats(self) -> dict:
        """Counters over every user-tag request: `requests` by status answered; `resets` (dropped
        unanswered); `users` that got one; `min_user_spacing`, the least time in seconds between two
        requests for one user (None before any user's second); `user_spacing_violations`, requests that came
        less than 1 s after the previous one for their user; `max_requests_per_second`, app id → the most
        requests that arrived within any 1 s; `over_app_rate`, requests that came with 1,000 or more already
        in the second before them; `faults_pending`, requests the queued faults will still answer."""
        with self._lock:
            return {
                "requests": dict(self._statuses), "resets": self._resets, "users": len(self._last_arrival),
                "min_user_spacing": self._min_spacing, "user_spacing_violations": self._spacing_violations,
                "max_requests_per_second": dict(self._max_per_second), "over_app_rate": self._over_app_rate,
                "faults_pending": sum(times for _, times in self._faults),
            }

    def reset(self) -> None:
        """Forget every user, tag, request, counter and queued fault."""
        with self._lock:
            self._clear()

    def _receive(self, app_id: str, external_id: str, authorization: str, raw: bytes) -> _Reply:
        """The answer to one user-tag request: the next matching fault if any, else OneSignal's."""
        tags = _read_tags(raw)
        entry = {"app_id": app_id, "external_id": external_id, "tags": tags if isinstance(tags, dict) else None,
                 "at": self._wall_clock(), "monotonic": self._clock(), "status": None}
        with self._lock:
            self._request_log.append(entry)
            over_limit = self._count_arrival(app_id, external_id, entry["monotonic"])
            fault = self._take_fault(external_id)
        if fault is None:
            reply = self._answer(app_id, external_id, authorization, tags, over_limit)
        else:
            if fault.apply or fault.failed_tags:
                self._answer(app_id, external_id, authorization, tags, over_limit, skip=fault.failed_tags)
            reply = fault.reply(entry["tags"])
        with self._lock:
            entry["status"] = reply.status
            if reply.status is None:
                self._resets += 1
            else:
                self._statuses[reply.status] += 1
        return reply

    def _count_arrival(self, app_id: str, external_id: str, now: float) -> bool:
        """Count a request arriving at `now` in the stats (the lock held); whether it breaks a limit."""
        user, too_soon = (app_id, external_id), False
        previous = self._last_arrival.get(user)
        if previous is not None:
            spacing = now - previous
            self._min_spacing = spacing if self._min_spacing is None else min(self._min_spacing, spacing)
            too_soon = spacing < OneSignal.per_user_interval_seconds
            self._spacing_violations += too_soon
        self._last_arrival[user] = now
        window = self._windows[app_id]
        while window and window[0] <= now - 1.0:
            window.popleft()
        over_rate = len(window) >= OneSignal.rate_limit_per_second
        self._over_app_rate += over_rate
        window.append(now)
        self._max_per_second[app_id] = max(self._max_per_second[app_id], len(window))
        return too_soon or over_rate

    def _take_fault(self, external_id: str) -> _Fault | None:
        """The first queued fault for `external_id`, one of its times used up (the lock held)."""
        for index, (fault, times) in enumerate(self._faults):
            if fault.users is None or external_id in fault.users:
                if times == 1:
                    del self._faults[index]
                else:
                    self._faults[index][1] -= 1
                return fault
        return None

    def _answer(self, app_id: str, external_id: str, authorization: str, tags: dict[str, str] | _Reply,
                over_limit: bool, skip: frozenset[str] = frozenset()) -> _Reply:
        """OneSignal's answer, the tags (but `skip`) applied when it is a success."""
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "key" or not key.strip():
            return _errors(401)
        if self.api_keys is not None and key.strip() not in self.api_keys:
            return _errors(403)
        if over_limit and self.enforce_limits:
            return _errors(429)
        if isinstance(tags, _Reply):
            return tags
        if len(tags) > OneSignal.max_tags_per_request:
            return _errors(400, f"At most {OneSignal.max_tags_per_request} tags in one request, not {len(tags)}")
        with self._lock:
            if not self.every_user_known and external_id not in self._users[app_id]:
                return _errors(404)
            applied = {key: value for key, value in tags.items() if key not in skip}
            user_tags = self._tags[app_id].setdefault(external_id, {})
            for key, value in applied.items():
                if value:
                    user_tags[key] = value
                else:
                    user_tags.pop(key, None)
        return _Reply(202, {"properties": {"tags": applied}})


class _Handler(JsonHandler):
    """PATCH on a user's path, and the /_platform/ control paths."""

    def error_body(self, status: int, message: str) -> object:
        return _errors(status, message).body

    def do_PATCH(self) -> None:
        raw = self.read_body()
        if raw is None:
            return
        match = USER_PATH.fullmatch(urlsplit(self.path).path)
        if match is None:
            self._send(_errors(404, "Not found"))
            return
        app_id, external_id = unquote(match[1]), unquote(match[2])
        reply = self.owner._receive(app_id, external_id, self.headers.get("Authorization", ""), raw)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.status is None:
            self.close_connection = True  # no answer at all: the client sees the connection drop
        else:
            self._send(reply)

    def do_POST(self) -> None:
        raw = self.read_body()
        if raw is None:
            return
        platform, path = self.owner, urlsplit(self.path).path
        try:
            payload = orjson.loads(raw or b"null")
            if path == "/_platform/users" and isinstance(payload, dict) and payload.keys() == USERS_KEYS:
                platform.add_users(payload["app_id"], payload["external_ids"])
            elif path == "/_platform/faults" and isinstance(payload, list):
                platform.add_faults(payload)
            elif path == "/_platform/reset":
                platform.reset()
            elif path in ("/_platform/users", "/_platform/faults"):
                raise ValueError('expected {"app_id": ..., "external_ids": [...]}, or a JSON list of faults')
            else:
                self._send(_errors(404, "Not found"))
                return
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            self._send(_errors(400, str(exc)))
            return
        self._send(_Reply(200, {"success": True}))

    def do_GET(self) -> None:
        platform, url = self.owner, urlsplit(self.path)
        query = {name: values[0] for name, values in parse_qs(url.query).items()}
        if url.path == "/_platform/stats":
            self._send(_Reply(200, platform.stats()))
        elif url.path == "/_platform/requests":
            self._send(_Reply(200, platform.requests()))
        elif url.path == "/_platform/tags" and "app_id" in query:
            if "external_id" in query:
                self._send(_Reply(200, platform.tags(query["app_id"], query["external_id"])))
            else:
                self._send(_Reply(200, platform.all_tags(query["app_id"])))
        else:
            self._send(_errors(404, "Not found"))

    def _send(self, reply: _Reply) -> None:
        self.send_json(reply.status, reply.body, headers=reply.headers)


CONTROL_HELP = """\
OneSignal's contract (bridge/platforms/onesignal.py):
  PATCH /apps/APP_ID/users/by/external_id/EXTERNAL_ID   {"properties": {"tags": {"k": "v", "gone": ""}}}
      with Authorization: Key API_KEY; 202 applied, 400 over 100 tags or a bad body, 401 no key, 403 a key
      not accepted, 404 a user not added, 429 over the limits (with --enforce-limits)

control (JSON):
  POST /_platform/users    {"app_id": ..., "external_ids": [...]}: users the app knows
  POST /_platform/faults   a list of faults answering the next requests, in order; each
                           {"status": 503, "times": 1, "users": [...], "message": "...", "delay": 0,
                            "retry_after": 2, "apply": false, "reset": false}, or a 2xx naming errors:
                           {"status": 200, "message": "..."} (the whole request failed) or
                           {"status": 200, "failed_tags": ["k"]} (those failed, the others applied)
  POST /_platform/reset    forget users, tags, requests, counters and faults
  GET  /_platform/tags?app_id=A[&external_id=U]   the tags of every user of A, or of U
  GET  /_platform/requests every request: app, user, tags, arrival (wall clock and monotonic), status
  GET  /_platform/stats    counters: requests by status, per-user spacing and its violations, the most
                           requests per app in any second
"""


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; the URL is the first line printed."""
    parser = argparse.ArgumentParser(prog="bridge platform-server", description=__doc__.split("\n\n")[0],
                                     epilog=CONTROL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18090, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--api-key", dest="api_keys", action="append", metavar="KEY",
                        help="accept only this key (repeatable; default: accept any key)")
    parser.add_argument("--every-user-known", action="store_true",
                        help="answer for any external id, not only the users added (no 404)")
    parser.add_argument("--enforce-limits", action="store_true",
                        help="429 for a user's second request within 1 s, and over 1,000 requests/s per app")
    args = parser.parse_args(argv)
    return serve_until_signal(lambda: PlatformServer(args.host, args.port, args.api_keys,
                                                     every_user_known=args.every_user_known,
                                                     enforce_limits=args.enforce_limits))


if __name__ == "__main__":
    sys.exit(main())
