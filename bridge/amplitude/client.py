"""Amplitude's HTTP V2 API, as a client that sends pre-serialized events and classifies every answer.

The pusher decides what to do with an answer; this module only says what the answer was, per the
contract in shared/reference/amplitude-http-api.md.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass, field

import httpx
import orjson

HTTP_API_PATH = "/2/httpapi"

OK, INVALID_KEY, BAD_REQUEST, TOO_LARGE, THROTTLED, TRANSIENT = (
    "ok", "invalid_key", "bad_request", "too_large", "throttled", "transient"
)
HIDDEN_KEY = "<the app's API key>"
_INDEXED_400_FIELDS = ("events_with_invalid_fields", "events_with_missing_fields", "events_with_invalid_id_lengths")


@dataclass
class Answer:
    """Amplitude's answer to one request, classified."""

    outcome: str
    status: int | None
    error: str
    # 400: event index → why Amplitude refused it; devices Amplitude has silenced.
    invalid_events: dict[int, str] = field(default_factory=dict)
    silenced_devices: set[str] = field(default_factory=set)
    # 429
    throttled_users: set[str] = field(default_factory=set)
    throttled_devices: set[str] = field(default_factory=set)
    throttled_events: set[int] = field(default_factory=set)
    quota_users: set[str] = field(default_factory=set)
    quota_devices: set[str] = field(default_factory=set)


def envelope(api_key: str) -> tuple[bytes, bytes]:
    """The bytes around the events array; `min_id_length` 1 so short External User IDs are accepted."""
    head = b'{"api_key":' + orjson.dumps(api_key) + b',"events":['
    return head, b'],"options":{"min_id_length":1}}'


class AmplitudeClient:
    def __init__(self, *, timeout: float, gzip_requests: bool = False):
        self.gzip_requests = gzip_requests
        self.http = httpx.Client(timeout=httpx.Timeout(timeout), limits=httpx.Limits(max_connections=20))

    def send(self, base_url: str, api_key: str, payloads: list[bytes]) -> Answer:
        """POST `payloads` (serialized events) to `base_url`'s HTTP V2 endpoint; never raises for I/O."""
        head, tail = envelope(api_key)
        body = head + b",".join(payloads) + tail
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.gzip_requests:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        try:
            response = self.http.post(base_url + HTTP_API_PATH, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return Answer(TRANSIENT, None, f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return Answer(TRANSIENT, None, f"connection error: {type(exc).__name__}: {exc}")
        answer = classify(response.status_code, response.content)
        if api_key:  # Amplitude echoes a rejected key ("Invalid API key: <key>"); the error is stored, shown and logged
            answer.error = answer.error.replace(api_key, HIDDEN_KEY)
        return answer

    def close(self) -> None:
        self.http.close()


def classify(status: int, content: bytes) -> Answer:
    """Turn an HTTP status and body into an Answer."""
    try:
        body = orjson.loads(content) if content else {}
    except orjson.JSONDecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    error = str(body.get("error") or f"HTTP {status}")[:500]
    if status == 200:
        return Answer(OK, status, "")
    if status == 400:
        if error.lower().startswith("invalid api key"):
            return Answer(INVALID_KEY, status, error)
        answer = Answer(BAD_REQUEST, status, error)
        for key in _INDEXED_400_FIELDS:
            for fieldname, indices in _dict(body.get(key)).items():
                for index in _ints(indices):
                    answer.invalid_events.setdefault(index, f"{key.removeprefix('events_with_')}: {fieldname}")
        for index in _ints(body.get("silenced_events")):
            answer.invalid_events.setdefault(index, "silenced_event")
        answer.silenced_devices = {str(d) for d in body.get("silenced_devices") or [] if d is not None}
        return answer
    if status == 413:
        return Answer(TOO_LARGE, status, error)
    if status == 429:
        return Answer(
            THROTTLED, status, error,
            throttled_users=set(_dict(body.get("throttled_users"))),
            throttled_devices=set(_dict(body.get("throttled_devices"))),
            throttled_events=set(_ints(body.get("throttled_events"))),
            quota_users=set(_dict(body.get("exceeded_daily_quota_users"))),
            quota_devices=set(_dict(body.get("exceeded_daily_quota_devices"))),
        )
    return Answer(TRANSIENT, status, f"HTTP {status}: {error}")


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _ints(value: object) -> list[int]:
    return [v for v in value if isinstance(v, int)] if isinstance(value, list) else []
