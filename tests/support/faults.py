"""Fault-suite helpers: a private Redis to flush and kill, the platform's steady event load, the
process manager's worker restarts, and the one invariant every fault scenario ends with.

The invariant (`Bridge.converge_and_check`): once the outbox is empty, Amplitude (the sink) has ingested
exactly the accepted events whose user could be resolved, each insert_id counted once, and every other
accepted event is in the delivery stats with its reason.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from redis import Redis
from rq import Worker

from bridge import mapping
from bridge.amplitude.sink import AmplitudeSink
from support.databases import libpq_url
from support.factories import OMIT, T0, event_item
from support.processes import Process, free_port, start_worker, wait_until

KINDS = sorted(mapping.DEFAULT_VOCABULARY.sent)
USERS = [f"user-{n:02d}" for n in range(10)]
DEVICES_PER_USER = 3
ANONYMOUS_SUBSCRIPTIONS = 5
REPEATS_PER_REQUEST = 5  # ids of the previous request posted again: the platform re-sending events

# Compressed time: seconds where production has minutes. Nothing dies of old age unless a test says so.
WORKER_ENV = {
    "DELIVERY_LEASE_SECONDS": "2", "SWEEP_INTERVAL_SECONDS": "0.3", "DELIVERY_BACKOFF_BASE_SECONDS": "0.1",
    "DELIVERY_BACKOFF_CAP_SECONDS": "0.5", "DELIVERY_THROTTLE_PAUSE_SECONDS": "1", "AMPLITUDE_TIMEOUT_SECONDS": "1",
    "DELIVERY_RETRY_WINDOW_SECONDS": "3600", "COHORT_RESCHEDULE_SECONDS": "2", "LOG_LEVEL": "INFO",
}


class PrivateRedis:
    """A redis-server of this test module's own, on a free port, without persistence: flushing it,
    killing it with SIGKILL and starting it again disturbs nobody else's tests."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("ab")
        self.popen = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until(self.ping, 10, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        from redis import Redis
        from redis.exceptions import RedisError

        client = Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except RedisError:
            return False
        finally:
            client.close()

    def flushall(self) -> None:
        from redis import Redis

        with Redis.from_url(self.url, socket_timeout=5) as client:
            client.flushall()

    def kill(self) -> None:
        """SIGKILL: every key, queued job and connection is gone at once."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def restart(self) -> None:
        """Start it again on the same port, empty (nothing was persisted)."""
        self.start()

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        if self.running():
            self.popen.terminate()
            self.popen.wait(10)


def restart_postgresql(database_url: str, seconds: float = 1.0) -> int:
    """What the bridge sees of a PostgreSQL restart lasting `seconds`: every connection to its database
    is terminated, and so is every new one until the restart is over. Returns how many were dropped.
    (The shared server itself is not restarted: other test runs use it.)"""
    dropped = 0
    end = time.monotonic() + seconds
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        while True:
            dropped += len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall())
            if time.monotonic() >= end:
                return dropped
            time.sleep(0.02)


def claimers(database_url: str) -> int:
    """How many database sessions hold a claim on outbox rows right now (FOR UPDATE takes RowShareLock)."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        return conn.execute("SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                            "WHERE c.relname = 'outbox_events' AND l.mode = 'RowShareLock' "
                            "AND l.pid <> pg_backend_pid()").fetchone()[0]


def hold_delivery(database_url: str, app_id: str, held: bool) -> None:
    """Hold the app's delivery (as a rejected Amplitude key does), or release it (as a new key does)."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute("UPDATE apps SET delivery_held_until = CASE WHEN %s THEN now() + interval '1 hour' END, "
                     "delivery_held_reason = CASE WHEN %s THEN 'held by the test' END WHERE id = %s",
                     (held, held, app_id))


@dataclass
class Answer:
    """The platform's view of one request: what it sent and the 202 it finally got."""

    items: list[dict]
    repeats: int
    body: dict
    attempts: int


class Load:
    """The platform: a thread posting 100-event requests at a steady rate to the real web app.

    Each request has new unique ids for ~10 users × 3 devices (all mapped kinds), ~8% on subscriptions
    with no External User ID (they are stored as skipped), and the first ids of the previous request
    again. A 503 or a dropped connection is retried with the same body, as a platform would; every
    other non-202 answer is recorded as unexpected."""

    def __init__(self, url: str, app_id: str, api_key: str, tag: str, *, requests_per_second: float = 3.0,
                 items_per_request: int = 100):
        self.endpoint = f"{url}/v1/apps/{app_id}/events"
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.tag = tag
        self.interval = 1 / requests_per_second
        self.size = items_per_request
        self.answers: list[Answer] = []
        self.resolvable: dict[str, str] = {}  # accepted event id → its External User ID
        self.anonymous: set[str] = set()  # accepted event ids with no External User ID
        self.retries: Counter[str] = Counter()  # why requests were retried: "503", "connection"
        self.unexpected: list[str] = []
        self.attempt_log: list[tuple[float, int | None]] = []  # (monotonic time, status or None) of every attempt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"load-{tag}", daemon=True)
        self._http = httpx.Client(timeout=15)
        self._sequence = 0

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Finish the request in hand (with its retries), then stop."""
        self._stop.set()
        self._thread.join(120)
        self._http.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def stored_events(self) -> int:
        """New event ids in the requests answered 202 so far."""
        return len(self.resolvable) + len(self.anonymous)

    def post_once(self, items: list[dict], repeats: int = 0) -> Answer | None:
        """POST `items` until the bridge answers 202 (the platform's retry), record and return the answer."""
        attempts = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            attempts += 1
            try:
                response = self._http.post(self.endpoint, json=items, headers=self.headers)
            except httpx.TransportError as exc:
                self.attempt_log.append((time.monotonic(), None))
                self.retries["connection"] += 1
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.2)
                continue
            self.attempt_log.append((time.monotonic(), response.status_code))
            if response.status_code == 202:
                return self.remember(items, repeats, response.json(), attempts)
            if response.status_code == 503:
                self.retries["503"] += 1
                last = response.text
                time.sleep(0.2)
                continue
            self.unexpected.append(f"{response.status_code}: {response.text[:300]}")
            return None
        self.unexpected.append(f"no 202 within 90 s: {last}")
        return None

    def remember(self, items: list[dict], repeats: int, body: dict, attempts: int = 1) -> Answer:
        """Record a 202: the request's new ids are accepted (stored, now or by an earlier attempt)."""
        answer = Answer(items, repeats, body, attempts)
        self.answers.append(answer)
        for item in items[repeats:]:
            event = item["event"]
            if event.get("external_id"):
                self.resolvable[event["id"]] = event["external_id"]
            else:
                self.anonymous.add(event["id"])
        return answer

    def next_items(self) -> tuple[list[dict], int]:
        """The next request: the first ids of the previous accepted request again, then new ones."""
        previous = self.answers[-1].items[self.answers[-1].repeats:] if self.answers else []
        repeated = previous[:REPEATS_PER_REQUEST]
        items = list(repeated)
        n0 = self._sequence
        while len(items) < self.size:
            n = self._sequence
            self._sequence += 1
            event_id = f"{self.tag}-{n0:06d}-{n:08d}"
            if n % 12 == 5:
                subscription, user = f"{self.tag}-anon-{n % ANONYMOUS_SUBSCRIPTIONS}", None
            else:
                user = USERS[n % len(USERS)]
                subscription = f"{self.tag}-{user}-d{(n // len(USERS)) % DEVICES_PER_USER}"
            items.append(event_item(event_id, KINDS[n % len(KINDS)], subscription, user or OMIT, timestamp=T0 + n,
                                    device_type="AndroidPush", data={"target_id": "cta"}))
        return items, len(repeated)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            items, repeats = self.next_items()
            self.post_once(items, repeats)
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def wait_for_events(self, n: int, timeout: float = 60) -> None:
        """Block until at least `n` more events were accepted than when called."""
        target = self.stored_events + n
        wait_until(lambda: self.stored_events >= target, timeout, f"the platform to post {n} more events")


@dataclass
class Bridge:
    """One scenario's bridge: a fresh app on the shared web process, its own sink, its own workers."""

    name: str
    url: str
    app_id: str
    api_key: str
    cohort_token: str
    amplitude_key: str
    database_url: str
    sink: AmplitudeSink
    worker_env: dict[str, str]
    logs: Path
    redis: PrivateRedis
    workers: list[Process] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)  # what was done to it: kills, restarts, flushes...
    loads: list[Load] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    dead: dict[str, str] = field(default_factory=dict)  # dead-lettered event id → reason, after the check

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def load(self, **options) -> Load:
        load = Load(self.url, self.app_id, self.api_key, f"{self.name}{len(self.loads)}", **options)
        self.loads.append(load)
        return load

    def start_worker(self, **env: str) -> Process:
        worker = start_worker({**self.worker_env, **env}, self.logs / f"worker-{len(self.workers) + 1}.log")
        self.workers.append(worker)
        return worker

    def restart_worker(self, dead: Process, **env: str) -> Process:
        """What the process manager does when a worker process has exited: start another."""
        assert dead.popen.poll() is not None
        self.faults["worker_restarts"] += 1
        return self.start_worker(**env)

    def alive_workers(self) -> list[Process]:
        return [w for w in self.workers if w.popen.poll() is None]

    def rq_workers(self) -> dict[int, Worker]:
        """RQ's registry of the workers on this scenario's Redis, by process id: each started RQ loop
        registers itself (name, birth, the jobs it finished or failed) before it takes a job."""
        with Redis.from_url(self.redis.url, socket_timeout=5) as redis:
            return {worker.pid: worker for worker in Worker.all(connection=redis)}

    def rq_worker(self, process: Process, timeout: float = 30) -> Worker:
        """RQ's record of the worker loop running in `process`, once it has registered."""
        return wait_until(lambda: self.rq_workers().get(process.popen.pid), timeout,
                          f"the worker (pid {process.popen.pid}) to register with RQ")

    def rq_record_after_exit(self, worker: Worker) -> Worker | None:
        """RQ's record of a worker loop that has ended: RQ keeps it 60 s, with its death and job counts."""
        with Redis.from_url(self.redis.url, socket_timeout=5) as redis:
            return Worker.find_by_key(worker.key, connection=redis)

    def stats(self) -> dict | None:
        try:
            response = httpx.get(f"{self.url}/v1/apps/{self.app_id}/deliveries/stats", headers=self.auth, timeout=10)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def wait_delivering(self, more: int = 1, timeout: float = 60) -> None:
        """Block until the sink has ingested `more` events than when called."""
        target = self.sink.stats()["events_ingested"] + more
        wait_until(lambda: self.sink.stats()["events_ingested"] >= target, timeout, "the workers to deliver")

    def wait_in_flight(self, timeout: float = 60) -> None:
        """Block until every queued sink fault has been drawn: the request it answers is in flight."""
        wait_until(lambda: self.sink.stats()["faults_pending"] == 0, timeout, "a request to draw the sink's fault")

    def stop(self) -> None:
        for load in self.loads:
            if load.running:
                load.stop()
        for worker in self.workers:
            worker.stop()

    # -- the invariant ------------------------------------------------------------------------

    def converge_and_check(self, load: Load, *, dead_reasons: frozenset[str] = frozenset(),
                           timeout: float = 120, **extra) -> dict:
        """Stop the load, wait until nothing is pending, then compare the sink's record with what the
        bridge accepted. Prints (and appends to $BRIDGE_FAULT_REPORT) one summary line before asserting."""
        if load.running:
            load.stop()
        wait_until(lambda: (s := self.stats()) is not None and s["pending"] == 0, timeout,
                   f"{self.name}: the outbox to drain (workers alive: {len(self.alive_workers())})", interval=0.2)
        stats = self.stats()
        sink_stats = self.sink.stats()
        ingested = {e["insert_id"]: e for e in self.sink.events(self.amplitude_key)}
        with psycopg.connect(libpq_url(self.database_url)) as conn:
            parked = conn.execute("SELECT source_event_id, state, reason FROM outbox_events WHERE app_id = %s "
                                  "AND state <> 'pending'", (self.app_id,)).fetchall()
        dead = self.dead = {event_id: reason for event_id, state, reason in parked if state == "dead"}
        skipped = {event_id: reason for event_id, state, reason in parked if state == "skipped"}
        bodies = [a.body for a in load.answers]
        accepted = sum(b["accepted"] for b in bodies)
        reposted = sum(a.repeats for a in load.answers)
        # A request whose first attempt committed but whose answer was lost: the retry finds its own ids.
        committed_unanswered = sum(a.body["duplicates"] - a.repeats for a in load.answers)
        summary = {
            "scenario": self.name, "seconds": round(time.monotonic() - self.started, 1),
            "requests": len(load.answers), "events_posted": sum(len(a.items) for a in load.answers),
            "accepted": accepted, "skipped": sum(b["skipped"] for b in bodies),
            "duplicates_reposted": reposted, "committed_unanswered": committed_unanswered,
            "web_retries": dict(load.retries), "delivered": stats["delivered"],
            "dead": stats["dead"]["reasons"], "skipped_reasons": stats["skipped"]["reasons"],
            "sink_requests": {**{str(k): v for k, v in sorted(sink_stats["requests"].items())},
                              **({"reset": sink_stats["resets"]} if sink_stats["resets"] else {})},
            "sink_events_received": sink_stats["events_received"], "sink_unique": sink_stats["unique_insert_ids"],
            "sink_duplicates_ignored": sink_stats["duplicates"], "faults": dict(self.faults), **extra,
        }
        report(summary)

        expected = set(load.resolvable)
        assert not load.unexpected, f"the web answered something other than 202/503: {load.unexpected[:5]}"
        for a in load.answers:
            b = a.body
            assert (b["ignored"], b["rejected"]) == (0, []), b
            assert b["accepted"] + b["skipped"] + b["duplicates"] == len(a.items), b
            assert b["duplicates"] >= a.repeats, (b, a.repeats)
            assert a.attempts > 1 or b["duplicates"] == a.repeats, b  # extra duplicates only after a lost answer
        assert accepted + summary["skipped"] + committed_unanswered == len(expected) + len(load.anonymous)
        unknown = set(ingested) - expected
        assert not unknown, f"{len(unknown)} ingested event(s) were never accepted: {sorted(unknown)[:5]}"
        lost = expected - set(ingested) - set(dead)
        assert not lost, f"{len(lost)} accepted event(s) neither delivered nor dead: {sorted(lost)[:5]}"
        assert set(dead) <= expected and not set(ingested) & set(dead), "dead-lettered events that were not due"
        assert set(dead.values()) <= dead_reasons, f"unexpected dead-letter reasons: {Counter(dead.values())}"
        assert sink_stats["unique_insert_ids"] == sink_stats["events_ingested"] == len(ingested)
        assert all(ingested[i]["user_id"] == load.resolvable[i] for i in ingested), "an event sent under the wrong user"
        assert set(skipped) == load.anonymous and set(skipped.values()) == {"unresolved_user"}
        assert stats["pending"] == 0 and stats["delivered"] == len(ingested), stats
        assert stats["dead"]["total"] == len(dead) and stats["skipped"] == {
            "total": len(load.anonymous), "reasons": {"unresolved_user": len(load.anonymous)}}, stats
        return summary


def report(summary: dict) -> None:
    """One line per scenario on stdout (pytest -s), and as JSON to $BRIDGE_FAULT_REPORT if set."""
    print("\nFAULTS " + " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in summary.items()), flush=True)
    path = os.environ.get("BRIDGE_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(summary) + "\n")
