"""The outbox: the record of what must still reach Amplitude, and of every event accepted.

An event's row lives in `outbox_events` from intake until Amplitude accepts it (then it is deleted and
counted on the app), or for good when it is dead-lettered or skipped. `event_receipts` remembers every
event id ever accepted, so a re-post is recognised after delivery too.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, PrimaryKeyConstraint, Text, text
from sqlmodel import Field, SQLModel

from bridge.db import BIGINT_PK, UtcDateTime, utcnow

PENDING, DEAD, SKIPPED = "pending", "dead", "skipped"
# The reason of events stored without a user to attribute them to (sent by a replay once the registry knows one).
UNRESOLVED_USER = "unresolved_user"
# Why an event is dead-lettered (the pusher's outcomes; README, "What each Amplitude answer does").
PAYLOAD_TOO_LARGE, AMPLITUDE_400, DAILY_QUOTA_EXCEEDED, RETRY_WINDOW_EXCEEDED = (
    "payload_too_large", "amplitude_400", "daily_quota_exceeded", "retry_window_exceeded")
DEAD_REASONS = (AMPLITUDE_400, DAILY_QUOTA_EXCEEDED, PAYLOAD_TOO_LARGE, RETRY_WINDOW_EXCEEDED)
# What `bridge deliveries replay --reason` accepts: every dead-letter reason, and the skipped events of
# unknown users (re-resolved through the channel registry).
REPLAYABLE_REASONS = (*DEAD_REASONS, UNRESOLVED_USER)


class OutboxEvent(SQLModel, table=True):
    __tablename__ = "outbox_events"
    __table_args__ = (
        # The pusher's claim walks this index in order and stops at the batch size.
        Index(
            "ix_outbox_events_due",
            "app_id",
            "next_attempt_at",
            "id",
            postgresql_where=text("state = 'pending'"),
            sqlite_where=text("state = 'pending'"),
        ),
        Index(
            "ix_outbox_events_parked",
            "app_id",
            "state",
            "reason",
            postgresql_where=text("state <> 'pending'"),
            sqlite_where=text("state <> 'pending'"),
        ),
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
    # The Amplitude event as JSON, serialized once at intake so that batches are built by concatenation.
    # While the event waits for a user (`unresolved_user`) it has no user_id, which the replay adds.
    amplitude_event: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Rows stored before 0010's release only: the validated source item as JSON of an event waiting for a
    # user (amplitude_event NULL); the replay maps it once the channel registry knows the user.
    source_item: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # What the message catalog did to the event at intake: "enriched" (a blank detail filled in), "unseen"
    # (no detail, and a message the catalog never saw), or None (bridge.catalog.models.OUTCOMES). Counted
    # for the stats while the row is here; the pusher folds it into the app's totals as it deletes the row.
    message_details: str | None = Field(default=None, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    failing_since: datetime | None = Field(default=None, sa_type=UtcDateTime)
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class EventReceipt(SQLModel, table=True):
    """One row per source event ever accepted for an app: the idempotency key of the intake."""

    __tablename__ = "event_receipts"
    __table_args__ = (PrimaryKeyConstraint("app_id", "source_event_id", name="pk_event_receipts"),
                      Index("ix_event_receipts_created_at", "created_at"))

    app_id: str = Field(max_length=36)
    source_event_id: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class DeliveredMinute(SQLModel, table=True):
    """How many of an app's events Amplitude accepted in one minute (UTC, the minute's start): the history
    behind the stats' `delivered_last_hour`. Delivered rows leave the outbox, so the pusher counts them
    here in the transaction that deletes them; `bridge prune` forgets minutes older than a day."""

    __tablename__ = "delivered_minutes"
    __table_args__ = (PrimaryKeyConstraint("app_id", "minute", name="pk_delivered_minutes"),)

    app_id: str = Field(foreign_key="apps.id", max_length=36)
    minute: datetime = Field(sa_type=UtcDateTime)
    delivered: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
