"""Creating apps, changing their settings, and issuing and rotating their tokens.

Each function flushes its changes into the caller's transaction; the caller (a command, a test) commits."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from bridge import tokens
from bridge.amplitude.regions import REGIONS
from bridge.apps.models import TOKEN_KINDS, App, AppToken
from bridge.db import utcnow
from bridge.mapping import MAPPED_KINDS


class AppConfigError(ValueError):
    """An app setting is invalid; the message says which and why."""


@dataclass(frozen=True)
class IssuedTokens:
    api_key: str
    cohort_token: str


def create_app_record(
    session: Session,
    *,
    name: str,
    amplitude_api_key: str,
    region: str = "us",
    enabled_kinds: list[str] | None = None,
) -> tuple[App, IssuedTokens]:
    """Create an app and its first tokens (flushed, not committed). The plaintext tokens are returned
    once and never stored. Raises AppConfigError for an invalid setting."""
    app = App(id=str(uuid.uuid4()), name=_name(name), amplitude_api_key=_api_key(amplitude_api_key),
              region=_region(region), enabled_kinds=_kinds(enabled_kinds))
    session.add(app)
    session.flush()
    issued = IssuedTokens(api_key=_issue(session, app.id, "api"), cohort_token=_issue(session, app.id, "cohort"))
    return app, issued


def update_app(
    session: Session,
    app: App,
    *,
    name: str | None = None,
    amplitude_api_key: str | None = None,
    region: str | None = None,
    enabled_kinds: list[str] | None | object = ...,
) -> App:
    """Change an app's settings (flushed, not committed). A new Amplitude key releases delivery held for an
    invalid key: the caller then has its events drained (`drain_after_commit`). Raises AppConfigError."""
    if name is not None:
        app.name = _name(name)
    if region is not None:
        app.region = _region(region)
    if enabled_kinds is not ...:
        app.enabled_kinds = _kinds(enabled_kinds)  # type: ignore[arg-type]
    if amplitude_api_key is not None:
        app.amplitude_api_key = _api_key(amplitude_api_key)
        app.delivery_held_reason = None
        app.delivery_held_until = None
    app.updated_at = utcnow()
    session.add(app)
    session.flush()
    return app


def rotate_token(session: Session, app_id: str, kind: str, grace_seconds: int = 24 * 3600) -> str:
    """Issue a new token of `kind` (flushed, not committed); the ones valid now stay valid for
    `grace_seconds` more, then expire. Raises AppConfigError for an unknown kind or a negative grace."""
    if kind not in TOKEN_KINDS:
        raise AppConfigError(f"token kind must be one of {', '.join(TOKEN_KINDS)}")
    if grace_seconds < 0:
        raise AppConfigError("grace period must not be negative")
    now = utcnow()
    expiry = now + timedelta(seconds=grace_seconds)
    session.execute(
        update(AppToken)
        .where(AppToken.app_id == app_id, AppToken.kind == kind)
        .where(or_(AppToken.expires_at.is_(None), AppToken.expires_at > expiry))
        .values(expires_at=expiry)
    )
    return _issue(session, app_id, kind)


def valid_tokens(session: Session, app_id: str, kind: str) -> list[AppToken]:
    """The app's `kind` tokens valid now (several during a rotation's grace period)."""
    now = utcnow()
    return list(
        session.scalars(
            select(AppToken).where(
                AppToken.app_id == app_id,
                AppToken.kind == kind,
                or_(AppToken.expires_at.is_(None), AppToken.expires_at > now),
            )
        )
    )


def describe(app: App) -> dict[str, object]:
    """An app as shown by the CLI and API: never its tokens, and its Amplitude key only masked."""
    return {
        "app_id": app.id,
        "name": app.name,
        "region": app.region,
        "amplitude_api_key": _mask(app.amplitude_api_key),
        "enabled_kinds": app.enabled_kinds or sorted(MAPPED_KINDS),
        "delivery_held_reason": app.delivery_held_reason,
        "created_at": app.created_at.isoformat(),
    }


def _issue(session: Session, app_id: str, kind: str) -> str:
    token = tokens.new_token(kind)
    session.add(AppToken(app_id=app_id, kind=kind, token_hash=tokens.digest(token)))
    session.flush()
    return token


def _name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise AppConfigError("name must be 1 to 200 characters")
    return name


def _api_key(key: str) -> str:
    key = (key or "").strip()
    if not key or len(key) > 200 or any(c.isspace() for c in key):
        raise AppConfigError("Amplitude API key must be 1 to 200 characters without spaces")
    return key


def _region(region: str) -> str:
    region = (region or "").strip().lower()
    if region not in REGIONS:
        raise AppConfigError(f"region must be one of {', '.join(REGIONS)}")
    return region


def _kinds(kinds: list[str] | None) -> list[str] | None:
    if kinds is None:
        return None
    unknown = sorted(set(kinds) - MAPPED_KINDS)
    if unknown:
        raise AppConfigError(f"unknown event kinds: {', '.join(unknown)} (known: {', '.join(sorted(MAPPED_KINDS))})")
    if not kinds:
        raise AppConfigError("enabled kinds must not be empty (omit it to send every kind)")
    return sorted(set(kinds))


def _mask(secret: str) -> str:
    return secret[:4] + "…" if len(secret) > 8 else "…"
