"""What the bridge knows of each message, and what completing events from it has done.

The messaging platform keeps a message's data for 30 days: later opens and clicks arrive with only
`message.id`. `message_catalog` keeps, per app and message id, the newest non-blank value of each detail
the events of that message carried, with the event time that value came from, so those late events can
be completed (`bridge.catalog.service`).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, PrimaryKeyConstraint, Text
from sqlmodel import Field, SQLModel

from bridge.db import UtcDateTime, utcnow

# The message details the catalog learns and fills in, as `intake.schemas.MessageSchema` names them.
DETAILS = ("name", "title", "contents", "template_id")

# What completing did to an event (`outbox_events.message_details`; NULL: nothing to say, the event had
# every detail, no message id, or details the catalog could not add to).
ENRICHED = "enriched"  # at least one blank detail was filled in from the catalog
UNSEEN = "unseen"  # the event carried no detail, and the catalog knows nothing of its message
OUTCOMES = (ENRICHED, UNSEEN)


class MessageCatalogEntry(SQLModel, table=True):
    """One message of one app: each detail's newest value and the event time (epoch ms) it was seen at."""

    __tablename__ = "message_catalog"
    __table_args__ = (PrimaryKeyConstraint("app_id", "message_id", name="pk_message_catalog"),
                      Index("ix_message_catalog_last_seen_at", "last_seen_at"))  # the pruning's walk

    app_id: str = Field(foreign_key="apps.id", max_length=36)
    message_id: str = Field(max_length=128)
    name: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    name_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    title: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    title_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    contents: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    contents_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    template_id: str | None = Field(default=None, max_length=128)
    template_id_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    # Wall clock, not event time: when an event last named this message (to a day: see the service).
    # `bridge prune` forgets entries not seen for MESSAGE_CATALOG_RETENTION_DAYS.
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class MessageDetailsTotal(SQLModel, table=True):
    """Per app, the completing outcomes of the events that have left the outbox (delivered), which the
    pusher folds in as it deletes their rows. With the outcomes of the rows still in the outbox, they
    make the stats' `message_details` counts (`bridge.catalog.service.detail_counts`)."""

    __tablename__ = "message_details_totals"

    app_id: str = Field(primary_key=True, foreign_key="apps.id", max_length=36)
    enriched: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    unseen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
