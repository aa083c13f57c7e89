"""An app is one messaging-platform app connected to one Amplitude project."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Column, Index, String, Text
from sqlmodel import Field, SQLModel

from bridge.db import UtcDateTime, utcnow

TOKEN_KINDS = ("api", "cohort")


class App(SQLModel, table=True):
    __tablename__ = "apps"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=200)
    amplitude_api_key: str = Field(max_length=200)
    region: str = Field(default="us", max_length=8)  # a key of bridge.amplitude.regions.REGIONS
    # None = every mapped lifecycle kind is sent; otherwise the list of event kinds to send.
    enabled_kinds: list[str] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=True))
    # The naming profile: a key of bridge.mapping.PROFILES.
    naming: str = Field(default="onesignal-2022", sa_column=Column(String(32), nullable=False, server_default="onesignal-2022"))
    # The app's own Amplitude event_type per (canonical) kind, winning over the profile's; None = none.
    event_names: dict[str, str] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=True))
    # Delivery is held (events kept, not sent) while Amplitude rejects the API key.
    delivery_held_reason: str | None = Field(default=None, max_length=500)
    delivery_held_until: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_delivery_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    last_delivery_error_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_delivered_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    delivered_total: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    # The messaging platform cohorts are applied to as tags (bridge.platforms): None = not connected.
    platform: str | None = Field(default=None, max_length=32)  # a key of bridge.platforms.PLATFORMS
    platform_app_id: str | None = Field(default=None, max_length=128)
    platform_api_key: str | None = Field(default=None, max_length=500)  # shown masked only
    platform_rate_per_second: float | None = Field(default=None)  # None: the platform's default
    # Tag updates wait (kept, not sent) until then: the platform answered 429, or refused the key.
    platform_held_until: datetime | None = Field(default=None, sa_type=UtcDateTime)
    platform_held_reason: str | None = Field(default=None, max_length=500)
    platform_last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    platform_last_error_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # One sender per app at a time (its requests are paced to the app's rate): its lease.
    platform_sender_until: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class AppToken(SQLModel, table=True):
    """A bearer token, stored as its SHA-256 digest only. Several may be valid during a rotation."""

    __tablename__ = "app_tokens"
    __table_args__ = (Index("ix_app_tokens_app_kind", "app_id", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    app_id: str = Field(foreign_key="apps.id", max_length=36)
    kind: str = Field(max_length=16)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
