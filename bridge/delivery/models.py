"""The outbox: one row per accepted source event, the record of what must reach Amplitude."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from bridge.db import BIGINT_PK, UtcDateTime, utcnow

PENDING, DELIVERED, DEAD, SKIPPED = "pending", "delivered", "dead", "skipped"
STATES = (PENDING, DELIVERED, DEAD, SKIPPED)


class OutboxEvent(SQLModel, table=True):
    __tablename__ = "outbox_events"
    __table_args__ = (
        UniqueConstraint("app_id", "source_event_id", name="uq_outbox_events_app_source"),
        Index(
            "ix_outbox_events_due",
            "app_id",
            "next_attempt_at",
            "id",
            postgresql_where=text("state = 'pending'"),
            sqlite_where=text("state = 'pending'"),
        ),
        Index("ix_outbox_events_app_state", "app_id", "state"),
    )

    id: int | None = Field(default=None, sa_column=Column(BIGINT_PK, primary_key=True, autoincrement=True))
    app_id: str = Field(foreign_key="apps.id", max_length=36)
    source_event_id: str = Field(max_length=128)
    kind: str = Field(max_length=64)
    state: str = Field(default=PENDING, max_length=16)
    # Machine-readable cause for dead / skipped rows, e.g. "unresolved_user", "amplitude_400".
    reason: str | None = Field(default=None, max_length=64)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    insert_id: str = Field(max_length=128)
    user_id: str | None = Field(default=None, max_length=256)
    device_id: str | None = Field(default=None, max_length=256)
    subscription_device_type: str | None = Field(default=None, max_length=64)
    # The Amplitude event, serialized once at intake so batches are built by concatenation.
    payload: str = Field(sa_column=Column(Text, nullable=False))
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    failing_since: datetime | None = Field(default=None, sa_type=UtcDateTime)
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
