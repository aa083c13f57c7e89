"""The contract every messaging-platform adapter keeps: set one user's tags in one request, and say what
the platform answered, classified.

An adapter sends; it never waits, paces or retries. The caller (the queue that applies cohort membership
as tags) reads the class's limits to pace itself, and decides what each outcome means for the tags in hand.
"""
from __future__ import annotations

import email.utils
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import ClassVar, Self

import httpx

# The outcomes of one request, as TagOutcome.status.
APPLIED = "applied"  # the platform took the tags (but those in failed_tags, if any)
NOT_ON_PLATFORM = "not_on_platform"  # the platform knows no such user: not worth retrying
CONFLICT = "conflict"  # the platform refused the change as conflicting with the user's state (its message says how)
THROTTLED = "throttled"  # over a rate limit: send nothing more for this app for retry_after seconds
RETRY = "retry"  # the platform failed or could not be reached: the same request may succeed later
REJECTED = "rejected"  # the platform refused the request as it is (bad key, bad tags): resending will not help
STATUSES = frozenset({APPLIED, NOT_ON_PLATFORM, CONFLICT, THROTTLED, RETRY, REJECTED})

MAX_MESSAGE_LENGTH = 500


@dataclass(frozen=True)
class TagOutcome:
    """What the platform made of one set_tags request.

    `message`: the platform's own words (its reason phrase when its body has none; for a request that got
    no answer, why), for every outcome but a clean "applied". `retry_after`: seconds, for "throttled" only;
    OneSignal's limits are per app, so the wait is the whole app's. `failed_tags`: the keys the platform
    named as failed in an otherwise successful answer ("applied": the others were applied), or every key
    sent when it named them all ("rejected"); empty when a "rejected" request failed as a whole.
    `http_status`: the status answered (None: no answer came)."""

    status: str
    message: str | None = None
    retry_after: float | None = None
    failed_tags: frozenset[str] = frozenset()
    http_status: int | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown outcome {self.status!r}: one of {sorted(STATUSES)}")


class Platform(ABC):
    """One messaging platform's user-tag API, for one of its apps.

    A subclass names the platform and its limits, builds the request and classifies the answer; this
    class owns the HTTP client and turns a request that got no answer into "retry". A new platform is a
    subclass in a module of its own, plus its line in bridge.platforms.PLATFORMS."""

    name: ClassVar[str]
    max_tags_per_request: ClassVar[int]  # tags (set or removed) in one request
    per_user_interval_seconds: ClassVar[float]  # at least this long between two requests for the same user
    rate_limit_per_second: ClassVar[float]  # the platform's cap: requests per second per app
    default_rate_per_second: ClassVar[float]  # requests per second per app to send at, below the cap
    default_base_url: ClassVar[str]
    default_retry_after: ClassVar[float] = 1.0  # seconds, for a throttling answer that does not say

    def __init__(self, *, app_id: str, api_key: str, base_url: str | None = None,
                 client: httpx.Client | None = None, timeout: float = 10.0):
        """`app_id` and `api_key`: the platform app's id and its API key. `base_url`: the API's root (default:
        the platform's own). `client`: an httpx client to share (its connection pool); None makes one, closed
        by close(). `timeout`: seconds for each of connecting, sending and reading a request."""
        if not app_id or not api_key:
            raise ValueError("a platform app needs its app_id and its api_key")
        self.app_id, self.api_key, self.timeout = app_id, api_key, timeout
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self._owns_client = client is None
        self.http = client if client is not None else httpx.Client(
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100))

    def set_tags(self, external_id: str, tags: Mapping[str, str]) -> TagOutcome:
        """Set, or remove (value ""), up to max_tags_per_request tags of the user known to the
        platform by `external_id`, in one request. Never raises for an answer or for a request that got
        none (timeout, reset, DNS: "retry" with the reason); ValueError for arguments no request can carry
        (no external id, no tags or too many, a key or value that is not a string, an empty key)."""
        if not isinstance(external_id, str) or not external_id:
            raise ValueError("external_id must be a non-empty string")
        if not tags or len(tags) > self.max_tags_per_request:
            raise ValueError(f"one request carries 1 to {self.max_tags_per_request} tags, not {len(tags)}")
        if not all(isinstance(key, str) and key and isinstance(value, str) for key, value in tags.items()):
            raise ValueError("tag keys are non-empty strings and values strings ('' removes the tag)")
        request = self.build_request(external_id, dict(tags))
        try:
            response = self.http.send(request)
        except httpx.TimeoutException as exc:
            return TagOutcome(RETRY, f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return TagOutcome(RETRY, f"connection error: {type(exc).__name__}: {exc}"[:MAX_MESSAGE_LENGTH])
        return self.classify(response, dict(tags))

    @abstractmethod
    def build_request(self, external_id: str, tags: dict[str, str]) -> httpx.Request:
        """The HTTP request setting `tags` on the user `external_id` (self.http.build_request, with
        timeout=self.timeout)."""

    @abstractmethod
    def classify(self, response: httpx.Response, tags: dict[str, str]) -> TagOutcome:
        """The outcome of the platform's answer to a request that carried `tags`."""

    def close(self) -> None:
        """Close the HTTP client, if this adapter made it."""
        if self._owns_client:
            self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def retry_after_seconds(value: str | None, default: float, now: float | None = None) -> float:
    """Seconds to wait from a Retry-After header (RFC 9110: a number of seconds, or an HTTP date, counted
    from `now`, wall-clock seconds, default the current time); `default` when absent or unreadable. Never
    negative."""
    if value is None or not value.strip():
        return default
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else default
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
