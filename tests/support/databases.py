"""The test services: PostgreSQL and Redis, found at BRIDGE_TEST_POSTGRES_URL / BRIDGE_TEST_REDIS_URL
(defaults: the local servers). Where one is unreachable its tests are skipped, unless
BRIDGE_REQUIRE_SERVICES=1 (CI), where that is an error: CI must really exercise the production path.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import psycopg
import pytest
from sqlalchemy import create_engine, text

from bridge.db import metadata
from bridge.settings import Settings

PG_ADMIN_URL = os.environ.get("BRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("BRIDGE_REQUIRE_SERVICES") == "1"


def unavailable(what: str, exc: Exception) -> NoReturn:
    """Skip the test because `what` is unreachable (`exc` says why); fail it instead in CI."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (BRIDGE_REQUIRE_SERVICES=1) but unreachable: {exc}")
    pytest.skip(f"{what} unreachable: {exc}")


@contextmanager
def postgresql_database(name: str) -> Iterator[str]:
    """A new, empty database `name` on the test PostgreSQL server, as a URL; dropped on exit."""
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
    admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield Settings.from_env({"DATABASE_URL": f"{base}/{name}"}).database_url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def truncate(url: str) -> None:
    """Empty every table of the migrated database at `url` (the schema and its version stay)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        names = [t.name for t in reversed(metadata.sorted_tables)]
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))
        else:
            for name in names:
                conn.execute(text(f"DELETE FROM {name}"))
    engine.dispose()


def libpq_url(database_url: str) -> str:
    """A bridge PostgreSQL URL (`postgresql+psycopg://…`) as libpq, psycopg and the CLI's users write it."""
    return database_url.replace("+psycopg", "")
