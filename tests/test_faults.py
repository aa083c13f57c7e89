"""Faults: real gunicorn web, `bridge worker` processes, PostgreSQL, a private Redis and an
Amplitude-compatible sink with fault injection, under a steady event load from the platform.

Every scenario ends with the same check (`Bridge.converge_and_check`): once nothing is pending, the
sink has ingested exactly the accepted events whose user was resolvable, each insert_id counted once,
and every other accepted event is in the delivery stats with its reason. Time is compressed
(`WORKER_ENV`): backoffs of a tenth of a second, a one-second throttle pause and client timeout.
Run with `-s` to see one summary line per scenario; BRIDGE_FAULT_REPORT=path also writes them as JSON.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from bridge.amplitude.sink import AmplitudeSink
from bridge.apps.service import create_app_record
from conftest import _truncate, _unavailable
from faults_support import (USERS, WORKER_ENV, Bridge, PrivateRedis, claimers, hold_delivery, libpq_url,
                            restart_postgresql)
from processes import parse_log_line, start_web, wait_until

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    if shutil.which("redis-server") is None:
        _unavailable("redis-server (the fault suite runs its own)", FileNotFoundError("redis-server"))
    redis = PrivateRedis(tmp_path_factory.mktemp("redis"))
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture(scope="module")
def web(postgresql_url, private_redis, tmp_path_factory):
    """One gunicorn for the module; each scenario gets its own app, sink and workers."""
    _truncate(postgresql_url)
    env = {"DATABASE_URL": libpq_url(postgresql_url), "REDIS_URL": private_redis.url, "SECRET_KEY": "test-secret-key-0123456789abcdef0123456789",
           "AMPLITUDE_BASE_URL": "http://127.0.0.1:9", "LOG_LEVEL": "WARNING"}
    process, url = start_web(env, tmp_path_factory.mktemp("web") / "web.log")
    yield env, url
    process.stop()


@pytest.fixture
def bridge(request, web, private_redis, postgresql_url, tmp_path):
    env, url = web
    if not private_redis.running():
        private_redis.restart()
    private_redis.flushall()
    name = request.node.originalname.removeprefix("test_")
    amplitude_key = f"amp-{name[:20]}"
    engine = create_engine(postgresql_url)
    with Session(engine, expire_on_commit=False) as session:
        app, issued = create_app_record(session, name=name, amplitude_api_key=amplitude_key)
        session.commit()
    engine.dispose()
    sink = AmplitudeSink(api_keys={amplitude_key}).start()
    harness = Bridge(name=name, url=url, app_id=app.id, api_key=issued.api_key, cohort_token=issued.cohort_token,
                     amplitude_key=amplitude_key, database_url=postgresql_url, sink=sink, logs=tmp_path,
                     redis=private_redis, worker_env={**env, **WORKER_ENV, "AMPLITUDE_BASE_URL": sink.url})
    yield harness
    harness.stop()
    sink.stop()


def test_worker_sigkilled_mid_batch_five_times(bridge):
    """Each time, the sink has ingested the batch and is still answering when the worker dies; the
    process manager starts another, which sends the batch again and Amplitude drops the repeat."""
    load = bridge.load().start()
    worker = bridge.start_worker()
    for _ in range(5):
        bridge.wait_delivering()
        bridge.sink.add_faults([{"status": 500, "ingest": True, "delay": 0.8}])
        bridge.wait_in_flight()
        worker.signal(signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
        bridge.faults["sigkill_mid_batch"] += 1
        worker = bridge.restart_worker(worker)
    summary = bridge.converge_and_check(load)
    assert summary["sink_duplicates_ignored"] >= 5  # every killed batch was sent again, and counted once


def test_sigterm_during_a_batch_exits_within_herokus_30s(bridge):
    """SIGTERM while Amplitude takes 2 s to answer 413 to the batch in hand: the worker finishes that
    batch (both halves are sent and recorded), starts no other, and exits; the next release's worker
    sends the rest. Nothing reaches Amplitude twice."""
    load = bridge.load().start()
    worker = bridge.start_worker(AMPLITUDE_TIMEOUT_SECONDS="5")
    bridge.wait_delivering()
    bridge.sink.add_faults([{"status": 413, "delay": 2}])
    bridge.wait_in_flight()
    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    try:
        code = worker.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker was still running 30 s after SIGTERM:\n{worker.output()[-3000:]}")
    took = time.monotonic() - sent
    bridge.faults["sigterm"] += 1
    log = worker.output()
    after = log[log.index("warm shut down requested"):]
    assert code == 0, log[-3000:]
    assert took > 1, "the worker exited without waiting for the answer to the batch in hand"
    sent_lines = [parse_log_line(line, "text")["msg"] for line in after.splitlines() if "/2/httpapi" in line]
    statuses = [line.rsplit('"', 2)[-2].split()[1] for line in sent_lines]  # httpx's `... "HTTP/1.1 413 ..."`
    assert statuses == ["413", "200", "200"], after[-3000:]  # the batch in hand, then its two halves
    assert ": bridge: bridge.delivery.pusher.drain_app(" not in after, "the worker took another job after SIGTERM"
    bridge.start_worker()
    summary = bridge.converge_and_check(load, sigterm_exit_seconds=round(took, 2))
    assert summary["sink_duplicates_ignored"] == 0


def test_redis_flushed_then_killed_and_restarted(bridge):
    """Intake needs only PostgreSQL, so the platform keeps getting 202 while Redis is down; the sweep
    finds the work again after the flush and after the restart. Redis dies while a worker is mid-batch:
    both workers must reconnect by themselves."""
    load = bridge.load().start()
    workers = [bridge.start_worker(), bridge.start_worker()]
    bridge.wait_delivering()
    bridge.redis.flushall()
    bridge.faults["redis_flushall"] += 1
    bridge.wait_delivering(300)
    bridge.sink.add_faults([{"status": 500, "ingest": True, "delay": 0.8}])
    bridge.wait_in_flight()  # a worker is mid-batch when Redis dies
    down = time.monotonic()
    bridge.redis.kill()
    bridge.faults["redis_kill9"] += 1
    load.wait_for_events(500)  # the platform posts on while Redis is down
    up = time.monotonic()
    bridge.redis.restart()
    while_down = [status for at, status in load.attempt_log if down < at < up]
    bridge.wait_delivering(300)
    exited = [w for w in workers if w.popen.poll() is not None]
    bridge.converge_and_check(load, web_answers_while_redis_down=len(while_down),
                              workers_exited=len(exited))
    assert while_down and set(while_down) == {202}, while_down
    assert not exited, "a worker did not survive the Redis restart:\n" + exited[0].output()[-3000:]
    assert any("starting it again" in w.output() for w in workers)  # the mid-batch worker's RQ loop was restarted


def test_postgresql_restarts_drop_every_connection(bridge):
    """Four one-second restarts: every connection to the database (web, workers, sweep) is dropped, and
    every new one too until it is over. Requests in flight get 503 and the platform retries them;
    batches Amplitude accepted but the worker could not record are sent again; the workers carry on."""
    load = bridge.load().start()
    workers = [bridge.start_worker(), bridge.start_worker()]
    bridge.wait_delivering()
    dropped = []
    for _ in range(4):
        load.wait_for_events(300)
        dropped.append(restart_postgresql(bridge.database_url, seconds=1.0))
        bridge.faults["postgresql_restarts"] += 1
    bridge.wait_delivering(300)
    bridge.converge_and_check(load, connections_dropped=dropped)
    assert all(dropped), dropped
    assert all(w.popen.poll() is None for w in workers), "a worker exited after losing its database connection"


def test_amplitude_outage_then_errors_that_ingested(bridge):
    """503 for six seconds (hours, compressed: backoff is capped at 0.5 s and nothing reaches the
    retry window), then 413s on the backlog's first big batch, then a 500, 502 and 504 each of which
    did ingest the batch."""
    load = bridge.load().start()
    bridge.start_worker()
    bridge.start_worker()
    bridge.wait_delivering()
    retrying, stretch_end = 0, time.monotonic() + 6
    while time.monotonic() < stretch_end:
        if bridge.sink.stats()["faults_pending"] < 2:
            bridge.sink.add_faults([{"status": 503, "times": 2}])
        stats = bridge.stats() or {"retrying": 0}
        retrying = max(retrying, stats["retrying"])
        time.sleep(0.05)
    backlog = bridge.stats()["pending"]
    bridge.sink.add_faults([{"status": 413, "times": 3}, {"status": 500, "ingest": True},
                            {"status": 502, "ingest": True}, {"status": 504, "ingest": True}])
    bridge.wait_in_flight()
    summary = bridge.converge_and_check(load, max_retrying=retrying, backlog_after_outage=backlog)
    requests = summary["sink_requests"]
    assert retrying > 0 and requests["503"] >= 10, summary
    assert (requests["413"], requests["500"], requests["502"], requests["504"]) == (3, 1, 1, 1), requests
    assert summary["sink_duplicates_ignored"] >= 3  # the three batches that did ingest were sent again


def test_429_storm_slow_answers_and_connection_resets(bridge):
    """Three users throttled for three seconds (everyone else keeps flowing), a fourth over its daily
    quota (its events then are dead-lettered with that reason); then answers slower than the client's
    one-second timeout, and connections dropped before and after ingesting."""
    load = bridge.load().start()
    bridge.start_worker()
    bridge.start_worker()
    bridge.wait_delivering()
    throttled, quota_user = set(USERS[:3]), USERS[9]

    def others_delivered():
        return sum(1 for e in bridge.sink.events() if e["user_id"] not in throttled | {quota_user})

    storm_started = time.monotonic()
    bridge.sink.throttle(users=throttled, daily_quota_users=[quota_user])
    before = others_delivered()
    wait_until(lambda: others_delivered() > before + 300, 30, "everyone else to be delivered during the 429 storm")
    wait_until(lambda: time.monotonic() - storm_started > 3, 10, "the storm to last three seconds")
    storm_429s = bridge.sink.stats()["requests"].get(429, 0)
    bridge.sink.unthrottle()
    bridge.sink.add_faults([{"status": 500, "ingest": True, "delay": 1.5}, {"status": 504, "delay": 1.5},
                            {"reset": True}, {"reset": True, "ingest": True}, {"reset": True}])
    bridge.wait_in_flight()
    summary = bridge.converge_and_check(load, dead_reasons=frozenset({"daily_quota_exceeded"}))
    assert storm_429s >= 3, summary
    assert summary["sink_requests"]["reset"] == 3 and summary["sink_duplicates_ignored"] >= 2, summary
    dead_users = {load.resolvable[event_id] for event_id in bridge.dead}
    assert dead_users == {quota_user}, dead_users  # only the over-quota user lost events, with the reason


def test_the_platform_reposts_the_same_events(bridge):
    """Everything is posted again (four connections at a time) while the worker delivers, and new
    requests race their own copy on a second connection: each id is stored, and sent, once."""
    load = bridge.load().start()
    bridge.start_worker()
    load.wait_for_events(1500)
    load.stop()
    http = httpx.Client(timeout=30)

    def post(items):
        return http.post(load.endpoint, json=items, headers=load.headers)

    with ThreadPoolExecutor(4) as pool:
        again = list(pool.map(post, [a.items for a in load.answers]))
        assert {r.status_code for r in again} == {202}
        assert sum(r.json()["accepted"] + r.json()["skipped"] for r in again) == 0
        assert sum(r.json()["duplicates"] for r in again) == sum(len(a.items) for a in load.answers)
        raced = 0
        for _ in range(5):
            items, repeats = load.next_items()
            first, second = pool.map(post, [items, items])
            bodies = [first.json(), second.json()]
            assert first.status_code == second.status_code == 202
            assert sum(b["accepted"] + b["skipped"] for b in bodies) == len(items) - repeats, bodies
            winner = max(bodies, key=lambda b: b["accepted"] + b["skipped"])
            load.remember(items, repeats, winner)
            raced += 1
    http.close()
    summary = bridge.converge_and_check(load, reposted_requests=len(again), raced_requests=raced)
    assert summary["sink_duplicates_ignored"] == 0  # no fault: nothing reached Amplitude twice


def test_two_workers_drain_the_same_app(bridge):
    """A backlog, small batches, two workers: both hold claims on the app's events at the same time,
    the union is complete, and with no fault injected Amplitude never sees an insert_id twice."""
    hold_delivery(bridge.database_url, bridge.app_id, True)  # the backlog waits until both workers listen
    load = bridge.load(requests_per_second=5).start()
    load.wait_for_events(2500)
    most, watching = 0, threading.Event()

    def watch():
        nonlocal most
        while not watching.is_set():
            most = max(most, claimers(bridge.database_url))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    workers = [bridge.start_worker(DELIVERY_BATCH_SIZE="100") for _ in range(2)]
    wait_until(lambda: all("Listening on" in w.output() for w in workers), 30, "both workers to listen")
    hold_delivery(bridge.database_url, bridge.app_id, False)
    bridge.wait_delivering(2500)
    watching.set()
    watcher.join()
    load.stop()
    wait_until(lambda: (bridge.stats() or {}).get("pending") == 0, 60, "the outbox to drain")
    batches = [w.output().count("/2/httpapi") for w in workers]
    summary = bridge.converge_and_check(load, most_concurrent_claims=most, batches_per_worker=batches)
    assert most >= 2, "the two workers never held claims at the same time"
    assert all(batches), batches
    assert summary["sink_duplicates_ignored"] == 0


def test_cohort_batches_retried_reordered_and_a_worker_killed(bridge):
    """A worker is SIGKILLed in the middle of applying an enter batch (it is held there by a lock the
    test takes on the cohort row). Meanwhile Amplitude retries another batch and sends an exit batch
    computed later, then a stale enter batch computed earlier. The killed batch is applied last (the
    sweep re-queues it), after the newer exit: membership must still equal the truth."""
    load = bridge.load(requests_per_second=2).start()
    worker = bridge.start_worker()
    api, hook = bridge.auth, {"Authorization": f"Bearer {bridge.cohort_token}"}
    base = f"{bridge.url}/v1/apps/{bridge.app_id}"
    users = [f"cu-{i:05d}" for i in range(6010)]
    with_records = {u for i, u in enumerate(users) if i % 3 == 0}
    records = [{"subscription_id": f"sub-{u}", "type": "AndroidPush", "external_id": u} for u in sorted(with_records)]
    for start in range(0, len(records), 1000):
        answer = httpx.post(f"{base}/subscriptions", json=records[start:start + 1000], headers=api, timeout=30)
        assert answer.status_code == 200, answer.text

    def batch(message_id, members, in_cohort, computed_time):
        return {"cohort_id": "faults", "cohort_name": "Faults", "message_id": message_id, "in_cohort": in_cohort,
                "computed_time": str(computed_time), "users": [{"user_id": users[i]} for i in members]}

    def post(body):
        answer = httpx.post(f"{base}/amplitude/cohorts", json=body, headers=hook, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def syncs():
        answer = httpx.get(f"{base}/cohorts/faults/syncs?limit=100", headers=api, timeout=10)
        return answer.json()["items"] if answer.status_code == 200 else []

    t0, t1, t3 = 1763769600, 1763856000, 1764028800
    post(batch("seed", range(6000, 6010), True, t1))
    wait_until(lambda: any(s["processed_at"] for s in syncs()), 30, "the seed batch to be applied")

    with psycopg.connect(libpq_url(bridge.database_url)) as blocker:
        blocker.execute("SELECT 1 FROM cohorts WHERE app_id = %s AND cohort_id = 'faults' FOR UPDATE", (bridge.app_id,))
        killed = post(batch("enter-a", range(0, 5000), True, t1))["batch_id"]

        def claimed_but_not_applied():
            """The worker's run waits on the cohort row's lock: it has claimed the batch and holds the
            batch's row lock (taken first). Read from pg_stat_activity: a probe that took the batch's
            lock itself, even for an instant, could make the run's SKIP LOCKED claim pass it by."""
            with psycopg.connect(libpq_url(bridge.database_url), autocommit=True) as probe:
                return probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query ILIKE 'UPDATE cohorts %%'").fetchone()[0] == 1

        # 60 s: a run that found nothing to claim leaves the batch to the sweep, 30 s after it arrived.
        wait_until(claimed_but_not_applied, 60, "the worker to start applying the batch")
        retried = batch("enter-b", range(5000, 6000), True, t1)
        post(retried)
        assert post(retried)["status"] == "duplicate"  # Amplitude retrying a batch it already sent
        post(batch("exit-c", range(0, 1000), False, t3))
        post(batch("stale-d", range(0, 500), True, t0))  # computed before the exit, arrives after it
        worker.signal(signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
        bridge.faults["sigkill_mid_batch"] += 1
        blocker.rollback()
    bridge.restart_worker(worker)
    load.stop()

    wait_until(lambda: len(syncs()) == 5 and all(s["processed_at"] for s in syncs()), 90,
               "every batch to be applied (the killed one after the sweep re-queues it, 30 s after it arrived)")
    history = {s["message_id"]: s for s in syncs()}
    report = httpx.get(f"{base}/cohorts/faults", headers=api, timeout=10).json()
    unmatched, page = [], {"next": None}
    while True:
        paging = {"limit": 1000, **({"after": page["next"]} if page["next"] else {})}
        page = httpx.get(f"{base}/cohorts/faults/unmatched", params=paging, headers=api, timeout=10).json()
        unmatched += page["items"]
        if not page["next"]:
            break

    members = {users[i] for i in [*range(1000, 6000), *range(6000, 6010)]}
    summary = bridge.converge_and_check(load, cohort_in_cohort=report["users"]["in_cohort"], cohort_truth=len(members),
                                        cohort_unmatched=len(unmatched), cohort_retries=history["enter-b"]["retries"])
    assert report["users"]["in_cohort"] == len(members)
    assert report["users"]["matched"] == len(members & with_records)
    assert sorted(unmatched) == sorted(members - with_records)
    assert history["enter-b"]["retries"] == 1
    # The killed batch was applied last, after the newer exit: it left those 1,000 users out.
    assert history["enter-a"]["processed_at"] > history["exit-c"]["processed_at"]
    assert (history["enter-a"]["stale"], history["stale-d"]["stale"]) == (1000, 500), history
    assert summary["faults"]["worker_restarts"] == 1
