"""Bearer-token authentication of the per-app API, checked before the body is read.

A valid (app, kind, token) is remembered in the process for `AUTH_CACHE_SECONDS` (and never past the
token's own expiry), so the event stream's thousands of requests per second do not each read the
tokens table. A rotated token's grace period is honoured exactly; a revocation (`rotate-token
--grace-seconds 0`) and a change of the app's vocabulary (naming profile, event names, kinds sent)
reach every process within that delay.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import wraps

from flask import current_app, g, request

from bridge import tokens
from bridge.apps.models import App
from bridge.apps.service import valid_tokens, vocabulary_of
from bridge.db import utcnow
from bridge.errors import ApiError
from bridge.mapping import Vocabulary

CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class AppAccess:
    """What an authenticated request knows of its app (a snapshot, at most AUTH_CACHE_SECONDS old).
    Views that show or change the app load it themselves."""

    id: str
    vocabulary: Vocabulary  # which kinds the app sends to Amplitude, and their names


class TokenCache:
    """(app id, token kind, token digest) → AppAccess, for at most `ttl` seconds; least recently used
    entries are dropped past CACHE_MAX_ENTRIES. Failed checks are never remembered."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._entries: OrderedDict[tuple[str, str, str], tuple[float, AppAccess]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> AppAccess | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: tuple[str, str, str], access: AppAccess, token_expires_at: datetime | None) -> None:
        seconds = self.ttl
        if token_expires_at is not None:
            seconds = min(seconds, (token_expires_at - utcnow()).total_seconds())
        if seconds <= 0:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + seconds, access)
            self._entries.move_to_end(key)
            while len(self._entries) > CACHE_MAX_ENTRIES:
                self._entries.popitem(last=False)


def require_token(kind: str) -> Callable:
    """Decorate a view taking `app_id`: 401 unless the bearer token is one of that app's valid `kind`
    tokens; an unknown app is answered the same way, so app ids cannot be probed without a token.
    The app's `AppAccess` is put on `g.app`. The tokens are read in a session of their own, closed
    before the view runs: the request's session (`request_scope.get_db`) is the view's."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(app_id: str, **kwargs):
            presented = _bearer()
            g.app = _authenticate(current_app.extensions["bridge.tokens"], app_id, kind, presented)
            return view(app_id, **kwargs)

        wrapped.token_kind = kind  # type: ignore[attr-defined]  # read by token_kind_of (the OpenAPI document)
        return wrapped

    return decorator


def token_kind_of(view: Callable) -> str | None:
    """The kind of token (`api` or `cohort`) `require_token` demands of `view`; None for a public view."""
    return getattr(view, "token_kind", None)


def _authenticate(cache: TokenCache, app_id: str, kind: str, presented: str | None) -> AppAccess:
    key = (app_id, kind, tokens.digest(presented)) if presented else None
    if key is not None and (access := cache.get(key)) is not None:
        return access
    with current_app.extensions["bridge"].session() as db:  # closed at once: the connection goes back to the pool
        app = db.get(App, app_id) if len(app_id) <= 36 else None
        matched = tokens.match(presented, valid_tokens(db, app_id, kind)) if presented and app is not None else None
        if matched is None:
            which = "api_key" if kind == "api" else "cohort_token"
            raise ApiError(401, "unauthorized", f"Send this app's {which} as 'Authorization: Bearer <token>'.")
        access = AppAccess(app.id, vocabulary_of(app))
    cache.put(key, access, matched.expires_at)
    return access


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
