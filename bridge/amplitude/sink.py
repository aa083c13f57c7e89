"""A local server that speaks Amplitude's ingestion contract (HTTP V2 and Batch), with fault injection.

It stands in for api2.amplitude.com in the demo, the tests and the benchmarks. It validates requests as
shared/reference/amplitude-http-api.md describes, ingests valid ones with Amplitude's insert_id
deduplication, and can be told to throttle ids or to answer the next requests with scripted faults: from
Python (`AmplitudeSink`), or over HTTP (`/_sink/...`) when the sink runs in another process:

    bridge sink --port 18080 [--host 127.0.0.1] [--api-key KEY ...]   (`bridge sink --help`: the control paths)
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

import orjson

from bridge.localserver import JsonHandler, LocalServer, serve_until_signal

log = logging.getLogger(__name__)


class Endpoint(NamedTuple):
    max_bytes: int  # a (decompressed) body of this size or more is refused with 413
    max_events: int
    eps_threshold: int  # reported on 429


ENDPOINTS = {"/2/httpapi": Endpoint(1_000_000, 2000, 30), "/batch": Endpoint(20_000_000, 2000, 1000)}
DEFAULT_MIN_ID_LENGTH = 5
PLACEHOLDER_IDS = frozenset({"null", "anonymous", "0", "-1"})
FAULT_KEYS = frozenset({"status", "times", "ingest", "body", "delay", "reset"})


class _Rejected(Exception):
    """Ends the handling of a request with this answer."""

    def __init__(self, status: int, body: dict):
        super().__init__(status)
        self.status, self.body = status, body


def _bad_request(error: str, *, missing_field: str | None = None, invalid=None, missing=None, id_lengths=None) -> _Rejected:
    body: dict = {"code": 400, "error": error}
    if missing_field:
        body["missing_field"] = missing_field
    body.update(
        events_with_invalid_fields=invalid or {}, events_with_missing_fields=missing or {},
        events_with_invalid_id_lengths=id_lengths or {}, silenced_devices=[], silenced_events=[],
    )
    return _Rejected(400, body)


def _throttled_body(endpoint: Endpoint, users=None, devices=None, events=None, quota_users=None, quota_devices=None) -> dict:
    return {
        "code": 429, "error": "Too many requests for some devices and users", "eps_threshold": endpoint.eps_threshold,
        "throttled_users": users or {}, "throttled_devices": devices or {}, "throttled_events": events or [],
        "exceeded_daily_quota_users": quota_users or {}, "exceeded_daily_quota_devices": quota_devices or {},
    }


def _error_body(status: int, endpoint: Endpoint) -> dict:
    if status == 429:
        return _throttled_body(endpoint)
    return {"code": status, "error": "Payload too large" if status == 413 else HTTPStatus(status).phrase}


def _decompress(raw: bytes, content_encoding: str, max_bytes: int) -> bytes:
    """The request body, gunzipped if it says so; refused with 413 from `max_bytes` decompressed bytes on."""
    body = raw
    if content_encoding.strip().lower() == "gzip":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(raw, max_bytes)
        except zlib.error:
            raise _Rejected(400, {"code": 400, "error": "Invalid gzip request body"}) from None
        if len(body) < max_bytes and not inflater.eof:
            raise _Rejected(400, {"code": 400, "error": "Invalid gzip request body"})
    if len(body) >= max_bytes:
        raise _Rejected(413, {"code": 413, "error": "Payload too large"})
    return body


def _parse_envelope(body: bytes, api_keys: frozenset[str] | None) -> tuple[str, list, int]:
    """api_key, events and min_id_length of a request body, or the 400 Amplitude gives."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        raise _Rejected(400, {"code": 400, "error": "Invalid JSON request body"})
    api_key = payload.get("api_key")
    if not isinstance(api_key, str) or not api_key:
        raise _bad_request("Request missing required field", missing_field="api_key")
    if api_keys is not None and api_key not in api_keys:
        raise _Rejected(400, {"code": 400, "error": f"Invalid API key: {api_key}"})
    events = payload.get("events")
    if not isinstance(events, list) or not events:
        raise _bad_request("Request missing required field", missing_field="events")
    options = payload.get("options")
    min_id_length = options.get("min_id_length") if isinstance(options, dict) else None
    if type(min_id_length) is not int:
        min_id_length = DEFAULT_MIN_ID_LENGTH
    return api_key, events, min_id_length


def _check_events(events: list, min_id_length: int) -> None:
    """Raise Amplitude's 400, listing every bad event's index by field, if any event is bad."""
    missing, invalid, id_lengths = defaultdict(list), defaultdict(list), defaultdict(list)
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            invalid["event"].append(index)
            continue
        event_type = event.get("event_type")
        if event_type is None or event_type == "":
            missing["event_type"].append(index)
        elif not isinstance(event_type, str):
            invalid["event_type"].append(index)
        user_id, device_id = event.get("user_id"), event.get("device_id")
        if user_id is None and device_id is None:
            missing["user_id"].append(index)
        for name, value in (("user_id", user_id), ("device_id", device_id)):
            if value is None:
                continue
            if not isinstance(value, str) or value.lower() in PLACEHOLDER_IDS:
                invalid[name].append(index)
            elif len(value) < min_id_length:
                id_lengths[name].append(index)
        event_time = event.get("time")
        if event_time is not None and type(event_time) is not int:
            invalid["time"].append(index)
        insert_id = event.get("insert_id")
        if insert_id is not None and not isinstance(insert_id, str):
            invalid["insert_id"].append(index)
    if missing or invalid or id_lengths:
        error = ("Request missing required field" if missing else
                 "Invalid field values on some events" if invalid else "Invalid id length for user_id or device_id")
        raise _bad_request(error, invalid=dict(invalid), missing=dict(missing), id_lengths=dict(id_lengths))


@dataclass(frozen=True)
class _Throttle:
    users: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    quota_users: frozenset[str] = frozenset()
    quota_devices: frozenset[str] = frozenset()

    def check(self, events: list[dict], endpoint: Endpoint) -> None:
        """Raise Amplitude's 429 if any event belongs to a throttled or over-quota user or device."""
        if not (self.users or self.devices or self.quota_users or self.quota_devices):
            return
        users, devices, quota_users, quota_devices = Counter(), Counter(), Counter(), Counter()
        hit = []
        for index, event in enumerate(events):
            user_id, device_id = event.get("user_id"), event.get("device_id")
            matched = False
            for ids, counts, value in ((self.users, users, user_id), (self.devices, devices, device_id),
                                       (self.quota_users, quota_users, user_id), (self.quota_devices, quota_devices, device_id)):
                if value in ids:
                    counts[value] += 1
                    matched = True
            if matched:
                hit.append(index)
        if hit:
            raise _Rejected(429, _throttled_body(endpoint, dict(users), dict(devices), hit, dict(quota_users), dict(quota_devices)))


@dataclass(frozen=True)
class _Fault:
    status: int | None  # None: close the connection without answering
    body: dict | None
    ingest: bool
    delay: float


def _parse_fault(spec: object) -> tuple[_Fault, int]:
    """A fault and how many requests it answers, from its dict; ValueError when the dict makes no sense."""
    if not isinstance(spec, dict) or not spec.keys() <= FAULT_KEYS:
        raise ValueError(f"a fault is a dict with keys among {sorted(FAULT_KEYS)}: {spec!r}")
    status, times, delay, body = spec.get("status"), spec.get("times", 1), spec.get("delay", 0), spec.get("body")
    reset, ingest = spec.get("reset", False), spec.get("ingest", False)
    if type(reset) is not bool or type(ingest) is not bool:
        raise ValueError(f"reset and ingest are true or false: {spec!r}")
    if not reset and not _is_error_status(status):
        raise ValueError(f"a fault needs an HTTP error status (4xx, 5xx) or reset: true: {spec!r}")
    if type(times) is not int or times < 1:
        raise ValueError(f"times must be a positive integer: {spec!r}")
    if type(delay) not in (int, float) or delay < 0:
        raise ValueError(f"delay must be a number of seconds: {spec!r}")
    if body is not None and not isinstance(body, dict):
        raise ValueError(f"body must be a JSON object: {spec!r}")
    return _Fault(None if reset else status, body, ingest, float(delay)), times


def _is_error_status(status: object) -> bool:
    try:
        return type(status) is int and HTTPStatus(status).value >= 400
    except ValueError:
        return False


class _Reply(NamedTuple):
    status: int | None  # None: close the connection without answering
    body: dict | None
    delay: float = 0.0


class AmplitudeSink(LocalServer):
    """An Amplitude-compatible ingestion server on a daemon thread; every method is thread-safe."""

    label = "amplitude sink"
    request_queue_size = 128

    @property
    def handler(self):  # defined below the class
        return _Handler

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_keys: set[str] | None = None, *,
                 record_events: bool = True, track_arrivals: bool = False):
        """`api_keys`: the only keys accepted (None: any). `record_events` False keeps counters only (no
        events, no request log). `track_arrivals` keeps the wall-clock time each insert_id was first
        ingested (latency benchmarks)."""
        super().__init__(host, port)
        self.api_keys = frozenset(api_keys) if api_keys is not None else None
        self.record_events = record_events
        self.track_arrivals = track_arrivals
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self._events: list[tuple[str, dict]] = []
        self._arrivals: dict[str, float] = {}
        self._seen: set[tuple[str, str, str]] = set()
        self._requests: Counter[int] = Counter()
        self._request_log: list[dict] = []
        self._received = self._ingested = self._duplicates = self._resets = 0
        self._faults: deque[_Fault] = deque()
        self._throttle = _Throttle()

    def add_faults(self, faults: Iterable[dict]) -> None:
        """Queue faults that answer the next ingestion requests, in order, instead of the normal handling.

        A fault is a dict: "status" (the 4xx/5xx to answer), "times" (how many requests it answers,
        default 1), "ingest" (true: handle the request normally first, as a 500 that did ingest), "body"
        (the JSON object to answer; default Amplitude's for the status), "delay" (seconds to wait before
        answering), "reset" (true: drop the connection without an answer; no status needed).
        Raises ValueError, queuing nothing, if any fault is malformed."""
        parsed = [_parse_fault(spec) for spec in faults]
        with self._lock:
            for fault, times in parsed:
                self._faults.extend([fault] * times)

    def throttle(self, *, users: Iterable[str] = (), devices: Iterable[str] = (),
                 daily_quota_users: Iterable[str] = (), daily_quota_devices: Iterable[str] = ()) -> None:
        """From now on, answer 429 (ingesting nothing) to any request with events of these ids.

        Replaces the previous setting; no ids at all unthrottles."""
        setting = _Throttle(frozenset(users), frozenset(devices), frozenset(daily_quota_users), frozenset(daily_quota_devices))
        with self._lock:
            self._throttle = setting

    def unthrottle(self) -> None:
        """Stop throttling anyone."""
        self.throttle()

    def stats(self) -> dict:
        """Counters: ingestion requests by answered status, events received (in every request whose events were read),
        ingested (unique), duplicates ignored, unique insert ids, connections reset, faults still queued."""
        with self._lock:
            return {
                "requests": dict(self._requests), "events_received": self._received,
                "events_ingested": self._ingested, "duplicates": self._duplicates,
                "unique_insert_ids": len(self._seen), "resets": self._resets, "faults_pending": len(self._faults),
            }

    def events(self, api_key: str | None = None) -> list[dict]:
        """Ingested events (duplicates left out) in arrival order, optionally of one api_key only.

        Empty when the sink was made with record_events=False."""
        with self._lock:
            return [event for key, event in self._events if api_key is None or key == api_key]

    def requests(self) -> list[dict]:
        """Every ingestion request in arrival order: `{"path": "/2/httpapi", "at": wall-clock seconds it
        arrived, "status": the status answered (None: the connection was dropped unanswered)}`.

        Empty when the sink was made with record_events=False."""
        with self._lock:
            return [dict(entry) for entry in self._request_log]

    def arrivals(self) -> dict[str, float]:
        """insert_id → wall-clock time it was first ingested (only with track_arrivals)."""
        with self._lock:
            return dict(self._arrivals)

    def reset(self) -> None:
        """Forget every event, request, counter, queued fault and throttle setting."""
        with self._lock:
            self._clear()

    def _receive(self, path: str, raw: bytes, content_encoding: str) -> _Reply:
        """The answer to one ingestion request to `path`: the next scripted fault if any, else Amplitude's."""
        endpoint, entry = ENDPOINTS[path], {"path": path, "at": time.time(), "status": None}
        with self._lock:
            if self.record_events:
                self._request_log.append(entry)
            fault = self._faults.popleft() if self._faults else None
        if fault is None:
            reply = _Reply(*self._ingest(endpoint, raw, content_encoding))
        else:
            if fault.ingest:
                self._ingest(endpoint, raw, content_encoding)
            body = None if fault.status is None else fault.body or _error_body(fault.status, endpoint)
            reply = _Reply(fault.status, body, fault.delay)
        with self._lock:
            entry["status"] = reply.status
            if reply.status is None:
                self._resets += 1
            else:
                self._requests[reply.status] += 1
        return reply

    def _ingest(self, endpoint: Endpoint, raw: bytes, content_encoding: str) -> tuple[int, dict]:
        with self._lock:
            throttle = self._throttle
        try:
            body = _decompress(raw, content_encoding, endpoint.max_bytes)
            api_key, events, min_id_length = _parse_envelope(body, self.api_keys)
            with self._lock:
                self._received += len(events)
            if len(events) > endpoint.max_events:
                raise _Rejected(413, {"code": 413, "error": "Payload too large"})
            _check_events(events, min_id_length)
            throttle.check(events, endpoint)
        except _Rejected as rejection:
            return rejection.status, rejection.body
        self._store(api_key, events)
        return 200, {"code": 200, "events_ingested": len(events), "payload_size_bytes": len(body),
                     "server_upload_time": int(time.time() * 1000)}

    def _store(self, api_key: str, events: list[dict]) -> None:
        """Keep each event unless its insert_id was already seen for its device (or user, without device)."""
        keys = [None if (insert_id := event.get("insert_id")) is None
                else (api_key, event.get("device_id") or event.get("user_id"), insert_id) for event in events]
        now = time.time()
        with self._lock:
            for key, event in zip(keys, events):
                if key is not None:
                    if key in self._seen:
                        self._duplicates += 1
                        continue
                    self._seen.add(key)
                self._ingested += 1
                if self.record_events:
                    self._events.append((api_key, event))
                if self.track_arrivals and key is not None:
                    self._arrivals[key[2]] = now


class _Handler(JsonHandler):
    """The ingestion paths, and the /_sink/ control paths."""

    def error_body(self, status: int, message: str) -> object:
        return {"code": status, "error": message}

    def do_POST(self) -> None:
        raw = self.read_body()
        if raw is None:
            return
        sink, path = self.owner, urlsplit(self.path).path
        if path in ENDPOINTS:
            reply = sink._receive(path, raw, self.headers.get("Content-Encoding", ""))
            if reply.delay:
                time.sleep(reply.delay)
            if reply.status is None:
                self.close_connection = True  # no answer at all: the client sees the connection drop
            else:
                self._send(reply.status, reply.body)
            return
        self._send(*self._control(path, raw))

    def _control(self, path: str, raw: bytes) -> tuple[int, dict]:
        sink = self.owner
        if path == "/_sink/reset":
            sink.reset()
        elif path in ("/_sink/faults", "/_sink/throttle"):
            try:
                payload = orjson.loads(raw or b"null")
                if path == "/_sink/faults" and isinstance(payload, list):
                    sink.add_faults(payload)
                elif path == "/_sink/throttle" and isinstance(payload, dict):
                    sink.throttle(**payload)
                else:
                    raise ValueError("expected a JSON list of faults, or a JSON object of throttle settings")
            except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
                return 400, {"code": 400, "error": str(exc)}
        else:
            return 404, {"code": 404, "error": "Not found"}
        return 200, {"code": 200}

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/_sink/stats":
            self._send(200, self.owner.stats())
        elif url.path == "/_sink/requests":
            self._send(200, self.owner.requests())
        elif url.path == "/_sink/arrivals":
            self._send(200, self.owner.arrivals())
        elif url.path == "/_sink/events":
            api_key = parse_qs(url.query).get("api_key", [None])[0]
            self._send(200, self.owner.events(api_key))
        else:
            self._send(404, {"code": 404, "error": "Not found"})

    def _send(self, status: int, body: object) -> None:
        self.send_json(status, body)


CONTROL_HELP = """\
ingestion (Amplitude's contract, shared/reference/amplitude-http-api.md):
  POST /2/httpapi, POST /batch      events deduplicated by insert_id; 400, 413, 429 as Amplitude answers

control (JSON):
  POST /_sink/faults     a list of faults answering the next ingestion requests, in order; each
                         {"status": 500, "times": 1, "ingest": false, "body": {...}, "delay": 0,
                          "reset": false}: "ingest" handles the request first (a 5xx that did
                         ingest), "delay" waits seconds before answering, "reset" drops the
                         connection without an answer
  POST /_sink/throttle   {"users": [...], "devices": [...], "daily_quota_users": [...],
                          "daily_quota_devices": [...]}: answer 429 to requests with events of
                         these ids (replaces the last setting; {} stops throttling)
  POST /_sink/reset      forget events, requests, counters, faults and throttling
  GET  /_sink/stats      counters: requests by status, events ingested, duplicates ignored
  GET  /_sink/events     the events ingested (?api_key=KEY: only that key's)
  GET  /_sink/requests   every ingestion request: its path, when it arrived, the status answered
  GET  /_sink/arrivals   when each insert_id arrived (with --track-arrivals)
"""


def main(argv: list[str] | None = None) -> int:
    """Serve a sink until SIGTERM or SIGINT; its URL is the first line printed."""
    parser = argparse.ArgumentParser(prog="bridge sink", description=__doc__.split("\n\n")[0],
                                     epilog=CONTROL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--api-key", dest="api_keys", action="append", metavar="KEY",
                        help="accept only this key (repeatable; default: accept any key)")
    parser.add_argument("--no-record-events", dest="record_events", action="store_false",
                        help="keep counters only, not the events or the request log (long benchmarks)")
    parser.add_argument("--track-arrivals", action="store_true",
                        help="keep when each insert_id arrived (GET /_sink/arrivals; latency benchmarks)")
    args = parser.parse_args(argv)
    api_keys = set(args.api_keys) if args.api_keys else None
    return serve_until_signal(lambda: AmplitudeSink(args.host, args.port, api_keys, record_events=args.record_events,
                                                    track_arrivals=args.track_arrivals))


if __name__ == "__main__":
    sys.exit(main())
