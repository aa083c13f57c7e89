"""OneSignal's user API: a user's tags set through "Update user", the user named by its External ID.

The contract, from OneSignal's API reference ("Update user", "Rate limits and error handling", "Keys & IDs"):

    PATCH {base}/apps/{app_id}/users/by/external_id/{external_id}      (both URL-encoded as path segments)
    Authorization: Key <the app's API key>
    Content-Type: application/json
    {"properties": {"tags": {"key": "value", "gone": ""}}}                  ("" removes the tag)

Limits: 100 tag changes in one request; 1 request per second per user; 1,000 requests per second per app,
over which OneSignal answers 429 with a Retry-After header (seconds; its older reference spells it
RetryAfter). Errors come as `{"errors": [...]}`, each a string or an object with `title`, `code` and `meta`.

OneSignal does not document how an answer names one failed tag among several: here an error object names
tags by `meta.tags` (a list of keys) or `meta.tag` (one key), as bridge.platforms.server answers; an error
that names no tag sent fails the whole request.
"""
from __future__ import annotations

from urllib.parse import quote

import httpx
import orjson

from bridge.platforms.base import (
    APPLIED, CONFLICT, MAX_MESSAGE_LENGTH, NOT_ON_PLATFORM, REJECTED, RETRY, THROTTLED, Platform, TagOutcome,
    retry_after_seconds,
)

HIDDEN_KEY = "<the app's API key>"


class OneSignal(Platform):
    name = "onesignal"
    max_tags_per_request = 100
    per_user_interval_seconds = 1.0
    rate_limit_per_second = 1000
    default_rate_per_second = 900.0
    default_base_url = "https://api.onesignal.com"
    default_retry_after = 1.0

    def build_request(self, external_id: str, tags: dict[str, str]) -> httpx.Request:
        url = f"{self.base_url}/apps/{quote(self.app_id, safe='')}/users/by/external_id/{quote(external_id, safe='')}"
        headers = {"Authorization": f"Key {self.api_key}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        body = orjson.dumps({"properties": {"tags": tags}})
        return self.http.build_request("PATCH", url, content=body, headers=headers, timeout=self.timeout)

    def classify(self, response: httpx.Response, tags: dict[str, str]) -> TagOutcome:
        """200/202 → applied, unless the body carries `errors`: then the tags they name failed (applied,
        with failed_tags; rejected when they name every tag sent), or, when an error names none, the whole
        request (rejected). 404 → not_on_platform; 409 → conflict; 429 → throttled for Retry-After seconds;
        408 and 5xx → retry; any other status → rejected."""
        status = response.status_code
        errors = _errors(response.content)
        message = self._words(errors) or response.reason_phrase or f"HTTP {status}"
        if 200 <= status < 300:
            if not errors:
                return TagOutcome(APPLIED, http_status=status)
            sent = frozenset(tags)
            named = [keys & sent for _, keys in errors]
            if not all(named):
                return TagOutcome(REJECTED, message, http_status=status)
            failed = frozenset().union(*named)
            return TagOutcome(REJECTED if failed == sent else APPLIED, message, failed_tags=failed, http_status=status)
        if status == 404:
            return TagOutcome(NOT_ON_PLATFORM, message, http_status=status)
        if status == 409:
            return TagOutcome(CONFLICT, message, http_status=status)
        if status == 429:
            header = response.headers.get("Retry-After", response.headers.get("RetryAfter"))
            return TagOutcome(THROTTLED, message, retry_after=retry_after_seconds(header, self.default_retry_after),
                              http_status=status)
        if status == 408 or status >= 500:
            return TagOutcome(RETRY, message, http_status=status)
        return TagOutcome(REJECTED, message, http_status=status)

    def _words(self, errors: list[tuple[str, frozenset[str]]]) -> str:
        """The errors' messages in one line, never showing the API key."""
        return "; ".join(text for text, _ in errors).replace(self.api_key, HIDDEN_KEY)[:MAX_MESSAGE_LENGTH]


def _errors(content: bytes) -> list[tuple[str, frozenset[str]]]:
    """Each error of a OneSignal answer's `errors`: its message and the tag keys it names."""
    try:
        body = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    if not errors:
        return []
    if not isinstance(errors, list):
        return [(str(errors), frozenset())]
    return [_error(error) for error in errors]


def _error(error: object) -> tuple[str, frozenset[str]]:
    if not isinstance(error, dict):
        return str(error), frozenset()
    text = str(error.get("title") or error.get("message") or error.get("code") or error)
    meta = error.get("meta")
    if not isinstance(meta, dict):
        return text, frozenset()
    keys = [meta["tag"]] if "tag" in meta else meta.get("tags")
    return text, frozenset(key for key in keys if isinstance(key, str)) if isinstance(keys, list) else frozenset()
