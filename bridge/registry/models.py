"""One row per channel record (a OneSignal "subscription"): a push token, an e-mail address or a phone number."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from bridge.db import BIGINT_PK, UtcDateTime, utcnow

CHANNELS = ("push", "email", "sms")


class Subscription(SQLModel, table=True):
    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("app_id", "subscription_id", name="uq_subscriptions_app_subscription"),
        Index("ix_subscriptions_app_external", "app_id", "external_id"),
        Index("ix_subscriptions_app_channel_identifier", "app_id", "channel", "identifier"),
    )

    id: int | None = Field(default=None, sa_column=Column(BIGINT_PK, primary_key=True, autoincrement=True))
    app_id: str = Field(foreign_key="apps.id", max_length=36)
    subscription_id: str = Field(max_length=128)
    channel: str = Field(max_length=8)  # push | email | sms
    type: str = Field(max_length=32)  # iOSPush, AndroidPush, ChromePush, ..., Email, SMS
    identifier: str | None = Field(default=None, max_length=512)  # push token, e-mail, E.164 phone
    external_id: str | None = Field(default=None, max_length=256)
    # Event time (epoch ms) of the newest event that named an External User ID here; None until one did.
    # An older event arriving later does not replace the user (an import or the API always does).
    external_id_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    notification_types: int | None = None
    invalid_identifier: bool = False
    subscribed: bool | None = None  # None: unknown, nothing imported or observed says it
    device_model: str | None = Field(default=None, max_length=128)
    device_os: str | None = Field(default=None, max_length=64)
    language: str | None = Field(default=None, max_length=16)
    timezone: str | None = Field(default=None, max_length=64)
    country: str | None = Field(default=None, max_length=8)
    last_active_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # When the platform created the record (the API's `created_at`); `created_at` is when the bridge first
    # recorded it (the API's `recorded_at`): registry.schemas declares the API's names.
    source_created_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
