"""The pusher: claims due outbox events under a lease, sends them to Amplitude in batches, and records
what Amplitude answered for every single event.

Guarantees (the database is the record, not the queue):
- an event is only ever marked delivered after Amplitude answered 200 for a request containing it;
- a claim is a lease: a worker that dies mid-batch simply lets it expire and the event is claimed
  again (Amplitude drops the repeat by insert_id);
- two workers never hold the same event at once (row locks with SKIP LOCKED on PostgreSQL; SQLite
  serializes writers).
"""
from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from bridge.amplitude import client as amp
from bridge.apps.models import App
from bridge.apps.service import amplitude_base_url
from bridge.db import is_postgresql, utcnow
from bridge.delivery.models import DEAD, DELIVERED, PENDING, OutboxEvent
from bridge.delivery.scheduling import drain_key, schedule_drain
from bridge.runtime import Runtime, current

log = logging.getLogger(__name__)

# Set on SIGTERM by `bridge worker`: drains stop between batches and hand the rest back.
shutdown_requested = threading.Event()

T = OutboxEvent.__table__.c


@dataclass
class Claimed:
    id: int
    payload: bytes
    user_id: str | None
    device_id: str | None
    attempts: int
    failing_since: datetime | None


@dataclass
class DrainReport:
    batches: int = 0
    delivered: int = 0
    dead: int = 0
    retrying: int = 0
    throttled: int = 0
    held: bool = False
    reasons: dict[str, int] = field(default_factory=dict)


def drain_app(app_id: str, runtime: Runtime | None = None) -> DrainReport:
    """Job: deliver `app_id`'s due events until none are due, the time budget ends, or shutdown."""
    runtime = runtime or current()
    runtime.runner.forget(drain_key(app_id))
    return Pusher(runtime).drain(app_id)


class Pusher:
    def __init__(self, runtime: Runtime, *, rng: random.Random | None = None, clock=time.monotonic):
        self.runtime = runtime
        self.settings = runtime.settings
        self.rng = rng or random.Random()
        self.clock = clock
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def drain(self, app_id: str) -> DrainReport:
        report = DrainReport()
        deadline = self.clock() + self.settings.drain_budget_seconds
        while not shutdown_requested.is_set():
            with self.runtime.session() as session:
                app = session.get(App, app_id)
                if app is None or _held(app):
                    report.held = app is not None
                    return report
                batch = self._claim(session, app_id)
            if not batch:
                return report
            if len(batch) == self.settings.batch_size:
                schedule_drain(self.runtime, app_id)  # more is waiting: let an idle worker join in
            report.batches += 1
            if not self._deliver(app, batch, report):
                return report
            if self.clock() >= deadline:
                schedule_drain(self.runtime, app_id)  # budget spent: continue in a fresh job
                return report
        return report

    # -- claiming -------------------------------------------------------------------------------

    def _claim(self, session: Session, app_id: str) -> list[Claimed]:
        now = utcnow()
        due = (
            select(T.id)
            .where(
                T.app_id == app_id,
                T.state == PENDING,
                T.next_attempt_at <= now,
                or_(T.lease_expires_at.is_(None), T.lease_expires_at < now),
            )
            .order_by(T.next_attempt_at, T.id)
            .limit(self.settings.batch_size)
        )
        if is_postgresql(session):
            due = due.with_for_update(skip_locked=True)
        stmt = (
            update(OutboxEvent.__table__)
            .where(T.id.in_(due.scalar_subquery()))
            .values(lease_owner=self.owner, lease_expires_at=now + timedelta(seconds=self.settings.lease_seconds))
            .returning(T.id, T.payload, T.user_id, T.device_id, T.attempts, T.failing_since)
        )
        rows = session.execute(stmt).all()
        session.commit()
        claimed = [Claimed(r.id, r.payload.encode(), r.user_id, r.device_id, r.attempts, r.failing_since) for r in rows]
        claimed.sort(key=lambda c: c.id)
        return claimed

    # -- sending --------------------------------------------------------------------------------

    def _deliver(self, app: App, batch: list[Claimed], report: DrainReport) -> bool:
        """Send `batch`, splitting as Amplitude's answers require. False if the app should stop draining."""
        base_url = amplitude_base_url(app, self.settings.amplitude_base_url)
        work = deque(self._split_by_size(app.amplitude_api_key, batch))
        while work:
            chunk = work.popleft()
            answer = self.runtime.amplitude.send(base_url, app.amplitude_api_key, [c.payload for c in chunk])
            with self.runtime.session() as session:
                keep_going, more = self._record(session, app, chunk, answer, report)
                session.commit()
            if not keep_going:
                self._release(work)
                return False
            work.extendleft(reversed(more))
        return True

    def _split_by_size(self, api_key: str, batch: list[Claimed]) -> list[list[Claimed]]:
        """Cut `batch` into requests under the size limit (Amplitude: < 1 MB per HTTP V2 request)."""
        head, tail = amp.envelope(api_key)
        budget = self.settings.max_request_bytes - len(head) - len(tail) - 1
        chunks: list[list[Claimed]] = [[]]
        size = 0
        for event in batch:
            cost = len(event.payload) + 1
            if chunks[-1] and size + cost > budget:
                chunks.append([])
                size = 0
            chunks[-1].append(event)
            size += cost
        return [c for c in chunks if c]

    def _record(self, session: Session, app: App, chunk: list[Claimed], answer: amp.Answer,
                report: DrainReport) -> tuple[bool, list[list[Claimed]]]:
        """Apply Amplitude's answer to `chunk`. Returns (keep draining?, chunks to send now)."""
        now = utcnow()
        if answer.outcome == amp.OK:
            self._mark(session, chunk, state=DELIVERED, delivered_at=now, last_error=None)
            report.delivered += len(chunk)
            session.execute(update(App).where(App.id == app.id).values(last_delivered_at=now))
            return True, []
        _note_error(session, app.id, answer.error, now)
        if answer.outcome == amp.INVALID_KEY:
            hold_until = now + timedelta(seconds=self.settings.invalid_key_pause_seconds)
            session.execute(update(App).where(App.id == app.id).values(
                delivery_held_reason=f"Amplitude rejected the API key: {answer.error}", delivery_held_until=hold_until))
            self._hand_back(session, chunk, next_attempt_at=now)  # the hold is on the app, not the events
            report.held = True
            log.warning("app %s: Amplitude rejected the API key; delivery held until %s", app.id, hold_until)
            return False, []
        if answer.outcome == amp.TOO_LARGE:
            if len(chunk) == 1:
                self._dead(session, chunk, "payload_too_large", answer.error, report)
                return True, []
            return True, _halves(chunk)
        if answer.outcome == amp.BAD_REQUEST:
            return True, self._bad_request(session, chunk, answer, report)
        if answer.outcome == amp.THROTTLED:
            return self._throttled(session, app.id, chunk, answer, report)
        self._retry_later(session, chunk, answer.error, report)
        return False, []

    def _bad_request(self, session: Session, chunk: list[Claimed], answer: amp.Answer,
                     report: DrainReport) -> list[list[Claimed]]:
        """Drop exactly the events Amplitude named; resend the rest. If it named none, bisect to find them."""
        refused = {i: why for i, why in answer.invalid_events.items() if 0 <= i < len(chunk)}
        for i, event in enumerate(chunk):
            if event.device_id in answer.silenced_devices:
                refused.setdefault(i, "silenced_device")
        if not refused:
            if len(chunk) == 1:
                self._dead(session, chunk, "amplitude_400", answer.error, report)
                return []
            return _halves(chunk)
        by_reason: dict[str, list[Claimed]] = {}
        for i, why in refused.items():
            by_reason.setdefault(why, []).append(chunk[i])
        for why, events in by_reason.items():
            self._dead(session, events, "amplitude_400", f"{answer.error} ({why})", report)
        rest = [e for i, e in enumerate(chunk) if i not in refused]
        return [rest] if rest else []

    def _throttled(self, session: Session, app_id: str, chunk: list[Claimed], answer: amp.Answer,
                   report: DrainReport) -> tuple[bool, list[list[Claimed]]]:
        """Record daily-quota drops, hold throttled users/devices ~30 s, send everyone else now."""
        quota = [e for e in chunk if e.user_id in answer.quota_users or e.device_id in answer.quota_devices]
        if quota:
            self._dead(session, quota, "daily_quota_exceeded", answer.error, report)
        quota_ids = {e.id for e in quota}
        held_users, held_devices = answer.throttled_users, answer.throttled_devices
        named = {chunk[i].id for i in answer.throttled_events if 0 <= i < len(chunk)}
        held = [e for e in chunk if e.id not in quota_ids
                and (e.id in named or e.user_id in held_users or e.device_id in held_devices)]
        held_ids = {e.id for e in held}
        rest = [e for e in chunk if e.id not in quota_ids and e.id not in held_ids]
        if not held and not quota:
            self._retry_later(session, chunk, answer.error, report)  # a 429 naming no one: back off
            return False, []
        pause_until = utcnow() + timedelta(seconds=self.settings.throttle_pause_seconds)
        self._hand_back(session, held, next_attempt_at=pause_until)
        self._pause_others(session, app_id, held_users, held_devices, pause_until)
        report.throttled += len(held)
        return True, [rest] if rest else []

    # -- recording outcomes ---------------------------------------------------------------------

    def _mark(self, session: Session, events: list[Claimed], **values) -> None:
        ids = [e.id for e in events]
        for start in range(0, len(ids), 5000):
            session.execute(
                update(OutboxEvent.__table__)
                .where(T.id.in_(ids[start : start + 5000]), T.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None, **values)
            )

    def _dead(self, session: Session, events: list[Claimed], reason: str, error: str, report: DrainReport) -> None:
        self._mark(session, events, state=DEAD, reason=reason, last_error=error[:2000])
        report.dead += len(events)
        report.reasons[reason] = report.reasons.get(reason, 0) + len(events)
        log.warning("%d event(s) dead-lettered: %s: %s", len(events), reason, error)

    def _hand_back(self, session: Session, events: list[Claimed], *, next_attempt_at: datetime) -> None:
        """Release without counting an attempt (held or throttled: not the events' fault)."""
        if events:
            self._mark(session, events, next_attempt_at=next_attempt_at)

    def _release(self, chunks) -> None:
        """Release leases on claimed events this drain will not send now (they are due again at once)."""
        events = [e for chunk in chunks for e in chunk]
        if events:
            with self.runtime.session() as session:
                self._mark(session, events, next_attempt_at=utcnow())
                session.commit()

    def _pause_others(self, session: Session, app_id: str, users: set[str], devices: set[str],
                      until: datetime) -> None:
        """Throttled users' and devices' other pending events wait too, instead of drawing more 429s."""
        targets = []
        if users:
            targets.append(T.user_id.in_(sorted(users)))
        if devices:
            targets.append(T.device_id.in_(sorted(devices)))
        if not targets:
            return
        session.execute(
            update(OutboxEvent.__table__)
            .where(T.app_id == app_id, T.state == PENDING, T.next_attempt_at < until, or_(*targets),
                   or_(T.lease_owner.is_(None), T.lease_expires_at < utcnow()))
            .values(next_attempt_at=until)
        )

    def _retry_later(self, session: Session, events: list[Claimed], error: str, report: DrainReport) -> None:
        """A failure that may pass (5xx, timeout, connection): back off, or dead-letter past the window."""
        now = utcnow()
        window = timedelta(seconds=self.settings.retry_window_seconds)
        expired = [e for e in events if e.failing_since is not None and now - e.failing_since >= window]
        if expired:
            self._dead(session, expired, "retry_window_exceeded", error, report)
        by_attempts: dict[tuple[int, datetime], list[Claimed]] = {}
        for e in events:
            if e not in expired:
                by_attempts.setdefault((e.attempts, e.failing_since or now), []).append(e)
        for (attempts, since), group in by_attempts.items():
            self._mark(session, group, attempts=attempts + 1, failing_since=since, last_error=error[:2000],
                       next_attempt_at=now + timedelta(seconds=self.backoff(attempts + 1)))
            report.retrying += len(group)
        log.warning("%d event(s) will be retried: %s", len(events) - len(expired), error)

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number `attempt` (1, 2, ...): exponential, capped, with jitter in [d/2, d]."""
        ceiling = min(self.settings.backoff_cap_seconds, self.settings.backoff_base_seconds * 2 ** (attempt - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)


def _held(app: App) -> bool:
    return app.delivery_held_until is not None and app.delivery_held_until > utcnow()


def _note_error(session: Session, app_id: str, error: str, now: datetime) -> None:
    session.execute(update(App).where(App.id == app_id).values(last_delivery_error=error[:2000], last_delivery_error_at=now))


def _halves(chunk: list[Claimed]) -> list[list[Claimed]]:
    middle = len(chunk) // 2
    return [chunk[:middle], chunk[middle:]]
