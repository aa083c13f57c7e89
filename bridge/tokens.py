"""Bearer tokens: generated with 256 bits of randomness, stored as SHA-256 digests, compared in constant time."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from typing import Protocol, TypeVar

PREFIXES = {"api": "bapi_", "cohort": "bcoh_"}


def new_token(kind: str) -> str:
    return PREFIXES[kind] + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StoredToken(Protocol):
    token_hash: str


T = TypeVar("T", bound=StoredToken)


def match(token: str, stored: Sequence[T]) -> T | None:
    """The stored token (anything with a `token_hash`) that `token` hashes to, or None. Every
    candidate is compared, in constant time."""
    candidate = digest(token)
    found = None
    for entry in stored:
        if hmac.compare_digest(candidate, entry.token_hash):
            found = entry
    return found
