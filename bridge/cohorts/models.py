"""Cohorts synced from Amplitude, their membership, and the history of every webhook batch."""
from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import (JSON, BigInteger, Column, ForeignKeyConstraint, Index, Integer, PrimaryKeyConstraint, Text,
                        UniqueConstraint)
from sqlmodel import Field, SQLModel

from bridge.db import BIGINT_PK, UtcDateTime, utcnow

RECEIVED, PROCESSED, FAILED = "received", "processed", "failed"


class Cohort(SQLModel, table=True):
    __tablename__ = "cohorts"
    __table_args__ = (PrimaryKeyConstraint("app_id", "cohort_id", name="pk_cohorts"),)

    app_id: str = Field(foreign_key="apps.id", max_length=36)
    cohort_id: str = Field(max_length=128)  # Amplitude's cohort id
    name: str = Field(default="", max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # last applied sync


class CohortMember(SQLModel, table=True):
    """Latest known state of one user in one cohort. Rows that left are kept (in_cohort false) so an
    older, late batch cannot undo a newer state."""

    __tablename__ = "cohort_members"
    __table_args__ = (
        PrimaryKeyConstraint("app_id", "cohort_id", "user_id", name="pk_cohort_members"),
        Index("ix_cohort_members_in", "app_id", "cohort_id", "in_cohort"),
    )

    app_id: str = Field(max_length=36)
    cohort_id: str = Field(max_length=128)
    user_id: str = Field(max_length=256)
    in_cohort: bool = True
    # Epoch seconds of the batch that set this state; 64-bit, as 32 bits end in 2038.
    computed_time: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


def new_public_id() -> str:
    """A batch's public id: 16 random hex characters (64 bits), unique per app."""
    return secrets.token_hex(8)


class CohortBatch(SQLModel, table=True):
    """One webhook delivery from Amplitude: stored raw on receipt, applied by a job, kept as history."""

    __tablename__ = "cohort_batches"
    __table_args__ = (
        UniqueConstraint("app_id", "message_id", name="uq_cohort_batches_app_message"),
        UniqueConstraint("app_id", "public_id", name="uq_cohort_batches_app_public_id"),
        Index("ix_cohort_batches_cohort", "app_id", "cohort_id", "id"),
        Index("ix_cohort_batches_state", "state", "received_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BIGINT_PK, primary_key=True, autoincrement=True))
    app_id: str = Field(foreign_key="apps.id", max_length=36)
    # The batch_id API clients see: random, so it tells nothing of other apps' traffic (`id` is global).
    public_id: str = Field(default_factory=new_public_id, max_length=32)
    cohort_id: str = Field(max_length=128)
    cohort_name: str = Field(default="", max_length=500)
    message_id: str = Field(max_length=256)
    in_cohort: bool
    computed_time: int = Field(sa_column=Column(BigInteger, nullable=False))  # epoch seconds, as Amplitude sends it
    user_count: int = 0
    user_ids: str = Field(sa_column=Column(Text, nullable=False))  # the batch's usable user ids, as a JSON array (their properties are not used)
    state: str = Field(default=RECEIVED, max_length=16)
    entered: int = 0
    left: int = 0
    already_known: int = 0
    stale: int = 0  # users whose newer state this (older) batch did not undo
    duplicate_users: int = 0  # the same user_id more than once in this batch
    # Entries of `users` without a usable user_id (schemas.usable_user_id), set aside on receipt: how many,
    # how many per reason, and the first few described.
    unusable_users: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    unusable_reasons: dict[str, int] = Field(default_factory=dict,
                                             sa_column=Column(JSON, nullable=False, server_default="{}"))
    unusable_examples: list[dict] = Field(default_factory=list,
                                          sa_column=Column(JSON, nullable=False, server_default="[]"))
    retries: int = 0  # times Amplitude re-sent this message_id (acknowledged as no-ops)
    # Runs started: counted in its own transaction when a run claims the batch, so a run that is killed,
    # times out or crashes before it can record anything still counts.
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    # When the latest run claimed the batch; while it is recent (jobs.CLAIM_LEASE), no other run starts.
    claimed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    received_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    processed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class CohortReportSnapshot(SQLModel, table=True):
    """The last computed report of one cohort (`report.cohort_report`, as `CohortReportSchema` dumps it),
    which the dashboard shows instead of computing it on each view (bridge.cohorts.snapshots)."""

    __tablename__ = "cohort_report_snapshots"
    __table_args__ = (
        PrimaryKeyConstraint("app_id", "cohort_id", name="pk_cohort_report_snapshots"),
        ForeignKeyConstraint(["app_id", "cohort_id"], ["cohorts.app_id", "cohorts.cohort_id"],
                             name="fk_cohort_report_snapshots_cohort"),
    )

    app_id: str = Field(max_length=36)
    cohort_id: str = Field(max_length=128)
    report: dict = Field(sa_column=Column(JSON, nullable=False))
    # The cohort's `updated_at` the report was computed from: a later one means the cohort changed since.
    cohort_updated_at: datetime = Field(sa_type=UtcDateTime)
    # When its numbers were read; what changed after (a sync, an import) is not in them.
    computed_at: datetime = Field(sa_type=UtcDateTime)


# -- Cohorts applied back to the messaging platform as user tags (bridge.cohorts.tagging) ---------------

TAG_PENDING, TAG_SYNCED, TAG_NOT_ON_PLATFORM, TAG_FAILED = "pending", "synced", "not_on_platform", "failed"


class CohortPlatformSync(SQLModel, table=True):
    """Whether a cohort is applied to the platform, under which tag key. Rows are kept when it is turned
    off (enabled false), so turning it on again resumes where it stopped."""

    __tablename__ = "cohort_platform_syncs"
    __table_args__ = (
        PrimaryKeyConstraint("app_id", "cohort_id", name="pk_cohort_platform_syncs"),
        UniqueConstraint("app_id", "tag_key", name="uq_cohort_platform_syncs_tag_key"),
    )

    app_id: str = Field(foreign_key="apps.id", max_length=36)
    cohort_id: str = Field(max_length=128)
    enabled: bool = True
    tag_key: str = Field(max_length=128)
    enabled_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class PlatformTag(SQLModel, table=True):
    """One tag of one user on the platform: the value the cohort wants it to have (`value`: "1" in the
    cohort, "" out of it, which removes the tag) as of the batch that said so (`computed_time`), and what
    became of it. The newest `computed_time` wins, whatever order batches arrive in."""

    __tablename__ = "platform_tags"
    # The primary key only: every read of the tagger is by user, and a second index led PostgreSQL,
    # before it had statistics on a freshly filled table, to scan every pending tag for each user. A
    # cohort's counts (tagging.sync_status) read the app's rows by the key's prefix.
    __table_args__ = (PrimaryKeyConstraint("app_id", "external_id", "tag_key", name="pk_platform_tags"),)

    app_id: str = Field(max_length=36)
    external_id: str = Field(max_length=256)
    tag_key: str = Field(max_length=128)
    cohort_id: str = Field(max_length=128)
    value: str = Field(max_length=8)
    computed_time: int = Field(sa_column=Column(BigInteger, nullable=False))  # epoch seconds (Amplitude's)
    state: str = Field(default=TAG_PENDING, max_length=16)
    reason: str | None = Field(default=None, max_length=64)  # failed: retry_window_exceeded, conflict, rejected, ...
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    failing_since: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # What the platform last accepted for this tag ("1", "", or None when never applied).
    synced_value: str | None = Field(default=None, max_length=8)
    synced_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class PlatformUser(SQLModel, table=True):
    """When a user's pending tags may next be sent: the platform takes at most one request per second
    per user, and a failed request waits its backoff. `due_at` None: nothing pending."""

    __tablename__ = "platform_users"
    __table_args__ = (
        PrimaryKeyConstraint("app_id", "external_id", name="pk_platform_users"),
        Index("ix_platform_users_due", "app_id", "due_at"),
    )

    app_id: str = Field(max_length=36)
    external_id: str = Field(max_length=256)
    due_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_request_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
