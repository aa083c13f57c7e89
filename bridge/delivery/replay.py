"""Putting dead-lettered (or unattributable) events back in line for delivery."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bridge import mapping
from bridge.db import utcnow
from bridge.delivery.models import DEAD, PENDING, SKIPPED, UNRESOLVED_USER, OutboxEvent
from bridge.delivery.scheduling import drain_after_commit
from bridge.registry.service import external_ids_for

outbox = OutboxEvent.__table__.c


@dataclass
class ReplayResult:
    requeued: int = 0
    still_unresolved: int = 0
    app_ids: set[str] = field(default_factory=set)


def replay(session: Session, *, app_id: str | None = None, since: datetime | None = None,
           reason: str | None = None, checkpoint: Callable[[], None] = lambda: None) -> ReplayResult:
    """Re-queue dead events matching the filters (same Amplitude event, same insert_id: Amplitude cannot count
    them twice). With reason "unresolved_user", re-resolve skipped events through the channel registry
    instead, and queue those whose user is now known.

    Flushes, and asks for a drain of every app with events re-queued, sent when the caller commits.
    Skipped events are re-resolved 1,000 at a time, `checkpoint()` called after each such chunk: a
    caller passing its `session.commit` keeps every transaction short on a big outbox."""
    if reason == UNRESOLVED_USER:
        return _resolve_skipped(session, app_id=app_id, since=since, checkpoint=checkpoint)
    filters = [outbox.state == DEAD]
    if app_id:
        filters.append(outbox.app_id == app_id)
    if since:
        filters.append(outbox.created_at >= since)
    if reason:
        filters.append(outbox.reason == reason)
    result = ReplayResult()
    result.app_ids = set(session.scalars(select(outbox.app_id).where(*filters).distinct()))
    done = session.execute(
        update(OutboxEvent.__table__).where(*filters).values(
            state=PENDING, reason=None, attempts=0, failing_since=None, next_attempt_at=utcnow(),
            lease_owner=None, lease_expires_at=None)
    )
    result.requeued = done.rowcount or 0
    for requeued_app in sorted(result.app_ids):
        drain_after_commit(session, requeued_app)
    return result


def _resolve_skipped(session: Session, *, app_id: str | None, since: datetime | None,
                     checkpoint: Callable[[], None]) -> ReplayResult:
    filters = [outbox.state == SKIPPED, outbox.reason == UNRESOLVED_USER]
    if app_id:
        filters.append(outbox.app_id == app_id)
    if since:
        filters.append(outbox.created_at >= since)
    result = ReplayResult()
    last_id = 0
    while True:
        rows = session.execute(
            select(outbox.id, outbox.app_id, outbox.device_id, outbox.amplitude_event, outbox.source_item)
            .where(*filters, outbox.id > last_id).order_by(outbox.id).limit(1000)
        ).all()
        if not rows:
            break
        last_id = rows[-1].id
        by_app: dict[str, list] = {}
        for row in rows:
            by_app.setdefault(row.app_id, []).append(row)
        for app, app_rows in by_app.items():
            known = external_ids_for(session, app, {r.device_id for r in app_rows})
            for row in app_rows:
                user_id = known.get(row.device_id)
                if not user_id:
                    result.still_unresolved += 1
                    continue
                event = _attributed(row, user_id)
                session.execute(update(OutboxEvent.__table__).where(outbox.id == row.id).values(
                    state=PENDING, reason=None, last_error=None, user_id=user_id,
                    amplitude_event=orjson.dumps(event).decode(), source_item=None, next_attempt_at=utcnow()))
                result.requeued += 1
                result.app_ids.add(app)
                drain_after_commit(session, app)
        checkpoint()
    return result


def _attributed(row, user_id: str) -> dict:
    """The row's Amplitude event with its user: named at intake (`amplitude_event` without user_id);
    a row stored before events were named at intake holds only its source item, which is named as
    every app's events then were (the onesignal-2022 profile)."""
    if row.amplitude_event is not None:
        return {**orjson.loads(row.amplitude_event), "user_id": user_id}
    return mapping.to_amplitude(_revive(orjson.loads(row.source_item)), user_id, mapping.DEFAULT_VOCABULARY)


def _revive(item: dict) -> dict:
    """A stored, validated item as `mapping.to_amplitude` expects it (its datetime was kept as text)."""
    event = item["event"]
    if isinstance(event.get("datetime"), str):
        event["datetime"] = datetime.fromisoformat(event["datetime"])
    return item
