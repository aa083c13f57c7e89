"""When draining happens: after intake commits, when a drain finds more work, and on the periodic sweep."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from sqlalchemy import or_, select

from bridge.apps.models import App
from bridge.db import utcnow
from bridge.jobs import DELIVERY
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


def schedule_drain(runtime: Runtime, app_id: str) -> bool:
    """Queue a drain of `app_id`'s outbox unless one is already waiting. True if queued.

    Best effort by design: the events are already committed, so if the queue is unreachable the
    periodic sweep queues the drain once it is back. Callers never fail because of the queue."""
    try:
        return runtime.runner.enqueue_once(DELIVERY, drain_key(app_id), _DRAIN_KEY_TTL, DRAIN_APP, app_id)
    except Exception as exc:  # noqa: BLE001 - Redis down or restarting
        log.warning("could not queue a drain of app %s (%s); the sweep will", app_id, exc)
        return False


class DrainRequests:
    """Drains asked for by the intake after each commit, without making it wait on the queue.

    With an in-process runner the drain is queued at once (it is a list append). With RQ, a thread
    of this process sends the requests, at most one round per `interval` seconds whatever the
    number of commits, so a stream of thousands of small requests costs Redis a few calls per second
    per app instead of one per request; the events wait at most `interval` longer for it."""

    def __init__(self, runtime: Runtime, interval: float = 0.05):
        self.runtime = runtime
        self.interval = interval
        self._apps: set[str] = set()
        self._sending = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def ask(self, app_ids: Iterable[str]) -> None:
        if not self.runtime.runner.remote:
            for app_id in app_ids:
                schedule_drain(self.runtime, app_id)
            return
        with self._lock:
            self._apps.update(app_ids)
            if self._thread is None or not self._thread.is_alive():  # started lazily: after gunicorn's fork
                self._thread = threading.Thread(target=self._loop, name="bridge-drain-requests", daemon=True)
                self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                apps, self._apps = self._apps, set()
                self._sending = True
            for app_id in sorted(apps):
                schedule_drain(self.runtime, app_id)
            with self._lock:
                self._sending = False
            time.sleep(self.interval)

    def idle(self) -> bool:
        """True when every drain asked for has been sent to the queue."""
        with self._lock:
            return not self._apps and not self._sending


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
