"""Database plumbing shared by every feature: engine, sessions, time, and dialect-neutral upserts."""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Integer, TypeDecorator, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel, create_engine

# Stable constraint names on every database, so Alembic migrations agree with the models.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = SQLModel.metadata

# How long a new PostgreSQL connection may take before it fails (libpq's connect_timeout), unless
# DATABASE_URL sets its own: without it, a database host that drops packets holds a request, a job or
# /healthz for minutes.
CONNECT_TIMEOUT_SECONDS = 5

# 64-bit ids on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
BIGINT_PK = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    """Now, as an aware UTC datetime: the one representation the code handles."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator):
    """A timestamp that is always an aware UTC datetime in Python: `timestamptz` on PostgreSQL,
    an ISO string in UTC on SQLite (which has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def make_engine(url: str, *, null_pool: bool = False) -> Engine:
    """An engine for `url`. SQLite is made durable and concurrent-friendly (WAL, full sync, busy wait).

    `null_pool` opens a connection per use and keeps none: for one-shot commands such as migrations.
    A new PostgreSQL connection fails after CONNECT_TIMEOUT_SECONDS unless the URL sets `connect_timeout`.
    SQL parameters are hidden in database errors (`hide_parameters`): they hold user ids and
    identifiers, and those errors reach the logs and RQ's failed-job records.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            hide_parameters=True,
            connect_args={"check_same_thread": False, "timeout": 30},
            **({"poolclass": NullPool} if null_pool else {}),
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # psycopg prepares a statement run 5 times; PostgreSQL may then plan it once for any parameters, and
    # that generic plan of the registry's per-key probe scanned the whole table as it grew (seconds per
    # intake group). Custom plans keep the prepared statements and plan for the values at hand.
    connect_args: dict[str, object] = {"options": "-c plan_cache_mode=force_custom_plan"}
    if "connect_timeout" not in make_url(url).query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    if null_pool:
        return create_engine(url, poolclass=NullPool, connect_args=connect_args, hide_parameters=True)
    # A request waits at most 5 s for a free connection, then gets a 503 with Retry-After (errors.py).
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_recycle=1800, pool_timeout=5,
                         connect_args=connect_args, hide_parameters=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_session_factory(engine: Engine, info: dict[str, object] | None = None) -> sessionmaker[Session]:
    """Sessions on `engine`, each starting with a copy of `info` as its `Session.info` (bridge.jobs.session_info:
    where its commits send the jobs they ask for)."""
    return sessionmaker(bind=engine, expire_on_commit=False, info=info)


def dialect_insert(session: Session, table):
    """An INSERT for `table` that supports ON CONFLICT on the session's database."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def limit_statements(session: Session, seconds: float) -> Session:
    """Make every transaction of `session` run with PostgreSQL's `statement_timeout` at `seconds`
    (`SET LOCAL`, so it ends with the transaction and never leaks to the pool): a statement running
    longer is cancelled by the database and raises `OperationalError` (QueryCanceled). A no-op on SQLite,
    which has no statement timeout. Returns `session`."""
    milliseconds = max(1, round(seconds * 1000))

    def set_timeout(_session, _transaction, connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")

    event.listen(session, "after_begin", set_timeout)
    return session


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
