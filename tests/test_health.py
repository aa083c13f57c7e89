"""GET /healthz tells the truth (the database, its schema, Redis, the live workers) within a bounded
time; GET /livez answers without touching anything; and a database the release phase has not migrated
gets one clear error from the API, the CLI and `bridge worker`, on SQLite and PostgreSQL alike."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from flask.testing import FlaskClient
from freezegun import freeze_time
from redis import Redis
from rq import Queue, Worker
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from bridge.apps.service import create_app_record
from bridge.db import CONNECT_TIMEOUT_SECONDS, make_engine
from bridge.health import DATABASE_STATEMENT_TIMEOUT_SECONDS, RECHECK_SECONDS, REDIS_TIMEOUT_SECONDS
from bridge.jobs import COHORTS, DELIVERY, queue_name
from bridge.migrate import downgrade, shipped_head, upgrade
from bridge.runtime import Runtime
from bridge.settings import Settings
from bridge.web import create_app
from processes import BRIDGE, ROOT, SECRET_KEY, free_port

HEAD = shipped_head()
ITEM = {"event": {"id": "e1", "kind": "message.push.sent", "timestamp": 1763856000, "subscription_id": "s1",
                  "external_id": "u1"}, "message": {"id": "m1", "name": "Welcome"}}


@pytest.fixture
def web() -> Iterator[Callable[[dict[str, str]], FlaskClient]]:
    """Builds the web app for environment-style settings and gives its test client; closed at the end."""
    runtimes: list[Runtime] = []

    def build(env: dict[str, str]) -> FlaskClient:
        runtime = Runtime(Settings.from_env({"LOG_LEVEL": "WARNING", "AMPLITUDE_BASE_URL": "http://127.0.0.1:9", **env}))
        runtimes.append(runtime)
        return create_app(runtime=runtime).test_client()

    yield build
    for runtime in runtimes:
        runtime.close()


@pytest.fixture
def rq_env(settings_env, redis_url) -> dict[str, str]:
    return {**settings_env, "JOB_RUNNER": "rq", "REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY}


@pytest.fixture
def redis(redis_url) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


def register_worker(redis: Redis, settings: Settings, *kinds: str) -> Worker:
    """An RQ worker serving the queues of `kinds`, registered in Redis as a started `bridge worker` is."""
    worker = Worker([Queue(queue_name(settings, kind), connection=redis) for kind in kinds], connection=redis)
    worker.register_birth()
    return worker


def timed(call: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    return call(), time.monotonic() - started


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel completes the handshake) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


# -- /healthz on a working deployment ----------------------------------------------------------------


def test_healthz_counts_the_live_workers_of_each_queue(web, rq_env, redis):
    client = web(rq_env)
    settings = Settings.from_env(rq_env)

    def health(workers: dict[str, int], status: str) -> dict:
        return {"status": status, "database": "ok", "schema": {"current": HEAD, "head": HEAD, "state": "ok"},
                "jobs": "rq", "redis": "ok", "workers": workers}

    answer = client.get("/healthz")
    assert (answer.status_code, answer.json) == (200, health({DELIVERY: 0, COHORTS: 0}, "degraded"))

    both = register_worker(redis, settings, DELIVERY, COHORTS)
    delivery_only = register_worker(redis, settings, DELIVERY)
    answer = client.get("/healthz")
    assert (answer.status_code, answer.json) == (200, health({DELIVERY: 2, COHORTS: 1}, "ok"))

    both.register_death()  # a worker that stopped: it leaves RQ's registry
    redis.delete(delivery_only.key)  # a worker SIGKILLed long ago: its registration outlived its expired key
    answer = client.get("/healthz")
    assert (answer.status_code, answer.json) == (200, health({DELIVERY: 0, COHORTS: 0}, "degraded"))


def test_healthz_without_redis_reports_the_database_and_its_schema(web, settings_env):
    answer = web(settings_env).get("/healthz")
    assert answer.status_code == 200
    assert answer.json == {"status": "ok", "database": "ok", "schema": {"current": HEAD, "head": HEAD, "state": "ok"},
                           "jobs": "manual"}


@pytest.mark.parametrize("redis_server", ["refusing", "silent"])
def test_an_unreachable_redis_is_a_503_within_a_bounded_time(web, sqlite_url, silent_server, redis_server):
    port = free_port() if redis_server == "refusing" else silent_server
    client = web({"DATABASE_URL": sqlite_url, "REDIS_URL": f"redis://:s3cret@127.0.0.1:{port}/0", "SECRET_KEY": SECRET_KEY})
    answer, seconds = timed(lambda: client.get("/healthz"))
    assert answer.status_code == 503 and seconds < 3 * REDIS_TIMEOUT_SECONDS
    body = answer.json
    assert (body["status"], body["database"], body["workers"]) == ("unavailable", "ok", None)
    assert body["redis"].startswith("error: ") and "\n" not in body["redis"] and "s3cret" not in answer.text


def test_an_unreachable_database_is_a_503_naming_the_error_without_the_password(web, postgresql_url):
    dead = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/bridge"
    client = web({"DATABASE_URL": dead, "JOB_RUNNER": "manual"})  # the app starts all the same
    answer = client.get("/healthz")
    assert answer.status_code == 503
    body = answer.json
    assert body["status"] == "unavailable" and body["schema"] == {"current": None, "head": HEAD, "state": "unknown"}
    assert body["database"].startswith("error: connection failed") and "\n" not in body["database"]
    assert "s3cret" not in answer.text


def test_a_database_that_does_not_answer_is_a_503_within_the_statement_timeout(web, postgresql_url):
    client = web({"DATABASE_URL": postgresql_url, "JOB_RUNNER": "manual"})
    with psycopg.connect(postgresql_url.replace("+psycopg", "")) as blocker:
        blocker.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")  # held until the block ends
        answer, seconds = timed(lambda: client.get("/healthz"))
    assert answer.status_code == 503 and seconds < DATABASE_STATEMENT_TIMEOUT_SECONDS + 2
    assert answer.json["database"] == "error: canceling statement due to statement timeout"


def test_a_new_postgresql_connection_gives_up_after_the_connect_timeout(silent_server):
    """A database host that accepts and never answers (or drops packets) fails the connection, instead of
    holding a request, a job or /healthz for minutes."""
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{silent_server}/bridge")
    failed = threading.Event()

    def connect():
        with pytest.raises(OperationalError):
            engine.connect()
        failed.set()

    threading.Thread(target=connect, daemon=True).start()
    assert failed.wait(CONNECT_TIMEOUT_SECONDS + 5)
    engine.dispose()


def test_livez_answers_without_touching_the_database_or_redis(web):
    client = web({"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/bridge",
                  "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "SECRET_KEY": SECRET_KEY})
    answer = client.get("/livez")
    assert (answer.status_code, answer.json) == (200, {"status": "ok"})


# -- a database the release phase has not migrated -----------------------------------------------------


@pytest.mark.parametrize("revision", [None, "0007"], ids=["never migrated", "behind"])
def test_an_unmigrated_database_gets_one_clear_503_until_it_is_upgraded(web, unmigrated_database_url, revision):
    url = unmigrated_database_url
    if revision is not None:
        upgrade(url, revision)
    state = "missing" if revision is None else "behind"
    with freeze_time() as clock:
        client = web({"DATABASE_URL": url, "JOB_RUNNER": "manual"})
        health = client.get("/healthz")
        assert (health.status_code, health.json["status"], health.json["database"], health.json["schema"]) == (
            503, "unavailable", "ok", {"current": revision, "head": HEAD, "state": state})
        assert client.get("/livez").status_code == 200

        answer = client.post("/v1/apps/app-1/events", json=ITEM, headers={"Authorization": "Bearer bapi_x"})
        assert answer.status_code == 503
        assert answer.json == {"error": "database_not_migrated", "details": {"current": revision, "head": HEAD},
                               "message": f"The database is not migrated (at {revision or 'none'}, latest {HEAD}): "
                                          "run `bridge db upgrade`."}

        upgrade(url)  # the release phase, late: the web process needs no restart
        clock.tick(RECHECK_SECONDS)
        assert client.post("/v1/apps/app-1/events", json=ITEM, headers={"Authorization": "Bearer bapi_x"}
                           ).json["error"] == "unauthorized"
        assert client.get("/healthz").json["status"] == "ok"


def test_embedded_mode_says_so_once_instead_of_failing_its_sweep_every_interval(web, tmp_path, caplog):
    client = web({"DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}", "SWEEP_INTERVAL_SECONDS": "0.05"})
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"the database is not migrated (at none, latest {HEAD}): run `bridge db upgrade`"]
    assert client.application.extensions["bridge"].runner.thread is None  # the sweep thread starts with a job


def test_tables_dropped_under_a_running_app_get_the_clear_error(web, unmigrated_database_url):
    """The schema is read at start, not on every request: a table missing later is recognised by the error
    it raises (PostgreSQL's undefined_table was a 500, SQLite's `no such table` a 503 database_unavailable)."""
    url = unmigrated_database_url
    upgrade(url)
    client = web({"DATABASE_URL": url, "JOB_RUNNER": "manual"})
    downgrade(url, "base")
    answer = client.post("/v1/apps/app-1/events", json=ITEM, headers={"Authorization": "Bearer bapi_x"})
    assert (answer.status_code, answer.json["error"]) == (503, "database_not_migrated")
    assert answer.json["details"] == {"current": None, "head": HEAD}


def test_a_schema_ahead_of_this_code_is_served_and_reported_degraded(web, unmigrated_database_url):
    """A release rolled back after its migration ran: the older code works on the newer schema."""
    url = unmigrated_database_url
    upgrade(url)
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    client = web({"DATABASE_URL": url, "JOB_RUNNER": "manual"})
    health = client.get("/healthz")
    assert (health.status_code, health.json["status"], health.json["schema"]) == (
        200, "degraded", {"current": "9999", "head": HEAD, "state": "ahead"})
    with client.application.extensions["bridge"].session() as session:
        app, issued = create_app_record(session, name="Shop", amplitude_api_key="amp-key")
        session.commit()
    answer = client.post(f"/v1/apps/{app.id}/events", json=ITEM, headers={"Authorization": f"Bearer {issued.api_key}"})
    assert answer.status_code == 202


@pytest.mark.parametrize("command", [["apps", "list"], ["worker"]], ids=["bridge apps list", "bridge worker"])
def test_commands_refuse_an_unmigrated_database_in_one_line(unmigrated_database_url, redis_url, command):
    url = unmigrated_database_url.replace("postgres@", "postgres:s3cret@")  # a password, as Heroku gives
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY}
    done = subprocess.run([BRIDGE, *command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    masked = url.replace("s3cret", "***")
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", f"bridge: the database at {masked} is not migrated (at none, latest {HEAD}): run `bridge db upgrade`\n")
