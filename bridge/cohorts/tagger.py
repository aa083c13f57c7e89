"""The tagger: sends each app's pending cohort tags to its messaging platform, within the platform's limits.

One job per app at a time (`tag_app`, on the cohorts queue), holding the app's sender lease
(`apps.platform_sender_until`), so the app's rate is paced in one place. A job works in rounds until
nothing is due, its time budget (PLATFORM_DRAIN_BUDGET_SECONDS) ends, or the worker is asked to stop:

1. claim up to a round of due users (`platform_users.due_at` <= now), pushing their `due_at` a lease
   ahead (committed), so no other run sends for them while their requests are in flight;
2. send one request per user carrying all of that user's pending tags (several cohorts' changes
   coalesce; at most the platform's `max_tags_per_request`), from a pool of threads, at no more than
   the app's rate (`platform_rate_per_second`, else the platform's default) in any second;
3. record every outcome in one transaction, and make each user due again no sooner than the
   platform's per-user interval after their request was sent.

Outcomes (`bridge.platforms.base.TagOutcome`): applied → `synced` (unless a newer wanted value came
meanwhile: it stays pending); not on the platform → `not_on_platform`, not retried until the user's
membership changes again; conflict, rejected → `failed` with the platform's message; throttled (429)
→ the whole app waits for `Retry-After`; retry (5xx, timeouts, resets) → backoff with jitter, and
after PLATFORM_RETRY_WINDOW_SECONDS of failing, `failed` as `retry_window_exceeded` (`bridge cohorts
platform-replay` sends them again).

Every request sets tags to the values wanted when it was claimed, so a request sent again after a
worker died (its lease ran out) changes nothing that the first one did not.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
from sqlalchemy import String, and_, bindparam, case, exists, func, or_, select, update
from sqlalchemy.orm import Session

from bridge import metrics, platforms
from bridge.apps.models import App
from bridge.cohorts.models import (TAG_FAILED, TAG_NOT_ON_PLATFORM, TAG_PENDING, TAG_SYNCED, CohortPlatformSync,
                                   PlatformTag, PlatformUser)
from bridge.db import UtcDateTime, is_postgresql, utcnow
from bridge.jobs import COHORTS, after_commit_once, shutdown_requested
from bridge.platforms.base import TagOutcome
from bridge.runtime import Runtime, current

log = logging.getLogger(__name__)

tags = PlatformTag.__table__.c
users = PlatformUser.__table__.c
syncs = CohortPlatformSync.__table__.c

TAG_APP = "bridge.cohorts.tagger.tag_app"
_KEY_TTL = 60.0
# A sender renews its app's lease every round, and a round lasts at most about one request's timeout
# (plus its pacing): a lease of 3 timeouts (at least 10 s) outlives any live sender's round, and frees the
# app, and the users its dead sender had claimed, soon after that sender was killed.
def lease(settings) -> timedelta:
    return timedelta(seconds=max(10.0, 3 * settings.platform_timeout_seconds))


ROUND_SECONDS = 0.25  # a round claims about this many seconds' worth of the app's rate
# Requests are spaced for 97% of the app's rate: they arrive with the network's jitter, and a window of
# exactly one second holds one request more than evenly spaced ones at the full rate would fill.
PACE_SHARE = 0.97
SPACING_MARGIN = timedelta(milliseconds=50)  # on top of the per-user interval, for the network's jitter
LINGER = 1.5  # a user due again within this many seconds (the per-user interval) is waited for


def tagger_job_key(app_id: str) -> str:
    """The key that keeps one tagger job of the app queued at a time."""
    return f"tag:{app_id}"


def tag_after_commit(session: Session, app_id: str) -> None:
    """Queue the app's tagger when the transaction of `session` commits (once per commit); nothing if
    it rolls back. The periodic sweep queues it too, for anything this misses."""
    after_commit_once(session, COHORTS, tagger_job_key(app_id), _KEY_TTL, TAG_APP, app_id)


def schedule_tagging(runtime: Runtime, app_id: str) -> bool:
    """Queue the app's tagger now, unless it is already waiting; best effort (the sweep retries)."""
    try:
        return runtime.runner.enqueue_once(COHORTS, tagger_job_key(app_id), _KEY_TTL, TAG_APP, app_id)
    except Exception as exc:  # noqa: BLE001 - Redis down: the sweep queues it later
        log.warning("could not queue the tagger of app %s (%s); the sweep will", app_id, exc)
        return False


def schedule_due_tagging(runtime: Runtime) -> int:
    """Queue the tagger of every connected, unheld app with users due now; returns how many. Used by
    the periodic sweep."""
    now = utcnow()
    with runtime.session() as session:
        app_ids = list(session.scalars(
            select(App.id).where(
                App.platform.is_not(None),
                or_(App.platform_held_until.is_(None), App.platform_held_until <= now),
                or_(App.platform_sender_until.is_(None), App.platform_sender_until <= now),
                exists(select(users.external_id).where(users.app_id == App.id, users.due_at <= now)),
            )
        ))
    return sum(1 for app_id in app_ids if schedule_tagging(runtime, app_id))


def tag_app(app_id: str, runtime: Runtime | None = None) -> TagReport:
    """Job: send the app's due tags (see the module's docstring). Returns what it did."""
    runtime = runtime or current()
    runtime.runner.forget(tagger_job_key(app_id))
    return Tagger(runtime).run(app_id)


@dataclass
class TagReport:
    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    held: bool = False
    busy: bool = False  # another sender holds the app


@dataclass
class _Claim:
    external_id: str
    tags: dict[str, tuple[str, int]]  # tag key -> (value, computed_time) as wanted at the claim
    outcome: TagOutcome | None = None
    sent_at: datetime | None = None


class Pacer:
    """At most `rate` calls of `wait()` per second, spread evenly, across threads."""

    def __init__(self, rate: float, clock=time.monotonic, sleep=time.sleep):
        self.interval = 1.0 / rate
        self.clock, self.sleep = clock, sleep
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = self.clock()
            slot = max(now, self.next)
            self.next = slot + self.interval
        if slot > now:
            self.sleep(slot - now)


class Tagger:
    def __init__(self, runtime: Runtime, *, rng: random.Random | None = None, clock=time.monotonic,
                 linger: float = LINGER):
        """`clock`: time.monotonic, for the time budget; `linger`: how long a run waits for a user due
        again soon (tests that move time by hand set 0)."""
        self.runtime = runtime
        self.settings = runtime.settings
        self.rng = rng or random.Random()
        self.clock = clock
        self.linger = linger

    def run(self, app_id: str) -> TagReport:
        report = TagReport()
        app = self._lease(app_id)
        if app is None:
            report.busy = True
            return report
        try:
            if app.platform_held_until is not None and app.platform_held_until > utcnow():
                report.held = True
                return report
            self._send_due(app, report)
        finally:
            self._release(app_id)
        if report.requests:
            log.info("tagger %s: %d request(s) %s", app_id, report.requests, report.outcomes)
        return report

    # -- the app's sender lease ------------------------------------------------------------------

    def _lease(self, app_id: str) -> App | None:
        """Take the app's sender lease (committed); the app, or None if it is not connected or another
        sender holds it."""
        now = utcnow()
        with self.runtime.job_session() as session:
            taken = session.execute(
                update(App).where(App.id == app_id, App.platform.is_not(None),
                                  or_(App.platform_sender_until.is_(None), App.platform_sender_until <= now))
                .values(platform_sender_until=now + lease(self.settings)).returning(App.id)
            ).first()
            session.commit()
            if taken is None:
                return None
            app = session.get(App, app_id)
            session.expunge(app)
            return app

    def _release(self, app_id: str) -> None:
        with self.runtime.job_session() as session:
            session.execute(update(App).where(App.id == app_id).values(platform_sender_until=None))
            session.commit()

    # -- rounds ----------------------------------------------------------------------------------

    def _send_due(self, app: App, report: TagReport) -> None:
        kind = platforms.PLATFORMS[app.platform]
        rate = app.platform_rate_per_second or kind.default_rate_per_second
        round_size = max(1, int(rate * ROUND_SECONDS))
        threads = max(1, min(self.settings.platform_concurrency, round_size))
        deadline = self.clock() + self.settings.platform_drain_budget_seconds
        pacer = Pacer(rate * PACE_SHARE)
        with httpx.Client(timeout=self.settings.platform_timeout_seconds,
                          limits=httpx.Limits(max_connections=threads, max_keepalive_connections=threads)) as client, \
                ThreadPoolExecutor(threads, thread_name_prefix="tagger") as pool:
            platform = platforms.connect(app.platform, app_id=app.platform_app_id, api_key=app.platform_api_key,
                                         base_url=self.settings.platform_base_url, client=client)
            spacing = timedelta(seconds=platform.per_user_interval_seconds) + SPACING_MARGIN
            throttled = threading.Event()  # set by a 429: no request of this run is sent after it
            in_flight: tuple[list[_Claim], list] | None = None  # the round being sent
            # Two rounds overlap: the next is claimed (and starts sending, paced after this one) while
            # this one's answers come in; then this one is recorded.
            while True:
                stopping = shutdown_requested.is_set() or throttled.is_set() or self.clock() >= deadline
                claims = [] if stopping else self._claim(app.id, round_size, platform.max_tags_per_request, spacing)
                futures = [pool.submit(self._send, platform, pacer, claim, throttled) for claim in claims]
                if in_flight is not None:
                    for future in in_flight[1]:
                        future.result()
                    if self._record(app, in_flight[0], platform.per_user_interval_seconds, report):
                        report.held = True
                in_flight = (claims, futures) if claims else None
                if in_flight is not None:
                    continue
                if report.held or shutdown_requested.is_set():
                    return
                if self.clock() >= deadline:
                    schedule_tagging(self.runtime, app.id)  # more may be due: a fresh job, behind other apps'
                    return
                wait = self._next_due_in(app.id)
                if wait is None or wait > self.linger or self.clock() + wait >= deadline:
                    return
                shutdown_requested.wait(max(wait, 0.01))

    def _send(self, platform, pacer: Pacer, claim: _Claim, throttled: threading.Event) -> None:
        if throttled.is_set():
            return  # the app is throttled: this user waits with the rest
        pacer.wait()
        if throttled.is_set():
            return
        claim.sent_at = utcnow()
        claim.outcome = platform.set_tags(claim.external_id, {key: value for key, (value, _) in claim.tags.items()})
        if claim.outcome.status == "throttled":
            throttled.set()

    def _claim(self, app_id: str, limit: int, max_tags: int, spacing: timedelta) -> list[_Claim]:
        """Claim up to `limit` due users whose last request is at least `spacing` old, and read their
        pending tags of enabled syncs (committed)."""
        now = utcnow()
        with self.runtime.job_session() as session:
            # due, and not sent a request within the platform's interval (whatever made them due since);
            # a CTE joined by primary key, so the plan never depends on the table's statistics
            due = select(users.external_id).where(
                users.app_id == app_id, users.due_at <= now,
                or_(users.last_request_at.is_(None), users.last_request_at <= now - spacing)) \
                .order_by(users.due_at).limit(limit)
            if is_postgresql(session):
                due = due.with_for_update(skip_locked=True)
            due = due.cte("due")
            claimed = list(session.scalars(
                update(PlatformUser.__table__)
                .where(users.app_id == app_id, users.external_id == due.c.external_id)
                .values(due_at=now + lease(self.settings))
                .returning(users.external_id)
            ))
            wanted: dict[str, dict[str, tuple[str, int]]] = {user: {} for user in claimed}
            if claimed:
                rows = session.execute(
                    select(tags.external_id, tags.tag_key, tags.value, tags.computed_time)
                    .join(CohortPlatformSync.__table__, and_(syncs.app_id == tags.app_id, syncs.tag_key == tags.tag_key,
                                                             syncs.enabled))
                    .where(tags.app_id == app_id, tags.state == TAG_PENDING, tags.external_id.in_(claimed))
                    .order_by(tags.external_id, tags.computed_time, tags.tag_key)
                )
                for user, key, value, computed_time in rows:
                    if len(wanted[user]) < max_tags:
                        wanted[user][key] = (value, computed_time)
                idle = [user for user, wanted_tags in wanted.items() if not wanted_tags]
                if idle:  # nothing of theirs to send (a disabled sync, or sent meanwhile)
                    session.execute(update(PlatformUser.__table__).where(
                        users.app_id == app_id, users.external_id.in_(idle)).values(due_at=None))
            session.commit()
        return [_Claim(user, wanted_tags) for user, wanted_tags in wanted.items() if wanted_tags]

    def _next_due_in(self, app_id: str) -> float | None:
        with self.runtime.session() as session:
            soonest = session.scalar(select(users.due_at).where(users.app_id == app_id, users.due_at.is_not(None))
                                     .order_by(users.due_at).limit(1))
        return None if soonest is None else (soonest - utcnow()).total_seconds()

    # -- outcomes --------------------------------------------------------------------------------

    def _record(self, app: App, claims: list[_Claim], interval: float, report: TagReport) -> bool:
        """Record every outcome of a round in one transaction (a few statements, each run for many rows
        at once); True if the app is now held (429)."""
        now = utcnow()
        spacing = timedelta(seconds=interval) + SPACING_MARGIN
        window = timedelta(seconds=self.settings.platform_retry_window_seconds)
        held_until: datetime | None = None
        key_refused: datetime | None = None
        app_values: dict[str, object] = {}
        applied: list[dict[str, object]] = []
        settled: dict[tuple[str, str | None], list[dict[str, object]]] = {}
        next_due: list[dict[str, object]] = []
        with self.runtime.job_session() as session:
            for claim in claims:
                outcome = claim.outcome
                if outcome is None:  # not sent: the app was throttled first
                    next_due.append({"u": claim.external_id, "due": now, "sent": None})
                    continue
                report.requests += 1
                report.outcomes[outcome.status] = report.outcomes.get(outcome.status, 0) + 1
                earliest = claim.sent_at + spacing
                sent = [{"u": claim.external_id, "k": key, "v": value, "ct": computed_time, "msg": _words(outcome)}
                        for key, (value, computed_time) in claim.tags.items()]
                if outcome.status == "applied":
                    failed = outcome.failed_tags & claim.tags.keys()
                    applied += [row for row in sent if row["k"] not in failed]
                    settled.setdefault((TAG_FAILED, "rejected"), []).extend(row for row in sent if row["k"] in failed)
                    if failed:
                        app_values.update(platform_last_error=_said(outcome), platform_last_error_at=now)
                elif outcome.status == "not_on_platform":
                    settled.setdefault((TAG_NOT_ON_PLATFORM, None), []).extend(sent)
                elif outcome.status == "rejected" and outcome.http_status in (401, 403):
                    # the key itself is refused: nothing of this app can succeed; keep its tags, wait
                    until = now + timedelta(seconds=self.settings.delivery_invalid_key_pause_seconds)
                    key_refused = max(key_refused or until, until)
                    app_values.update(platform_last_error=_said(outcome), platform_last_error_at=now)
                elif outcome.status in ("conflict", "rejected"):
                    settled.setdefault((TAG_FAILED, outcome.status), []).extend(sent)
                    app_values.update(platform_last_error=_said(outcome), platform_last_error_at=now)
                elif outcome.status == "throttled":
                    until = now + timedelta(seconds=outcome.retry_after or 1.0)
                    held_until = max(held_until or until, until)
                else:  # retry
                    attempts = self._retry(session, app.id, claim, _words(outcome), now, window)
                    earliest = max(earliest, now + timedelta(seconds=self.backoff(attempts)))
                    app_values.update(platform_last_error=_said(outcome), platform_last_error_at=now)
                next_due.append({"u": claim.external_id, "due": earliest, "sent": claim.sent_at})
            if key_refused is not None:
                held_until = max(held_until or key_refused, key_refused)
                app_values.update(platform_held_until=held_until, platform_held_reason=(
                    "the platform refused the API key; tags are kept and tried again then, or at once after "
                    "bridge apps update --platform-api-key"))
            elif held_until is not None:
                app_values.update(platform_held_until=held_until,
                                  platform_held_reason="the platform answered 429 Too Many Requests")
            # (users keep their own due times: the app's hold stops the tagger until it ends, or until
            # a new connection clears it)
            if applied:
                self._applied(session, app.id, applied, now)
            for (state, reason), rows in settled.items():
                if rows:
                    self._settle(session, app.id, rows, state, reason, now)
            self._reschedule(session, app.id, next_due)
            session.execute(update(App).where(App.id == app.id).values(
                platform_sender_until=utcnow() + lease(self.settings), **app_values))
            session.commit()
        for claim in claims:
            if claim.outcome is not None:
                metrics.PLATFORM_TAG_REQUESTS.labels(app.id, claim.outcome.status).inc()
        return held_until is not None

    def _applied(self, session: Session, app_id: str, rows: list[dict[str, object]], now: datetime) -> None:
        """The platform has these values now; a tag whose wanted value is still the one sent is synced,
        one that changed meanwhile stays pending (its newer value goes next)."""
        still = and_(tags.value == bindparam("v"), tags.computed_time == bindparam("ct"))
        session.execute(
            update(PlatformTag.__table__)
            .where(tags.app_id == app_id, tags.external_id == bindparam("u"), tags.tag_key == bindparam("k"))
            .values(synced_value=bindparam("v"), synced_at=now,
                    state=case((still, TAG_SYNCED), else_=tags.state), attempts=case((still, 0), else_=tags.attempts),
                    failing_since=case((still, None), else_=tags.failing_since),
                    reason=case((still, None), else_=tags.reason), last_error=case((still, None), else_=tags.last_error),
                    updated_at=now),
            rows,
        )

    def _settle(self, session: Session, app_id: str, rows: list[dict[str, object]], state: str, reason: str | None,
                now: datetime) -> None:
        """Give the sent tags `state` (unless their wanted value changed meanwhile: they stay pending)."""
        session.execute(
            update(PlatformTag.__table__)
            .where(tags.app_id == app_id, tags.external_id == bindparam("u"), tags.tag_key == bindparam("k"),
                   tags.value == bindparam("v"), tags.computed_time == bindparam("ct"), tags.state == TAG_PENDING)
            .values(state=state, reason=reason, last_error=func.substr(bindparam("msg", type_=String), 1, 2000),
                    updated_at=now),
            rows,
        )

    def _retry(self, session: Session, app_id: str, claim: _Claim, message: str | None, now: datetime,
               window: timedelta) -> int:
        """Count a failed attempt on the user's sent tags; those failing for longer than the retry window
        are dead-lettered (`failed`, retry_window_exceeded). Returns the attempt number."""
        sent = and_(tags.app_id == app_id, tags.external_id == claim.external_id, tags.tag_key.in_(list(claim.tags)),
                    tags.state == TAG_PENDING)
        attempts = session.execute(
            update(PlatformTag.__table__).where(sent)
            .values(attempts=tags.attempts + 1, failing_since=func.coalesce(tags.failing_since, now),
                    last_error=(message or "no answer")[:2000], updated_at=now)
            .returning(tags.attempts)
        ).scalars().all()
        session.execute(
            update(PlatformTag.__table__).where(sent, tags.failing_since < now - window)
            .values(state=TAG_FAILED, reason="retry_window_exceeded")
        )
        return max(attempts, default=1)

    def _reschedule(self, session: Session, app_id: str, next_due: list[dict[str, object]]) -> None:
        """Each claimed user is due again at their time if pending tags of an enabled sync remain, else never."""
        remaining = exists(
            select(tags.tag_key)
            .join(CohortPlatformSync.__table__, and_(syncs.app_id == tags.app_id, syncs.tag_key == tags.tag_key,
                                                     syncs.enabled))
            .where(tags.app_id == app_id, tags.external_id == bindparam("u"), tags.state == TAG_PENDING)
        )
        session.execute(
            update(PlatformUser.__table__).where(users.app_id == app_id, users.external_id == bindparam("u"))
            .values(due_at=case((remaining, bindparam("due", type_=UtcDateTime)), else_=None),
                    last_request_at=func.coalesce(bindparam("sent", type_=UtcDateTime), users.last_request_at)),
            next_due,
        )

    def backoff(self, attempt: int) -> float:
        """Seconds before retry `attempt` (1, 2, ...): exponential, capped, with jitter in [d/2, d]."""
        ceiling = min(self.settings.platform_backoff_cap_seconds,
                      self.settings.platform_backoff_base_seconds * 2 ** (attempt - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)


def _said(outcome: TagOutcome) -> str:
    """The outcome in words, for the app's last error: `retry: HTTP 503: Service Unavailable`."""
    return f"{outcome.status}: {_words(outcome)}"[:2000]


def _words(outcome: TagOutcome) -> str:
    """What the platform said (its status, and its own words), or why no answer came."""
    message = outcome.message or "-"
    return f"HTTP {outcome.http_status}: {message}" if outcome.http_status is not None else message
