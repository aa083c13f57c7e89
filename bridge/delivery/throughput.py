"""Delivered events per minute: what the pusher counts as Amplitude accepts them, read back as the last
hour's series (the stats' `delivered_last_hour`), and forgotten after a day (`bridge prune`)."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bridge.db import dialect_insert, utcnow
from bridge.delivery.models import DeliveredMinute

TABLE = DeliveredMinute.__table__
minutes = TABLE.c

HOUR_MINUTES = 60
# `bridge prune` forgets minutes older than this; the stats read only the last hour.
KEPT = timedelta(days=1)


def minute_of(at: datetime) -> datetime:
    """The start of the UTC minute holding `at`."""
    return at.replace(second=0, microsecond=0)


def count_delivered(session: Session, app_id: str, delivered: int, at: datetime) -> None:
    """Add `delivered` events to `app_id`'s count of the minute holding `at`, in the caller's transaction:
    the pusher's, which deletes those events from the outbox. One upsert on (app, minute). The pusher
    calls it after updating the app's row: on PostgreSQL a drain holds its locks until its batch commits,
    so two workers sending one app's events queue on the app's row first, and never each hold a minute's
    row the other waits for (a batch can span two minutes)."""
    insert = dialect_insert(session, TABLE).values(app_id=app_id, minute=minute_of(at), delivered=delivered)
    session.execute(insert.on_conflict_do_update(
        index_elements=["app_id", "minute"], set_={"delivered": minutes.delivered + insert.excluded.delivered}))


def delivered_last_hour(session: Session, app_id: str, now: datetime | None = None) -> dict[str, object]:
    """`{"start": datetime, "per_minute": [60 ints]}`: events Amplitude accepted in each of the last 60
    minutes, oldest first, `start` the first one's start (UTC); the last entry is the current minute,
    still counting. One indexed range read of at most 60 rows."""
    start = minute_of(now or utcnow()) - timedelta(minutes=HOUR_MINUTES - 1)
    counts = [0] * HOUR_MINUTES
    for minute, delivered in session.execute(
            select(minutes.minute, minutes.delivered).where(minutes.app_id == app_id, minutes.minute >= start)):
        index = int((minute - start).total_seconds() // 60)
        if 0 <= index < HOUR_MINUTES:
            counts[index] += delivered
    return {"start": start, "per_minute": counts}


def prune_minutes(session: Session, now: datetime | None = None) -> int:
    """Delete every app's counts of minutes more than a day old (`KEPT`); returns how many rows went.
    Flushes; the caller commits."""
    done = session.execute(delete(TABLE).where(minutes.minute < (now or utcnow()) - KEPT))
    return done.rowcount or 0
