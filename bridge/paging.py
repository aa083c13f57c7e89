"""Paged listings: a page's size (`limit`), and cursors: the `next` of a page, given back as `after` for the
following one.

A cursor carries the key the listing continues after (an External User ID and a row's surrogate id,
say), so it is encrypted and authenticated with a key derived from `SECRET_KEY` (Fernet: AES-128-CBC
and HMAC-SHA256, from the `cryptography` package). A client, or whoever reads an access log, sees
an opaque string: no user id, and no global row number to count other tenants' rows by. A cursor
is bound to the listing and the URL it came from (the app, the cohort): given to another app, another
cohort or another listing, or altered in any way, it is refused with `400 invalid_cursor`.
"""
from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
from cryptography.fernet import Fernet, InvalidToken
from flask import current_app, request

from bridge.errors import ApiError
from bridge.http import int_arg

# `limit`: how many items a page holds.
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


class Cursors:
    """Encrypts page keys into cursors and back, under one secret (the same in every process)."""

    def __init__(self, secret: str):
        key = hmac.new(secret.encode(), b"bridge paging cursors", hashlib.sha256).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def encode(self, scope: str, key: tuple) -> str:
        """`key` as an opaque cursor valid only for `scope`."""
        token = self._fernet.encrypt(orjson.dumps([_digest(scope), *key]))
        return token.decode().rstrip("=")

    def decode(self, scope: str, cursor: str) -> list | None:
        """The key `encode` was given for `scope`, or None if `cursor` is not one of its cursors."""
        try:
            data = orjson.loads(self._fernet.decrypt(cursor + "=" * (-len(cursor) % 4)))
        except (InvalidToken, ValueError, TypeError):
            return None
        if not isinstance(data, list) or not data or data[0] != _digest(scope):
            return None
        return data[1:]


def _digest(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def _scope() -> str:
    """The listing (endpoint) and the URL's ids (app, cohort) of the current request."""
    return orjson.dumps([request.endpoint, request.view_args], option=orjson.OPT_SORT_KEYS).decode()


def _cursors() -> Cursors:
    return current_app.extensions["bridge"].cursors


def next_cursor(key: tuple | None) -> str | None:
    """The `next` of a page of the current request's listing whose last row has `key` (None: the last page)."""
    return None if key is None else _cursors().encode(_scope(), key)


def after_key(types: tuple[type, ...]) -> tuple | None:
    """The request's `after` cursor decoded back to its key (one value per type in `types`), or None if
    absent. A cursor that is not a `next` of this very listing is a 400 `invalid_cursor`."""
    raw = request.args.get("after")
    if raw is None:
        return None
    key = _cursors().decode(_scope(), raw)
    if key is None or len(key) != len(types) or not all(
        _is_key_part(value, kind) for value, kind in zip(key, types, strict=True)
    ):
        raise ApiError(400, "invalid_cursor", "after must be the 'next' value of a previous page of this same "
                       "listing; it was altered, or comes from another listing, app or cohort.", {"after": raw})
    return tuple(key)


def page_limit() -> int:
    """The request's `limit`: from 1 to MAX_LIMIT, DEFAULT_LIMIT when absent (400 `invalid_parameter` otherwise)."""
    return int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)


def _is_key_part(value: object, kind: type) -> bool:
    """True if `value` is of `kind` and fits the column it is compared with: a 64-bit integer, or a
    string without NUL (which PostgreSQL refuses)."""
    if type(value) is not kind:
        return False
    return -(2**63) <= value < 2**63 if kind is int else "\x00" not in value
