"""Shared fixtures: real PostgreSQL and SQLite (both migrated with Alembic), real Redis, the Flask app.

PostgreSQL and Redis are found at BRIDGE_TEST_POSTGRES_URL / BRIDGE_TEST_REDIS_URL (defaults: the local
servers). Where one is unreachable its tests are skipped, unless BRIDGE_REQUIRE_SERVICES=1 (CI), where
that is an error: CI must really exercise the production path.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text

from bridge.apps.service import create_app_record
from bridge.db import metadata
from bridge.migrate import upgrade
from bridge.runtime import Runtime
from bridge.settings import Settings
from bridge.web import create_app

PG_ADMIN_URL = os.environ.get("BRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("BRIDGE_REQUIRE_SERVICES") == "1"
ROOT_DIR = Path(__file__).resolve().parent.parent
FIXTURES = ROOT_DIR / "fixtures"


def _unavailable(what: str, exc: Exception):
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (BRIDGE_REQUIRE_SERVICES=1) but unreachable: {exc}")
    pytest.skip(f"{what} unreachable: {exc}")


@contextmanager
def _postgresql_database(name: str) -> Iterator[str]:
    """A new, empty database `name` on the test PostgreSQL server, as a URL; dropped on exit."""
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield Settings.from_env({"DATABASE_URL": f"{base}/{name}"}).database_url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """A fresh database on the test PostgreSQL server, migrated to head, dropped at the end."""
    with _postgresql_database(f"bridge_test_{os.getpid()}") as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'bridge.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> Iterator[str]:
    """Each test using this runs twice: on the embedded SQLite and on PostgreSQL. Tables start empty."""
    url = request.getfixturevalue(f"{request.param}_url")
    _truncate(url)
    yield url


def _truncate(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        names = [t.name for t in reversed(metadata.sorted_tables)]
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))
        else:
            for name in names:
                conn.execute(text(f"DELETE FROM {name}"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated_database_url(request, tmp_path) -> Iterator[str]:
    """A new, empty database that no migration has run on, for tests of the migrations themselves."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'unmigrated.db'}"
        return
    with _postgresql_database(f"bridge_test_{os.getpid()}_unmigrated") as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    """The test Redis database, emptied."""
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    client = Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.flushdb()
    except RedisConnectionError as exc:
        _unavailable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def settings_env(database_url) -> dict[str, str]:
    """Environment-style settings for an app under test: the parametrized database, jobs run on demand."""
    return {
        "DATABASE_URL": database_url,
        "JOB_RUNNER": "manual",
        "AMPLITUDE_BASE_URL": "http://127.0.0.1:9",  # discard port: tests that deliver set a sink
        "LOG_LEVEL": "WARNING",
        "DELIVERY_LINGER_SECONDS": "0",  # drains send what is due at once; tests of the linger set it
    }


@pytest.fixture
def runtime(settings_env) -> Iterator[Runtime]:
    rt = Runtime(Settings.from_env(settings_env))
    yield rt
    rt.close()


@pytest.fixture
def app(runtime):
    flask_app = create_app(runtime=runtime)
    flask_app.config.update(TESTING=True)
    return flask_app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def tenant(runtime):
    """A freshly created app (tenant) with its plaintext tokens."""
    with runtime.session() as session:
        record, issued = create_app_record(session, name="Test app", amplitude_api_key="amp-test-key-" + uuid.uuid4().hex[:8])
        session.commit()
    return Tenant(record.id, issued.api_key, issued.cohort_token, record.amplitude_api_key)


class Tenant:
    def __init__(self, app_id: str, api_key: str, cohort_token: str, amplitude_api_key: str):
        self.app_id = app_id
        self.api_key = api_key
        self.cohort_token = cohort_token
        self.amplitude_api_key = amplitude_api_key

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def cohort_auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.cohort_token}"}
