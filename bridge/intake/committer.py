"""Group commit: the events of concurrent intake requests written by one transaction.

The platform's event stream posts one event per request, thousands per second. One transaction (and
one fsync) per request would cap the intake far below that, so each web process shares its commits:

- a request validates its items on its own thread (`service.prepare`), then hands them to the process's
  `GroupCommit` and waits;
- a request arriving while no one writes becomes the writer: it takes what is queued (up to
  `MAX_GROUP_EVENTS` events, oldest first), stores it in one transaction (`service.store`) and commits
  it (the commit sends the drains the transaction asked for: one per app), then wakes every request
  of the group with its own result; the oldest request still queued is then woken to write the next
  group.

Under a light load a group is one request and nothing waits; under a heavy one the groups grow and the
commits per second stay few. Every request is answered after the commit that holds its events, so the
`202` keeps its meaning.

Overload is explicit: a request is refused at once (`Overloaded`, 503) when more than
`INTAKE_MAX_QUEUED_EVENTS` events already wait in this process, or when its events have waited
`INTAKE_MAX_WAIT_SECONDS` without a writer taking them; either way nothing of it was stored.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from bridge.errors import database_unreachable
from bridge.intake.service import IntakeResult, Prepared, store

log = logging.getLogger(__name__)

MAX_GROUP_EVENTS = 5000  # most events in one transaction: a group is a few milliseconds of database work


class Overloaded(Exception):
    """The request was refused before anything of it was stored; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class _Ticket:
    __slots__ = ("prepared", "taken", "lead", "done", "error", "wake")

    def __init__(self, prepared: Prepared):
        self.prepared = prepared
        self.taken = False  # a writer holds it: it will be answered, whatever the clock says
        self.lead = False  # its request is to write the next group
        self.done = False
        self.error: BaseException | None = None
        self.wake = threading.Event()  # set when `lead` or `done` becomes true


class GroupCommit:
    """One per web process, the owner of the intake's transactions: `submit` blocks until the
    request's events are committed (or refused).

    Only the requests concerned are woken: those of a finished group, and the next writer."""

    def __init__(self, sessions: sessionmaker[Session], *, max_queued_events: int, max_wait_seconds: float):
        self.sessions = sessions
        self.max_queued_events = max_queued_events
        self.max_wait_seconds = max_wait_seconds
        self._lock = threading.Lock()
        self._queue: deque[_Ticket] = deque()
        self._queued_events = 0
        self._writing = False  # a request is writing a group, or has been told to write the next one

    def submit(self, prepared: Prepared) -> IntakeResult:
        """Store `prepared` in a shared transaction; returns its completed result after the commit.

        Raises `Overloaded` (nothing stored), or the database error that failed its transaction."""
        ticket = _Ticket(prepared)
        deadline = time.monotonic() + self.max_wait_seconds
        with self._lock:
            if self._queued_events and self._queued_events + prepared.size > self.max_queued_events:
                raise Overloaded(f"{self._queued_events:,} events are already waiting to be stored in this process.")
            self._queue.append(ticket)
            self._queued_events += prepared.size
            if not self._writing:
                self._writing = ticket.lead = True
        while not ticket.done:
            if ticket.lead:
                ticket.lead = False
                with self._lock:
                    group = self._take()
                try:
                    self._write(group)
                finally:
                    self._hand_over()
                continue
            woken = ticket.wake.wait(None if ticket.taken else max(0.0, deadline - time.monotonic()))
            ticket.wake.clear()
            if woken or ticket.done or ticket.lead:
                continue
            with self._lock:
                if ticket.taken or ticket.lead or ticket.done:
                    continue
                self._queue.remove(ticket)
                self._queued_events -= prepared.size
            raise Overloaded(f"the events waited {self.max_wait_seconds:g} s for the database without being stored.")
        if ticket.error is not None:
            raise ticket.error
        return prepared.result

    def _hand_over(self) -> None:
        """After a group: the oldest queued request writes the next one, or no one writes."""
        with self._lock:
            if self._queue:
                head = self._queue[0]
                head.lead = True
                head.wake.set()
            else:
                self._writing = False

    def _take(self) -> list[_Ticket]:
        """The oldest queued tickets, up to MAX_GROUP_EVENTS events (always at least one). Holds the lock."""
        group: list[_Ticket] = []
        events = 0
        while self._queue and (not group or events + self._queue[0].prepared.size <= MAX_GROUP_EVENTS):
            ticket = self._queue.popleft()
            ticket.taken = True
            events += ticket.prepared.size
            group.append(ticket)
        self._queued_events -= events
        return group

    def _write(self, group: list[_Ticket]) -> None:
        """Store and commit `group` in one transaction. If that fails for a reason other than the
        database being unreachable, each request is tried again alone, so that one request's
        problem fails that request only."""
        try:
            error = self._commit([t.prepared for t in group])
            if error is not None and len(group) > 1 and not database_unreachable(error):
                log.warning("a group of %d requests failed (%s); storing them one by one", len(group), error)
                for ticket in group:
                    ticket.error = self._commit([ticket.prepared])
            else:
                for ticket in group:
                    ticket.error = error
        finally:
            for ticket in group:  # whatever happened, no request waits for this group any longer
                ticket.done = True
                ticket.wake.set()

    def _commit(self, batch: list[Prepared]) -> BaseException | None:
        """Store and commit `batch`; the error that failed it, if any (never raises). On failure the
        requests' results are left as they were before."""
        before = [(p.result.accepted, p.result.skipped, p.result.duplicates) for p in batch]
        session = self.sessions()
        try:
            store(session, batch)
            session.commit()
            return None
        except Exception as exc:  # noqa: BLE001 - handed to the requests, which answer it
            for prepared, (accepted, skipped, duplicates) in zip(batch, before, strict=True):
                prepared.result.accepted, prepared.result.skipped, prepared.result.duplicates = accepted, skipped, duplicates
            return exc
        finally:
            try:
                session.close()  # rolls back what was not committed
            except DBAPIError as exc:  # the connection died: the pool discards it
                log.warning("closing a group's session failed: %s", exc.orig)
