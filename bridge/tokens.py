"""Bearer tokens: generated with 256 bits of randomness, stored as SHA-256 digests, compared in constant time."""
from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIXES = {"api": "bapi_", "cohort": "bcoh_"}


def new_token(kind: str) -> str:
    return PREFIXES[kind] + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def matches(token: str, stored_digests: list[str]) -> bool:
    """True if `token` hashes to one of `stored_digests`. Every candidate is compared, in constant time."""
    candidate = digest(token)
    found = False
    for stored in stored_digests:
        found |= hmac.compare_digest(candidate, stored)
    return found
