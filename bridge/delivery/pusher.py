"""The pusher: claims due outbox events, sends them to Amplitude in batches, and records what Amplitude
answered for every single event.

Guarantees (the database is the record, not the queue):
- an event leaves the outbox as delivered only after Amplitude answered 200 to a request containing it;
- two workers never hold the same event at once;
- a worker that dies mid-batch loses nothing: its claim lapses and the events are claimed again
  (Amplitude drops the repeat by insert_id).

How a claim is held depends on the database (see `Locks` and `Leases`).
"""
from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, any_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from bridge import metrics
from bridge.amplitude import client as amp
from bridge.amplitude.regions import base_url
from bridge.apps.models import App
from bridge.catalog.service import fold_delivered
from bridge.db import is_postgresql, utcnow
from bridge.delivery.models import (
    AMPLITUDE_400,
    DAILY_QUOTA_EXCEEDED,
    DEAD,
    PAYLOAD_TOO_LARGE,
    PENDING,
    RETRY_WINDOW_EXCEEDED,
    OutboxEvent,
)
from bridge.delivery.scheduling import drain_key, schedule_drain
from bridge.delivery.throughput import count_delivered
from bridge.jobs import shutdown_requested
from bridge.runtime import Runtime, current

log = logging.getLogger(__name__)


TABLE = OutboxEvent.__table__
outbox = TABLE.c


@dataclass(slots=True)
class Claimed:
    """A claimed event: just what sending needs. Failure paths look up the rest (see `_details`)."""

    id: int
    payload: bytes


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
    return Pusher(runtime or current()).drain(app_id)


def _due(app_id: str, now: datetime, limit: int):
    return (
        select(outbox.id, outbox.amplitude_event)
        .where(outbox.app_id == app_id, outbox.state == PENDING, outbox.next_attempt_at <= now)
        .order_by(outbox.next_attempt_at, outbox.id)
        .limit(limit)
    )


def _claimed(rows) -> list[Claimed]:
    return [Claimed(event_id, amplitude_event.encode()) for event_id, amplitude_event in rows]


class Locks:
    """PostgreSQL: a claim is the row locks of an open transaction (SELECT … FOR UPDATE SKIP LOCKED).

    Nothing is written to claim; the outcome is written and committed in the same transaction. If the
    worker dies, PostgreSQL ends the transaction and the rows are free again."""

    def claim(self, session: Session, app_id: str, limit: int) -> list[Claimed]:
        now = utcnow()
        return _claimed(session.execute(_due(app_id, now, limit).with_for_update(skip_locked=True)))

    def claimable(self, session: Session, app_id: str, limit: int) -> int:
        """How many of the app's due events (up to `limit`) no other worker holds. Rolls back the locks it takes."""
        free = _due(app_id, utcnow(), limit).with_only_columns(outbox.id).with_for_update(skip_locked=True).subquery()
        count = session.scalar(select(func.count()).select_from(free))
        session.rollback()
        return count

    def mine(self, ids: list[int]):
        return outbox.id == any_(bindparam("ids", ids, type_=ARRAY(BigInteger)))  # one array parameter

    def update_free(self, session: Session, conditions: list, values: dict[str, object]) -> None:
        """Update rows matching `conditions` that no other worker holds (skipped, never waited for)."""
        free = select(outbox.id).where(*conditions).with_for_update(skip_locked=True)
        session.execute(update(TABLE).where(outbox.id.in_(free.scalar_subquery())).values(**values))

    def checkpoint(self, session: Session) -> None:
        session.flush()  # keep the transaction (and the locks) until the whole batch is recorded

    def held(self, session: Session, events: list[Claimed]) -> list[Claimed]:
        return events  # locked rows: nothing can delete them under this worker

    def unclaim(self) -> dict[str, object]:
        return {}


class Leases:
    """SQLite (one writer at a time, no row locks): a claim writes a lease (owner, expiry) on the rows.

    A worker that dies leaves its lease to expire (DELIVERY_LEASE_SECONDS); every outcome is written
    only where the lease is still this worker's."""

    def __init__(self, owner: str, seconds: int):
        self.owner = owner
        self.seconds = seconds

    def claim(self, session: Session, app_id: str, limit: int) -> list[Claimed]:
        now = utcnow()
        due = (select(outbox.id).where(outbox.app_id == app_id, outbox.state == PENDING, outbox.next_attempt_at <= now,
                                  or_(outbox.lease_expires_at.is_(None), outbox.lease_expires_at < now))
               .order_by(outbox.next_attempt_at, outbox.id).limit(limit))
        rows = session.execute(
            update(TABLE).where(outbox.id.in_(due.scalar_subquery()))
            .values(lease_owner=self.owner, lease_expires_at=now + timedelta(seconds=self.seconds))
            .returning(outbox.id, outbox.amplitude_event)
        )
        claimed = sorted(_claimed(rows), key=lambda c: c.id)  # RETURNING has no order
        session.commit()
        return claimed

    def claimable(self, session: Session, app_id: str, limit: int) -> int:
        """How many of the app's due events (up to `limit`) no live lease holds."""
        now = utcnow()
        free = (select(outbox.id).where(outbox.app_id == app_id, outbox.state == PENDING, outbox.next_attempt_at <= now,
                                        or_(outbox.lease_expires_at.is_(None), outbox.lease_expires_at < now))
                .limit(limit).subquery())
        return session.scalar(select(func.count()).select_from(free))

    def mine(self, ids: list[int]):
        return outbox.id.in_(ids) & (outbox.lease_owner == self.owner)

    def update_free(self, session: Session, conditions: list, values: dict[str, object]) -> None:
        """Update rows matching `conditions` that are not leased by a live worker."""
        free = or_(outbox.lease_owner.is_(None), outbox.lease_owner == self.owner, outbox.lease_expires_at < utcnow())
        session.execute(update(TABLE).where(*conditions, free).values(**values))

    def checkpoint(self, session: Session) -> None:
        session.commit()  # SQLite has one writer: never hold it across an HTTP request

    def held(self, session: Session, events: list[Claimed]) -> list[Claimed]:
        """The events whose rows are still here under this worker's lease: one erased meanwhile
        (bridge.privacy) is not sent again."""
        ids = [e.id for e in events]
        here = {row_id for start in range(0, len(ids), 5000)
                for row_id in session.scalars(select(outbox.id).where(self.mine(ids[start:start + 5000])))}
        return [e for e in events if e.id in here]

    def unclaim(self) -> dict[str, object]:
        return {"lease_owner": None, "lease_expires_at": None}


class Pusher:
    def __init__(self, runtime: Runtime, *, rng: random.Random | None = None, clock=None,
                 wait=shutdown_requested.wait):
        """`clock` and `wait(seconds)` are time.monotonic and an interruptible sleep; tests replace them.
        time.monotonic is looked up here, not at import, so a test's frozen clock (freezegun) applies."""
        self.runtime = runtime
        self.settings = runtime.settings
        self.rng = rng or random.Random()
        self.clock = clock or time.monotonic
        self.wait = wait
        owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        with runtime.session() as session:
            postgres = is_postgresql(session)
        self.claims = Locks() if postgres else Leases(owner, self.settings.delivery_lease_seconds)

    def drain(self, app_id: str) -> DrainReport:
        """Deliver `app_id`'s due events in full batches until none are due, the time budget ends, or
        shutdown. A partial batch first lingers (see `_linger`)."""
        report = DrainReport()
        self._linger(app_id)
        # From here on, events committed after this claim need a drain of their own: let them ask.
        self.runtime.runner.forget(drain_key(app_id))
        deadline = self.clock() + self.settings.delivery_drain_budget_seconds
        while not shutdown_requested.is_set():
            with self.runtime.job_session() as session:
                app = session.get(App, app_id)
                if app is None or _held(app):
                    report.held = app is not None
                    return report
                session.expunge(app)
                batch = self.claims.claim(session, app_id, self.settings.delivery_batch_size)
                if not batch:
                    return report
                if len(batch) == self.settings.delivery_batch_size:
                    schedule_drain(self.runtime, app_id)  # more is waiting: let an idle worker join in
                report.batches += 1
                before = _tally(report)
                keep_going = self._deliver(session, app, batch, report)
                session.commit()
                _count(app_id, before, _tally(report))
            if not keep_going or len(batch) < self.settings.delivery_batch_size:
                # A partial batch took all that was due; what came in since asked for a drain of its
                # own, which lingers for it instead of sending it in dribs now.
                return report
            if self.clock() >= deadline:
                # Budget spent: continue in a fresh job, queued behind the drains other apps asked for
                # meanwhile, so a backlog holds up another app's events for about one budget.
                schedule_drain(self.runtime, app_id)
                return report
        return report

    def _linger(self, app_id: str) -> None:
        """Wait, once per drain, until the app's due events fill a batch or the oldest of them has been
        due for DELIVERY_LINGER_SECONDS, whichever comes first: a stream of single events then leaves in
        requests of hundreds of events, as Amplitude asks of its clients, instead of a request per event.
        Only fresh events linger: when a retried event is due, or another worker holds due events of
        this app, the drain goes on at once."""
        linger = self.settings.delivery_linger_seconds
        if linger <= 0:
            return
        due = (select(outbox.next_attempt_at, outbox.attempts)
               .where(outbox.app_id == app_id, outbox.state == PENDING, outbox.next_attempt_at <= utcnow())
               .order_by(outbox.next_attempt_at, outbox.id).limit(self.settings.delivery_batch_size).subquery())
        with self.runtime.session() as session:
            count, oldest, retries = session.execute(
                select(func.count(), func.min(due.c.next_attempt_at), func.max(due.c.attempts))).one()
            free = self.claims.claimable(session, app_id, self.settings.delivery_batch_size) if count else 0
        if count == 0 or count >= self.settings.delivery_batch_size or retries or free < count:
            return
        remaining = linger - (utcnow() - oldest).total_seconds()
        if remaining > 0:
            self.wait(min(remaining, linger))

    # -- sending --------------------------------------------------------------------------------

    def _deliver(self, session: Session, app: App, batch: list[Claimed], report: DrainReport) -> bool:
        """Send `batch`, splitting as Amplitude's answers require, recording each outcome in `session`.
        False if the app should stop draining for now."""
        url = base_url(app.region, self.settings.amplitude_base_url)
        work = deque(self._split_by_size(app.amplitude_api_key, batch))
        keep_going = True
        while work:
            chunk = self.claims.held(session, work.popleft())
            if not chunk:
                continue
            answer = self.runtime.amplitude.send(url, app.amplitude_api_key, [c.payload for c in chunk])
            metrics.AMPLITUDE_REQUESTS.labels(app.id, metrics.amplitude_answer(answer.status)).inc()
            delivered_before = report.delivered
            keep_going, more = self._record(session, app, chunk, answer, report)
            # The app's counters are written with the outcome they count: on SQLite each request's outcome
            # commits on its own, and a delivered event must never be gone from the outbox yet uncounted.
            self._update_app(session, app, report.delivered - delivered_before,
                             None if answer.outcome == amp.OK else answer.error, report.held)
            self.claims.checkpoint(session)
            if not keep_going:
                self._mark(session, [e for c in work for e in c])  # not sent: due again at once
                break
            work.extendleft(reversed(more))
        return keep_going

    def _split_by_size(self, api_key: str, batch: list[Claimed]) -> list[list[Claimed]]:
        """Cut `batch` into requests under the size limit (Amplitude: < 1 MB per HTTP V2 request)."""
        head, tail = amp.envelope(api_key)
        budget = self.settings.delivery_max_request_bytes - len(head) - len(tail) - 1
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
        if answer.outcome == amp.OK:
            self._delete(session, app.id, chunk)
            report.delivered += len(chunk)
            return True, []
        if answer.outcome == amp.INVALID_KEY:
            report.held = True
            self._mark(session, chunk)  # nothing is dropped: the hold is on the app, not the events
            log.warning("app %s: Amplitude rejected the API key; delivery held", app.id)
            return False, []
        if answer.outcome == amp.TOO_LARGE:
            if len(chunk) == 1:
                self._dead(session, chunk, PAYLOAD_TOO_LARGE, answer.error, report)
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
        if answer.silenced_devices:
            details = _details(session, chunk)
            for i, event in enumerate(chunk):
                if event.id in details and details[event.id].device_id in answer.silenced_devices:
                    refused.setdefault(i, "silenced_device")
        if not refused:
            if len(chunk) == 1:
                self._dead(session, chunk, AMPLITUDE_400, answer.error, report)
                return []
            return _halves(chunk)
        by_reason: dict[str, list[Claimed]] = {}
        for i, why in refused.items():
            by_reason.setdefault(why, []).append(chunk[i])
        for why, events in by_reason.items():
            self._dead(session, events, AMPLITUDE_400, f"{answer.error} ({why})", report)
        rest = [e for i, e in enumerate(chunk) if i not in refused]
        return [rest] if rest else []

    def _throttled(self, session: Session, app_id: str, chunk: list[Claimed], answer: amp.Answer,
                   report: DrainReport) -> tuple[bool, list[list[Claimed]]]:
        """Record daily-quota drops, hold throttled users/devices ~30 s, send everyone else now."""
        details = _details(session, chunk)
        chunk_here = [e for e in chunk if e.id in details]
        quota = [e for e in chunk_here if details[e.id].user_id in answer.quota_users
                 or details[e.id].device_id in answer.quota_devices]
        if quota:
            self._dead(session, quota, DAILY_QUOTA_EXCEEDED, answer.error, report)
        quota_ids = {e.id for e in quota}
        held_users, held_devices = answer.throttled_users, answer.throttled_devices
        named = {chunk[i].id for i in answer.throttled_events if 0 <= i < len(chunk)}
        held = [e for e in chunk_here if e.id not in quota_ids
                and (e.id in named or details[e.id].user_id in held_users or details[e.id].device_id in held_devices)]
        held_ids = {e.id for e in held}
        rest = [e for e in chunk if e.id not in quota_ids and e.id not in held_ids]
        if not held and not quota:
            self._retry_later(session, chunk, answer.error, report)  # a 429 naming no one: back off
            return False, []
        pause_until = utcnow() + timedelta(seconds=self.settings.delivery_throttle_pause_seconds)
        self._mark(session, held, next_attempt_at=pause_until)
        self._pause_others(session, app_id, held_users, held_devices, pause_until)
        report.throttled += len(held)
        return True, [rest] if rest else []

    # -- recording outcomes ---------------------------------------------------------------------

    def _mark(self, session: Session, events: list[Claimed], **values) -> None:
        """Update claimed events and give up the claim on them (due again at once unless `values` say)."""
        ids = [e.id for e in events]
        values.setdefault("next_attempt_at", utcnow())
        for start in range(0, len(ids), 5000):
            session.execute(update(TABLE).where(self.claims.mine(ids[start:start + 5000]))
                            .values(**self.claims.unclaim(), **values))

    def _delete(self, session: Session, app_id: str, events: list[Claimed]) -> None:
        """Delete delivered events, folding what the message catalog did to them into the app's totals
        (the stats count them from the outbox until then)."""
        ids = [e.id for e in events]
        for start in range(0, len(ids), 5000):
            deleted = session.execute(delete(TABLE).where(self.claims.mine(ids[start:start + 5000]))
                                      .returning(outbox.message_details))
            fold_delivered(session, app_id, deleted.scalars())

    def _dead(self, session: Session, events: list[Claimed], reason: str, error: str, report: DrainReport) -> None:
        self._mark(session, events, state=DEAD, reason=reason, last_error=error[:2000])
        report.dead += len(events)
        report.reasons[reason] = report.reasons.get(reason, 0) + len(events)
        log.warning("%d event(s) dead-lettered: %s: %s", len(events), reason, error)

    def _pause_others(self, session: Session, app_id: str, users: set[str], devices: set[str],
                      until: datetime) -> None:
        """Throttled users' and devices' other pending events wait too, instead of drawing more 429s."""
        targets = []
        if users:
            targets.append(outbox.user_id.in_(sorted(users)))
        if devices:
            targets.append(outbox.device_id.in_(sorted(devices)))
        if targets:
            self.claims.update_free(session, [outbox.app_id == app_id, outbox.state == PENDING,
                                              outbox.next_attempt_at < until, or_(*targets)], {"next_attempt_at": until})

    def _retry_later(self, session: Session, events: list[Claimed], error: str, report: DrainReport) -> None:
        """A failure that may pass (5xx, timeout, connection): back off, or dead-letter past the window."""
        now = utcnow()
        window = timedelta(seconds=self.settings.delivery_retry_window_seconds)
        details = _details(session, events)
        events = [e for e in events if e.id in details]
        expired = [e for e in events if details[e.id].failing_since is not None
                   and now - details[e.id].failing_since >= window]
        if expired:
            self._dead(session, expired, RETRY_WINDOW_EXCEEDED, error, report)
        expired_ids = {e.id for e in expired}
        groups: dict[tuple[int, datetime], list[Claimed]] = {}
        for e in events:
            if e.id not in expired_ids:
                groups.setdefault((details[e.id].attempts, details[e.id].failing_since or now), []).append(e)
        for (attempts, since), group in groups.items():
            self._mark(session, group, attempts=attempts + 1, failing_since=since, last_error=error[:2000],
                       next_attempt_at=now + timedelta(seconds=self.backoff(attempts + 1)))
            report.retrying += len(group)
        log.warning("%d event(s) will be retried: %s", len(events) - len(expired), error)

    def _update_app(self, session: Session, app: App, delivered: int, error: str | None, held: bool) -> None:
        """One write to the app row per Amplitude request, in the transaction recording its outcome (on
        PostgreSQL the row's lock is held only until the batch commits)."""
        now = utcnow()
        values: dict[str, object] = {}
        if delivered:
            values.update(delivered_total=App.delivered_total + delivered, last_delivered_at=now)
        if error:
            values.update(last_delivery_error=error[:2000], last_delivery_error_at=now)
        if held:
            values.update(delivery_held_reason=f"Amplitude rejected the API key: {error}",
                          delivery_held_until=now + timedelta(seconds=self.settings.delivery_invalid_key_pause_seconds))
        if values:
            session.execute(update(App).where(App.id == app.id).values(**values))
        if delivered:  # after the app's row, whose lock orders the workers sending this app's events
            count_delivered(session, app.id, delivered, now)

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number `attempt` (1, 2, ...): exponential, capped, with jitter in [d/2, d]."""
        ceiling = min(self.settings.delivery_backoff_cap_seconds, self.settings.delivery_backoff_base_seconds * 2 ** (attempt - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)


def _details(session: Session, events: list[Claimed]) -> dict[int, object]:
    """user_id, device_id, attempts and failing_since of claimed events, for the failure paths. An event
    whose row is gone (erased under a lease on SQLite, bridge.privacy) is left out."""
    ids = [e.id for e in events]
    found: dict[int, object] = {}
    for start in range(0, len(ids), 5000):
        query = (select(outbox.id, outbox.user_id, outbox.device_id, outbox.attempts, outbox.failing_since)
                 .where(outbox.id.in_(ids[start:start + 5000])))
        found.update({row.id: row for row in session.execute(query)})
    return found


def _tally(report: DrainReport) -> dict[tuple[str, str], int]:
    """What `report` has counted so far, as the metrics' (metric, label) → events."""
    tally = {("events", outcome): getattr(report, outcome) for outcome in ("delivered", "retrying", "throttled", "dead")}
    tally.update({("dead", reason): count for reason, count in report.reasons.items()})
    return tally


def _count(app_id: str, before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]) -> None:
    """Count what a committed batch recorded (`after` less `before`): bridge_delivery_events_total by
    outcome, bridge_dead_letters_total by reason."""
    for (kind, label), total in after.items():
        if added := total - before.get((kind, label), 0):
            counter = metrics.DELIVERY_EVENTS if kind == "events" else metrics.DEAD_LETTERS
            counter.labels(app_id, label).inc(added)


def _held(app: App) -> bool:
    return app.delivery_held_until is not None and app.delivery_held_until > utcnow()


def _halves(chunk: list[Claimed]) -> list[list[Claimed]]:
    middle = len(chunk) // 2
    return [chunk[:middle], chunk[middle:]]
