"""Cohort work cannot stall delivery (issue 10, items 1 and 5): a cohort job never waits in front of a
drain, a webhook batch is capped in users and bytes, a runaway statement is cancelled by the database,
and a batch whose run is cut short still counts that run, so it cannot restart forever.
(Each test failed before its protection.)"""
from __future__ import annotations

import io
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta

import httpx
import orjson
import pytest
from freezegun import freeze_time
from sqlalchemy import event, select, text
from sqlalchemy.exc import OperationalError

import bridge.runtime
from bridge import worker
from bridge.amplitude.sink import AmplitudeSink
from bridge.apps.models import App
from bridge.apps.service import create_app_record
from bridge.cohorts import jobs
from bridge.cohorts.membership import apply_batch
from bridge.cohorts.models import Cohort, CohortBatch
from bridge.delivery.models import OutboxEvent
from bridge.delivery.pusher import drain_app
from bridge.runtime import Runtime
from bridge.settings import Settings
from bridge.web import create_app
from conftest import _truncate
from processes import BRIDGE, SECRET_KEY, Process, start_web

pytestmark = pytest.mark.hostile


def wait_until(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def cohort_body(cohort_id: str, users: int, message_id: str | None = None) -> dict:
    return {"cohort_id": cohort_id, "cohort_name": "Big", "in_cohort": True, "computed_time": "1763856000",
            "message_id": message_id or f"{cohort_id}::enter::0",
            "users": [{"user_id": f"user-{i:06d}"} for i in range(users)]}


def push_event(event_id: str) -> dict:
    return {"event": {"id": event_id, "kind": "message.push.sent", "timestamp": 1763856000,
                      "subscription_id": "sub-1", "external_id": "user-1"}, "message": {"id": "m1", "name": "Hi"}}


@pytest.fixture
def sink():
    with AmplitudeSink() as server:
        yield server


@pytest.fixture
def rq_runtime(database_url, redis_url, sink, monkeypatch):
    """A Runtime on real Redis (RQ), installed as the one RQ jobs of this process use."""
    rt = Runtime(Settings.from_env({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "LOG_LEVEL": "WARNING",
                                    "SECRET_KEY": SECRET_KEY, "AMPLITUDE_BASE_URL": sink.url, "DELIVERY_LINGER_SECONDS": "0"}))
    monkeypatch.setattr(bridge.runtime, "_current", rt)
    yield rt
    rt.close()


def new_app(runtime: Runtime, name: str):
    with runtime.session() as session:
        created = create_app_record(session, name=name, amplitude_api_key=f"amp-{name}-{uuid.uuid4().hex[:8]}")
        session.commit()
    return created


def test_a_drain_runs_before_cohort_batches_queued_ahead_of_it(rq_runtime, sink):
    """One worker serving both queues (the default) takes the drain first, though three cohort batches
    of another app were queued before it: it starts with delivery, then takes turns."""
    cohort_app, cohort_tokens = new_app(rq_runtime, "cohorts")
    stream_app, stream_tokens = new_app(rq_runtime, "stream")
    client = create_app(runtime=rq_runtime).test_client()
    for n in range(3):
        response = client.post(f"/v1/apps/{cohort_app.id}/amplitude/cohorts", json=cohort_body(f"c{n}", 2000),
                               headers={"Authorization": f"Bearer {cohort_tokens.cohort_token}"})
        assert response.status_code == 200
    response = client.post(f"/v1/apps/{stream_app.id}/events", json=push_event("e1"),
                           headers={"Authorization": f"Bearer {stream_tokens.api_key}"})
    assert response.status_code == 202
    redis = rq_runtime.runner.redis
    wait_until(lambda: redis.exists(f"bridge:once:drain:{stream_app.id}"))  # the drain is queued

    worker.run(rq_runtime, burst=True)

    assert [e["insert_id"] for e in sink.events()] == ["e1"]
    with rq_runtime.session() as session:
        delivered_at = session.get(App, stream_app.id).last_delivered_at
        batches = session.execute(select(CohortBatch.state, CohortBatch.processed_at)).all()
    assert [state for state, _ in batches] == ["processed"] * 3
    assert delivered_at < min(processed_at for _, processed_at in batches)


def test_a_cohort_batch_queued_behind_drains_waits_for_one_of_them_only(rq_runtime, sink):
    """A worker serving both queues takes turns: a steady stream keeps a drain queued at all times, and
    strict priority for delivery would hold cohort batches back for as long as it lasts."""
    streams = [new_app(rq_runtime, f"stream-{n}") for n in range(3)]
    cohort_app, cohort_tokens = new_app(rq_runtime, "cohorts")
    client = create_app(runtime=rq_runtime).test_client()
    redis = rq_runtime.runner.redis
    for n, (app, tokens) in enumerate(streams):
        response = client.post(f"/v1/apps/{app.id}/events", json=push_event(f"e{n}"),
                               headers={"Authorization": f"Bearer {tokens.api_key}"})
        assert response.status_code == 202
        wait_until(lambda: redis.exists(f"bridge:once:drain:{app.id}"))  # queued in this order
    response = client.post(f"/v1/apps/{cohort_app.id}/amplitude/cohorts", json=cohort_body("c1", 100),
                           headers={"Authorization": f"Bearer {cohort_tokens.cohort_token}"})
    assert response.status_code == 200

    worker.run(rq_runtime, burst=True)

    assert sorted(e["insert_id"] for e in sink.events()) == ["e0", "e1", "e2"]
    with rq_runtime.session() as session:
        delivered = sorted(session.get(App, app.id).last_delivered_at for app, _ in streams)
        processed_at = session.execute(select(CohortBatch.processed_at)).scalar_one()
    assert delivered[0] < processed_at < delivered[1]  # after the first drain, before the second


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_membership_lookups_send_one_array_parameter_and_use_the_primary_key(runtime, tenant):
    """`IN (…5,000 parameters…)` cost PostgreSQL a parse and a plan of thousands of parameters per chunk;
    the lookup is `user_id = ANY(:array)`, an index probe per id."""
    with runtime.session() as session:
        apply_batch(session, tenant.app_id, "c1", True, 100, [f"user-{i:06d}" for i in range(20_000)])
        session.commit()
        session.execute(text("ANALYZE cohort_members"))
        session.commit()
    lookups: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "FROM cohort_members" in statement:
            lookups.append((statement, parameters))

    event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        with runtime.session() as session:
            counts = apply_batch(session, tenant.app_id, "c1", False, 200, ["user-000007", "user-019999", "nobody"])
            session.commit()
    finally:
        event.remove(runtime.engine, "before_cursor_execute", record)
    assert (counts.left, counts.already_known) == (2, 1)
    [(statement, parameters)] = lookups
    assert "= ANY (" in statement and " IN " not in statement
    arrays = [value for value in parameters.values() if isinstance(value, list)]
    assert arrays == [["user-000007", "user-019999", "nobody"]] and len(parameters) == 3
    with runtime.engine.connect() as conn:
        plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters))
    assert "Index Scan using pk_cohort_members" in plan and "user_id)::text = ANY" in plan, plan


@pytest.fixture
def settings_env(settings_env):
    return {**settings_env, "JOB_STATEMENT_TIMEOUT_SECONDS": "0.3"}


@contextmanager
def row_locked(runtime: Runtime, table: str, where: str, **params):
    """Hold a row lock from another connection, as a long transaction of someone else would."""
    with runtime.engine.connect() as conn:
        assert conn.execute(text(f"SELECT 1 FROM {table} WHERE {where} FOR UPDATE"), params).all()
        try:
            yield
        finally:
            conn.rollback()


def in_thread(func, *args, seconds: float = 10, **kwargs):
    """`func(*args, **kwargs)`'s result or exception, failing if it takes over `seconds`."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(func, *args, **kwargs).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)  # a call still blocked ends when the test lets go of its lock


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_job_statements_run_under_a_statement_timeout_in_every_transaction(runtime):
    with runtime.job_session() as session:
        for _ in range(2):  # the timeout is set again in the next transaction
            started = time.monotonic()
            with pytest.raises(OperationalError, match="statement timeout"):
                session.execute(text("SELECT pg_sleep(5)"))
            assert time.monotonic() - started < 2
            session.rollback()
    with runtime.session() as session:  # other sessions (requests) are not limited
        assert session.execute(text("SHOW statement_timeout")).scalar() == "0"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_blocked_cohort_batch_is_cancelled_counted_each_run_and_fails_after_the_last(client, runtime, tenant):
    response = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=cohort_body("c1", 3),
                           headers=tenant.cohort_auth)
    batch_id = internal_id(runtime, response.json["batch_id"])
    with row_locked(runtime, "cohorts", "app_id = :app_id", app_id=tenant.app_id):
        for attempt in range(1, jobs.MAX_ATTEMPTS + 1):
            with pytest.raises(OperationalError, match="statement timeout"):
                in_thread(jobs.process_batch, batch_id, runtime=runtime)
            with runtime.session() as session:
                batch = session.get(CohortBatch, batch_id)
            assert batch.attempts == attempt and "QueryCanceled, SQLSTATE 57014" in batch.error
            assert batch.state == ("failed" if attempt == jobs.MAX_ATTEMPTS else "received")
    assert jobs.process_batch(batch_id, runtime=runtime) is None  # failed: never run again
    syncs = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1/syncs", headers=tenant.auth).json["items"]
    assert syncs[0]["state"] == "failed" and "QueryCanceled" in syncs[0]["error"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_blocked_delivery_statement_is_cancelled(client, runtime, tenant):
    """The pusher records Amplitude's answer on the app row; a lock held on it elsewhere cancels the
    drain's statement after the timeout instead of holding the worker."""
    assert client.post(f"/v1/apps/{tenant.app_id}/events", json=push_event("e1"), headers=tenant.auth).status_code == 202
    with row_locked(runtime, "apps", "id = :app_id", app_id=tenant.app_id):
        with pytest.raises(OperationalError, match="statement timeout"):
            in_thread(drain_app, tenant.app_id, runtime=runtime)
    with runtime.session() as session:
        assert [e.state for e in session.scalars(select(OutboxEvent))] == ["pending"]  # kept for the next drain


def stored(runtime) -> tuple[int, int]:
    with runtime.session() as session:
        return (len(session.scalars(select(CohortBatch.id)).all()), len(session.scalars(select(Cohort.cohort_id)).all()))


def test_a_batch_over_the_user_cap_is_refused_with_a_413_and_nothing_is_stored(client, runtime, tenant):
    response = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=cohort_body("c1", 10_001),
                           headers=tenant.cohort_auth)
    assert response.status_code == 413
    assert response.json["error"] == "too_many_users"
    assert response.json["details"] == {"field": "users", "limit": 10_000, "received": 10_001}
    assert "10,001 users; at most 10,000" in response.json["message"]
    assert stored(runtime) == (0, 0) and runtime.runner.pending == []
    response = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=cohort_body("c1", 10_000),
                           headers=tenant.cohort_auth)
    assert response.status_code == 200 and response.json["users"] == 10_000


def test_the_body_limit_fits_a_full_batch_of_the_longest_ids_and_no_more(client, runtime, tenant):
    """10,000 user ids of 256 four-byte characters, each with a little room for its properties, pass;
    a body one byte over the limit (10,884,096 bytes by default) is refused before it is read."""
    limit = runtime.settings.cohort_max_body_bytes
    assert limit == 10_000 * (256 * 4 + 64) + 4096
    body = cohort_body("c1", 0)
    body["users"] = [{"user_id": f"{i:06d}" + "\U0001F600" * 250, "user_properties": {}} for i in range(10_000)]
    raw = orjson.dumps(body)
    raw = raw[:-1] + b',"pad":"' + b"x" * (limit - len(raw) - 9) + b'"}'
    assert len(raw) == limit
    headers = {**tenant.cohort_auth, "Content-Type": "application/json"}
    response = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", data=raw, headers=headers)
    assert response.status_code == 200 and response.json["users"] == 10_000
    over = raw[:-2] + b'x"}'
    response = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", data=over, headers=headers)
    assert response.status_code == 413 and response.json["details"] == {"limit_bytes": limit}
    assert stored(runtime) == (1, 1)


class SlowBody(io.RawIOBase):
    """A request body whose bytes arrive only once `go` is set, as from a slow client; `reading` is set
    when the server starts reading it."""

    def __init__(self, data: bytes, go: threading.Event):
        self.data = io.BytesIO(data)
        self.go = go
        self.reading = threading.Event()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.data.seek(offset, whence)

    def tell(self) -> int:
        return self.data.tell()

    def readinto(self, buffer) -> int:
        self.reading.set()
        self.go.wait(10)
        return self.data.readinto(buffer)


def test_large_bodies_beyond_the_concurrent_limit_are_answered_503_at_once(app, runtime, tenant):
    """Two large bodies being read hold the process's two slots (COHORT_MAX_CONCURRENT_BODIES); a third
    is answered 503 with Retry-After without being read, a small body still goes through, and the two
    slow ones end normally."""
    url = f"/v1/apps/{tenant.app_id}/amplitude/cohorts"
    headers = {**tenant.cohort_auth, "Content-Type": "application/json"}
    big = [orjson.dumps({**cohort_body(f"big{n}", 0), "users": [{"user_id": f"{i:06d}" + "x" * 120} for i in range(10_000)]})
           for n in range(3)]
    assert all(len(raw) > 1024 * 1024 for raw in big)
    go = threading.Event()
    bodies = [SlowBody(raw, go) for raw in big[:2]]
    pool = ThreadPoolExecutor(2)
    slow = [pool.submit(app.test_client().post, url, input_stream=body, content_length=len(raw), headers=headers)
            for body, raw in zip(bodies, big, strict=False)]
    try:
        for body in bodies:
            assert body.reading.wait(10)
        client = app.test_client()
        started = time.monotonic()
        response = client.post(url, data=big[2], headers=headers)
        assert response.status_code == 503 and response.json["error"] == "overloaded"
        assert response.headers["Retry-After"] == "2" and time.monotonic() - started < 1
        small = client.post(url, json=cohort_body("small", 10), headers=tenant.cohort_auth)
        assert small.status_code == 200
    finally:
        go.set()
        answers = [future.result(timeout=30) for future in slow]
        pool.shutdown()
    assert [answer.status_code for answer in answers] == [200, 200]
    with runtime.session() as session:
        assert sorted(session.scalars(select(CohortBatch.cohort_id))) == ["big0", "big1", "small"]
    response = app.test_client().post(url, data=big[2], headers=headers)  # the retry, once slots are free
    assert response.status_code == 200


@pytest.mark.e2e
def test_a_worker_kept_for_delivery_delivers_while_cohort_work_is_stuck_and_a_killed_run_counts(
        postgresql_url, redis_url, sink, tmp_path):
    """Real processes: `bridge web`, `bridge worker --queues cohorts` and `bridge worker --queues delivery`.
    A cohort batch stuck on a lock holds the cohorts worker; another app's event still reaches Amplitude.
    While that run lives, nothing starts the batch again; once it is SIGKILLed, the run is counted, and
    the batch is claimed again after CLAIM_GRACE and applied, once."""
    _truncate(postgresql_url)
    env = {"DATABASE_URL": postgresql_url.replace("+psycopg", ""), "REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY,
           "AMPLITUDE_BASE_URL": sink.url, "SWEEP_INTERVAL_SECONDS": "0.3", "DELIVERY_LINGER_SECONDS": "0", "LOG_LEVEL": "INFO"}
    runtime = Runtime(Settings.from_env({**env, "JOB_RUNNER": "manual"}))
    cohort_app, cohort_tokens = new_app(runtime, "cohorts")
    stream_app, stream_tokens = new_app(runtime, "stream")
    hook = {"Authorization": f"Bearer {cohort_tokens.cohort_token}"}
    web, url = start_web(env, tmp_path / "web.log")
    cohort_worker = Process([BRIDGE, "worker", "--queues", "cohorts"], env, tmp_path / "cohorts.log")
    delivery_worker = Process([BRIDGE, "worker", "--queues", "delivery"], env, tmp_path / "delivery.log")

    def batch(batch_id: int) -> CohortBatch:
        with runtime.session() as session:
            return session.get(CohortBatch, batch_id)

    try:
        first = internal_id(runtime, httpx.post(f"{url}/v1/apps/{cohort_app.id}/amplitude/cohorts", json=cohort_body("c1", 10, "m1"),
                                              headers=hook).json()["batch_id"])
        processes_wait(lambda: batch(first).state == "processed", 30, "the first batch", cohort_worker)
        with row_locked(runtime, "cohorts", "app_id = :app_id", app_id=cohort_app.id):
            stuck = internal_id(runtime, httpx.post(f"{url}/v1/apps/{cohort_app.id}/amplitude/cohorts", json=cohort_body("c1", 10, "m2"),
                                                      headers=hook).json()["batch_id"])
            processes_wait(lambda: batch(stuck).attempts == 1, 30, "the second batch's claim", cohort_worker)
            response = httpx.post(f"{url}/v1/apps/{stream_app.id}/events", json=push_event("e1"),
                                  headers={"Authorization": f"Bearer {stream_tokens.api_key}"})
            assert response.status_code == 202
            processes_wait(lambda: [e["insert_id"] for e in sink.events()] == ["e1"], 30, "the event at Amplitude",
                           delivery_worker)
            claimed = batch(stuck)
            assert (claimed.state, claimed.attempts) == ("received", 1)  # still stuck meanwhile
            # However old its claim, a run that is alive holds its batch: neither the sweep nor another run
            # starts it again.
            with freeze_time(claimed.claimed_at + 2 * jobs.CLAIM_LEASE):
                assert jobs.schedule_unprocessed(runtime) == 0
                assert jobs.process_batch(stuck, runtime=runtime) is None
            cohort_worker.signal(signal.SIGKILL)
            cohort_worker.wait(10)
        assert (batch(stuck).state, batch(stuck).attempts) == ("received", 1)  # the killed run counts
        with freeze_time(claimed.claimed_at + jobs.CLAIM_GRACE - timedelta(seconds=1)):
            assert jobs.schedule_unprocessed(runtime) == 0  # a claim just made is left to its run
        with freeze_time(claimed.claimed_at + jobs.CLAIM_GRACE + timedelta(seconds=1)):
            assert jobs.schedule_unprocessed(runtime) == 1  # its run is gone: no lock holds the batch
            runtime.runner.run_pending()
        applied = batch(stuck)
        assert (applied.state, applied.attempts, applied.entered + applied.already_known) == ("processed", 2, 10)
    finally:
        for process in (web, cohort_worker, delivery_worker):
            process.stop()
        runtime.close()


def internal_id(runtime: Runtime, public_id: str) -> int:
    """The surrogate key jobs take, of the batch the webhook answered with `public_id`."""
    with runtime.session() as session:
        return session.scalars(select(CohortBatch.id).where(CohortBatch.public_id == public_id)).one()


def processes_wait(condition, seconds: float, what: str, process: Process) -> None:
    """Poll `condition`; fail naming `what`, with `process`'s output, if it exits or time runs out."""
    def ready():
        if process.popen.poll() is not None:
            raise AssertionError(f"{what}: the process exited:\n{process.output()}")
        return condition()

    try:
        wait_until(ready, seconds)
    except AssertionError as exc:
        raise AssertionError(f"{what}: {exc}\n{process.output()[-3000:]}") from None
