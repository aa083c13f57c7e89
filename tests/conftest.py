"""Fixtures, registered for every test: real PostgreSQL and SQLite (both migrated with Alembic), real
Redis, the Flask app and its client, a tenant, the Amplitude-compatible sink, the OneSignal-compatible
platform server and the CLI runner.

Tests never import this module: plain helpers and test data live in the `support` package
(tests/support/), which this module uses too.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from bridge.amplitude.sink import AmplitudeSink
from bridge.migrate import upgrade
from bridge.platforms.server import PlatformServer
from bridge.runtime import Runtime
from bridge.settings import Settings
from bridge.web import create_app
from support.databases import REDIS_URL, postgresql_database, truncate, unavailable
from support.factories import Tenant, new_tenant
from support.platform import API_KEY


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """A fresh database on the test PostgreSQL server, migrated to head, dropped at the end."""
    with postgresql_database(f"bridge_test_{os.getpid()}") as url:
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
    truncate(url)
    yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated_database_url(request, tmp_path) -> Iterator[str]:
    """A new, empty database that no migration has run on, for tests of the migrations themselves."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'unmigrated.db'}"
        return
    with postgresql_database(f"bridge_test_{os.getpid()}_unmigrated") as url:
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
        unavailable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def sink() -> Iterator[AmplitudeSink]:
    """An Amplitude-compatible server on a free port (`sink.url`), accepting any API key; it keeps
    every event it ingests and when each arrived. Tests that deliver point AMPLITUDE_BASE_URL at it."""
    with AmplitudeSink(track_arrivals=True) as server:
        yield server


@pytest.fixture
def platform_server() -> Iterator[PlatformServer]:
    """A OneSignal-compatible user-tag server on a free port (`platform_server.url`), accepting only
    support.platform's API_KEY and knowing no user until told (`add_users`)."""
    with PlatformServer(api_keys={API_KEY}) as server:
        yield server


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
def cli(settings_env, monkeypatch) -> CliRunner:
    """Runs `bridge` commands in this process (`cli.invoke(bridge.cli.main, [...])`) with the test's
    settings as their environment."""
    for key, value in settings_env.items():
        monkeypatch.setenv(key, value)
    return CliRunner()


@pytest.fixture
def tenant(runtime) -> Tenant:
    """A freshly created app (tenant) with its plaintext tokens."""
    return new_tenant(runtime)
