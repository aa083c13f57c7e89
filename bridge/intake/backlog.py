"""The bound on an app's undelivered events (`INTAKE_MAX_BACKLOG`), checked without slowing the intake.

When Amplitude refuses an app's events for long (a wrong key, an outage) its outbox grows. Past the
bound the intake answers that app 429 with Retry-After, so the platform keeps the events and retries,
instead of the bridge filling its disk; the other apps are not affected.
"""
from __future__ import annotations

import threading
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bridge.delivery.models import PENDING, OutboxEvent

CHECK_SECONDS = 5.0  # how old a process's count of an app's pending events may be


class Backlog:
    def __init__(self, sessions: sessionmaker[Session], limit: int):
        """`limit`: most pending events an app may have before its intake is refused; 0 means no bound."""
        self.sessions = sessions
        self.limit = limit
        self._counts: dict[str, tuple[float, int]] = {}  # app id → (when counted, monotonic s; pending, capped)
        self._lock = threading.Lock()

    def full(self, app_id: str) -> bool:
        """True if the app had more than `limit` pending events when last counted. One request per
        app and CHECK_SECONDS counts again (up to limit + 1 rows of an index); the others use the
        previous count meanwhile."""
        if not self.limit:
            return False
        now = time.monotonic()
        with self._lock:
            counted = self._counts.get(app_id)
            if counted is not None and now - counted[0] < CHECK_SECONDS:
                return counted[1] > self.limit
            self._counts[app_id] = (now, counted[1] if counted else 0)  # this request counts; others go on
        pending = self.pending(app_id)
        with self._lock:
            self._counts[app_id] = (time.monotonic(), pending)
        return pending > self.limit

    def pending(self, app_id: str) -> int:
        """The app's pending events, counted up to limit + 1."""
        T = OutboxEvent.__table__.c
        some = select(T.id).where(T.app_id == app_id, T.state == PENDING).limit(self.limit + 1).subquery()
        with self.sessions() as session:
            return session.scalar(select(func.count()).select_from(some))
