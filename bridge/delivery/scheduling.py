"""When draining happens: after intake commits, when a drain finds more work, and on the periodic sweep."""
from __future__ import annotations

import logging

from sqlalchemy import or_, select

from bridge.apps.models import App
from bridge.db import utcnow
from bridge.delivery.models import PENDING, OutboxEvent
from bridge.runtime import Runtime

log = logging.getLogger(__name__)

# A drain is queued at most once per app at a time; the job forgets the key as it starts.
_DRAIN_KEY_TTL = 60.0


def drain_key(app_id: str) -> str:
    return f"drain:{app_id}"


def schedule_drain(runtime: Runtime, app_id: str) -> bool:
    """Queue a drain of `app_id`'s outbox unless one is already waiting. True if queued.

    Best effort by design: the events are already committed, so if the queue is unreachable the
    periodic sweep queues the drain once it is back. Callers never fail because of the queue."""
    from bridge.delivery.pusher import drain_app

    try:
        return runtime.runner.enqueue_once(drain_key(app_id), _DRAIN_KEY_TTL, drain_app, app_id)
    except Exception as exc:  # noqa: BLE001 - Redis down or restarting
        log.warning("could not queue a drain of app %s (%s); the sweep will", app_id, exc)
        return False


def due_app_ids(runtime: Runtime) -> list[str]:
    """Apps with events due now: pending, past their next attempt, not leased, app not held."""
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
