"""When draining happens: when a transaction that queues events for delivery commits (intake, replay, a
new Amplitude key), when a drain finds more work, and on the periodic sweep."""
from __future__ import annotations

import logging

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from bridge.apps.models import App
from bridge.db import utcnow
from bridge.jobs import DELIVERY, after_commit_once
from bridge.delivery.models import PENDING, OutboxEvent
from bridge.runtime import Runtime

log = logging.getLogger(__name__)

# A drain is queued at most once per app at a time; the job forgets the key as it starts.
_DRAIN_KEY_TTL = 60.0
# The drain job, named by its path (bridge.jobs.resolve) rather than imported: the pusher, which holds it,
# imports this module to queue its own next drains.
DRAIN_APP = "bridge.delivery.pusher.drain_app"


def drain_key(app_id: str) -> str:
    return f"drain:{app_id}"


def drain_after_commit(session: Session, app_id: str) -> None:
    """Queue a drain of `app_id`'s outbox when the transaction of `session` commits, unless one is
    already waiting then (`bridge.jobs.after_commit_once`); nothing if it rolls back. Once per app per
    commit, however often it is asked."""
    after_commit_once(session, DELIVERY, drain_key(app_id), _DRAIN_KEY_TTL, DRAIN_APP, app_id)


def schedule_drain(runtime: Runtime, app_id: str) -> bool:
    """Queue a drain of `app_id`'s outbox now, unless one is already waiting. True if queued. For events
    already committed (the sweep, a drain that finds more); a transaction uses `drain_after_commit`.

    Best effort by design: the events are already committed, so if the queue is unreachable the
    periodic sweep queues the drain once it is back. Callers never fail because of the queue."""
    try:
        return runtime.runner.enqueue_once(DELIVERY, drain_key(app_id), _DRAIN_KEY_TTL, DRAIN_APP, app_id)
    except Exception as exc:  # noqa: BLE001 - Redis down or restarting
        log.warning("could not queue a drain of app %s (%s); the sweep will", app_id, exc)
        return False


def due_app_ids(runtime: Runtime) -> list[str]:
    """Apps with events due now: pending, past their next attempt, under no live lease (SQLite's claims;
    PostgreSQL's row locks do not hide events from this read), app not held."""
    now = utcnow()
    with runtime.session() as session:
        held = select(App.id).where(App.delivery_held_until.is_not(None), App.delivery_held_until > now)
        query = (
            select(OutboxEvent.app_id)
            .where(
                OutboxEvent.state == PENDING,
                OutboxEvent.next_attempt_at <= now,
                or_(OutboxEvent.lease_expires_at.is_(None), OutboxEvent.lease_expires_at < now),
                OutboxEvent.app_id.not_in(held),
            )
            .distinct()
        )
        return list(session.scalars(query))


def schedule_due(runtime: Runtime) -> int:
    """Queue a drain for every app with due events; returns how many were queued."""
    return sum(1 for app_id in due_app_ids(runtime) if schedule_drain(runtime, app_id))
