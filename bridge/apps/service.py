"""Creating apps, changing their settings, and issuing and rotating their tokens.

Each function flushes its changes into the caller's transaction; the caller (a command, a test) commits."""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from bridge import mapping, tokens
from bridge.amplitude.regions import REGIONS
from bridge.apps.models import TOKEN_KINDS, App, AppToken
from bridge.db import utcnow
from bridge.platforms import PLATFORMS


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
    naming: str | None = None,
    event_names: Mapping[str, str] | None = None,
) -> tuple[App, IssuedTokens]:
    """Create an app and its first tokens (flushed, not committed). The plaintext tokens are returned
    once and never stored. `naming`, `event_names` and `enabled_kinds` make its vocabulary
    (`bridge.mapping.vocabulary`). Raises AppConfigError for an invalid setting."""
    app = App(id=str(uuid.uuid4()), name=_name(name), amplitude_api_key=_api_key(amplitude_api_key),
              region=_region(region))
    _set_vocabulary(app, naming, dict(event_names or {}), enabled_kinds)
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
    naming: str | None = None,
    event_names: Mapping[str, str | None] | None = None,
) -> App:
    """Change an app's settings (flushed, not committed). `event_names` changes the app's own event_type
    of each kind given (None removes it, the profile's name applies again); `enabled_kinds` None sends
    every kind with a name. The vocabulary applies to events accepted after the commit. A new Amplitude
    key releases delivery held for an invalid key: the caller then has its events drained
    (`drain_after_commit`). Raises AppConfigError, and then changes nothing."""
    new_name = _name(name) if name is not None else app.name
    new_region = _region(region) if region is not None else app.region
    new_key = _api_key(amplitude_api_key) if amplitude_api_key is not None else None
    names = dict(app.event_names or {})
    for kind, event_type in (event_names or {}).items():
        try:
            kind = mapping.check_kind(kind)
        except mapping.VocabularyError as exc:
            raise AppConfigError(str(exc)) from None
        if event_type is None:
            names.pop(kind, None)
        else:
            names[kind] = event_type
    _set_vocabulary(app, naming or app.naming, names,
                    app.enabled_kinds if enabled_kinds is ... else enabled_kinds)  # type: ignore[arg-type]
    app.name, app.region = new_name, new_region
    if new_key is not None:
        app.amplitude_api_key = new_key
        app.delivery_held_reason = None
        app.delivery_held_until = None
    app.updated_at = utcnow()
    session.add(app)
    session.flush()
    return app


def connect_platform(session: Session, app: App, *, platform: str | None, platform_app_id: str | None = None,
                     platform_api_key: str | None = None, rate_per_second: float | None = None) -> App:
    """Connect the app to its messaging platform, where cohorts are applied as tags (flushed, not
    committed); `platform` None disconnects it (its tags wait, kept). A new connection releases tags held
    by the old one's 429 or refusal. Omitted fields keep their value. `rate_per_second` caps the app's
    requests (None: the platform's default, below its own limit). Raises AppConfigError."""
    if platform is None:
        app.platform = None
    else:
        if platform not in PLATFORMS:
            raise AppConfigError(f"platform must be one of {', '.join(PLATFORMS)}")
        new_id = _platform_field("--platform-app-id", platform_app_id if platform_app_id is not None else app.platform_app_id)
        if "/" in new_id or "?" in new_id or "#" in new_id:
            raise AppConfigError("--platform-app-id must not hold '/', '?' or '#' (it is part of the API's paths)")
        new_key = _platform_field("--platform-api-key", platform_api_key if platform_api_key is not None else app.platform_api_key)
        # 95% of the platform's cap: room for the network's jitter in when requests arrive
        highest = 0.95 * PLATFORMS[platform].rate_limit_per_second
        if rate_per_second is not None and not 0 < rate_per_second <= highest:
            raise AppConfigError(f"--platform-rate must be above 0 and at most {highest:g} "
                                 f"requests per second (95% of {platform}'s limit)")
        app.platform, app.platform_app_id, app.platform_api_key = platform, new_id, new_key
        if rate_per_second is not None:
            app.platform_rate_per_second = rate_per_second
    app.platform_held_until = app.platform_held_reason = None
    app.updated_at = utcnow()
    session.add(app)
    session.flush()
    return app


def _platform_field(option: str, value: str | None) -> str:
    value = (value or "").strip()
    if not value:
        raise AppConfigError(f"{option} is required to connect the app to its platform")
    if len(value) > 500 or any(c.isspace() or not c.isprintable() for c in value):
        raise AppConfigError(f"{option} must be 1 to 500 printable characters without spaces")
    return value


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


def vocabulary_of(app: App) -> mapping.Vocabulary:
    """The app's vocabulary: which kinds it sends to Amplitude, under which event_type."""
    return mapping.vocabulary(app.naming, app.event_names, app.enabled_kinds)


def describe(app: App) -> dict[str, object]:
    """An app as shown by the CLI and API: never its tokens, and its Amplitude key only masked.

    `naming`, `event_names` (the app's own names, by kind) and `enabled_kinds` (None: every kind with a
    name) are its settings; `event_types` is what they make: the event_type of every kind it sends."""
    vocabulary = vocabulary_of(app)
    return {
        "app_id": app.id,
        "name": app.name,
        "region": app.region,
        "amplitude_api_key": _mask(app.amplitude_api_key),
        "naming": vocabulary.naming,
        "event_names": dict(vocabulary.event_names),
        "enabled_kinds": sorted(vocabulary.enabled) if vocabulary.enabled is not None else None,
        "event_types": {row["kind"]: row["event_type"] for row in vocabulary.rows() if row["sent"]},
        "delivery_held_reason": app.delivery_held_reason,
        "platform": _platform(app),
        "created_at": app.created_at.isoformat(),
    }


def _platform(app: App) -> dict[str, object] | None:
    """The app's platform connection, its API key masked; None when not connected."""
    if app.platform is None:
        return None
    held = app.platform_held_until is not None and app.platform_held_until > utcnow()
    return {"name": app.platform, "app_id": app.platform_app_id, "api_key": _mask(app.platform_api_key or ""),
            "rate_per_second": app.platform_rate_per_second,
            "held": {"reason": app.platform_held_reason, "until": app.platform_held_until.isoformat()} if held else None,
            "last_error": app.platform_last_error}


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


def _set_vocabulary(app: App, naming: str, event_names: dict[str, str], enabled_kinds: list[str] | None) -> None:
    """Check the three together (an enabled kind needs a name under the profile or the app's own), then
    store them canonical; raises AppConfigError, naming the kind or name at fault, before changing anything."""
    try:
        vocabulary = mapping.vocabulary(naming, event_names, enabled_kinds)
    except mapping.VocabularyError as exc:
        raise AppConfigError(str(exc)) from None
    app.naming = vocabulary.naming
    app.event_names = dict(vocabulary.event_names) or None
    app.enabled_kinds = sorted(vocabulary.enabled) if vocabulary.enabled is not None else None


def _mask(secret: str) -> str:
    return secret[:4] + "…" if len(secret) > 8 else "…"
