"""Whether this process can do its job: what GET /healthz reports, and the schema gate that keeps API
requests off a database the release phase has not migrated.

Every check is bounded in time, so /healthz answers even when a dependency hangs: on PostgreSQL a new
connection gives up after db.CONNECT_TIMEOUT_SECONDS and each statement of the check after
DATABASE_STATEMENT_TIMEOUT_SECONDS; Redis is asked with REDIS_TIMEOUT_SECONDS socket timeouts.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from marshmallow import Schema, fields, validate
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from bridge.errors import ApiError, missing_table_or_column
from bridge.jobs import QUEUES, queue_name
from bridge.migrate import SchemaState, schema_state, shipped_head
from bridge.settings import JOB_RUNNERS

if TYPE_CHECKING:
    from bridge.runtime import Runtime
    from bridge.settings import Settings

DATABASE_STATEMENT_TIMEOUT_SECONDS = 2.0
REDIS_TIMEOUT_SECONDS = 1.0
# While the schema is known to be missing or behind, how often an API request reads it again (so that
# `bridge db upgrade` lets requests through without a restart).
RECHECK_SECONDS = 1.0


def read_schema(engine: Engine) -> SchemaState:
    """The schema state of `engine`'s database (migrate.schema_state) on one pooled connection, each
    statement cancelled after DATABASE_STATEMENT_TIMEOUT_SECONDS on PostgreSQL. Raises DBAPIError when the
    database cannot be read, and SQLAlchemy's pool TimeoutError when no connection is free."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            milliseconds = round(DATABASE_STATEMENT_TIMEOUT_SECONDS * 1000)
            connection.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")  # ends with the transaction
        return schema_state(connection)


def not_migrated(state: SchemaState) -> ApiError:
    """The 503 every API request gets while the schema is missing or behind."""
    return ApiError(503, "database_not_migrated", f"The database is {state.problem()}.",
                    {"current": state.current, "head": state.head})


class SchemaGate:
    """Keeps API requests off a database whose schema is missing or behind, with one clear 503 instead of
    whatever error the first missing table or column would raise.

    The schema is read when the app starts, by every /healthz, and when a request fails on a table or
    column that does not exist; not on every request. While it is unusable, a request reads it again at
    most once per RECHECK_SECONDS. Shared by the process's threads without a lock: each attribute is
    replaced whole, and two threads reading the schema at once cost one extra query."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._unusable: SchemaState | None = None
        self._next_read = 0.0

    def read(self) -> SchemaState:
        """Read the schema state now and remember it; raises as read_schema does."""
        self._next_read = time.monotonic() + RECHECK_SECONDS
        state = read_schema(self.engine)
        self._unusable = None if state.usable else state
        return state

    def try_read(self) -> SchemaState | None:
        """As read(), but None when the database cannot be read (it is unreachable: not this gate's concern;
        the request then gets `database_unavailable` as usual)."""
        try:
            return self.read()
        except (DBAPIError, PoolTimeout):
            self._unusable = None
            return None

    def guard(self) -> None:
        """Raise ApiError 503 `database_not_migrated` while the schema is known to be missing or behind."""
        if self._unusable is not None and time.monotonic() >= self._next_read:
            self.try_read()
        if self._unusable is not None:
            raise not_migrated(self._unusable)

    def explain(self, exc: DBAPIError) -> ApiError | None:
        """For a database error naming a table or column that does not exist: the 503 to answer if the
        schema is indeed missing or behind (read again now); None for any other error, or when the schema
        is at head (then the error is a bug, not a migration left undone)."""
        if not missing_table_or_column(exc):
            return None
        self.try_read()
        return None if self._unusable is None else not_migrated(self._unusable)


class SchemaStateSchema(Schema):
    """The database schema against the migrations this code ships (bridge.migrate.SchemaState)."""

    current = fields.String(required=True, allow_none=True,
                            metadata={"description": "The revision the database is at; null when never migrated "
                                                     "or when the database cannot be read."})
    head = fields.String(required=True, metadata={"description": "The latest revision this code ships."})
    state = fields.String(required=True, validate=validate.OneOf(["ok", "missing", "behind", "ahead", "unknown"]),
                          metadata={"description": "`missing` and `behind`: run `bridge db upgrade`. `ahead`: the "
                                                   "database was migrated by a newer release. `unknown`: the "
                                                   "database cannot be read."})


class HealthSchema(Schema):
    """What GET /healthz answers, 200 or 503 (HealthCheck.report)."""

    status = fields.String(required=True, validate=validate.OneOf(["ok", "degraded", "unavailable"]),
                           metadata={"description": "`unavailable` (503): this process cannot serve the API. "
                                                    "`degraded` (200): it can, but a queue has no live worker or the "
                                                    "schema is ahead of this code."})
    database = fields.String(required=True, metadata={"description": "`ok`, or `error: <reason>`."})
    schema = fields.Nested(SchemaStateSchema, required=True)
    jobs = fields.String(required=True, validate=validate.OneOf(list(JOB_RUNNERS)))
    redis = fields.String(metadata={"description": "With RQ only: `ok`, or `error: <reason>`."})
    workers = fields.Nested(Schema.from_dict({kind: fields.Integer(required=True) for kind in QUEUES},
                                             name="WorkersSchema"),
                            allow_none=True, metadata={"description": "With RQ only: the live workers serving "
                                                                      "each queue; null when Redis cannot be asked."})


class LivenessSchema(Schema):
    """What GET /livez answers."""

    status = fields.String(required=True, validate=validate.Equal("ok"))


HEALTH_SCHEMA = HealthSchema()


class HealthCheck:
    """GET /healthz: whether this web process can do its job, and whether the workers can do theirs."""

    def __init__(self, runtime: Runtime, gate: SchemaGate):
        settings = runtime.settings
        self.jobs = settings.job_runner
        self.gate = gate
        self.secrets = [secret for secret in (_password(settings.database_url), _password(settings.redis_url)) if secret]
        self.workers = WorkerRegistry(settings, self.secrets) if settings.job_runner == "rq" else None

    def report(self) -> tuple[dict, int]:
        """The health report as the API answers it (`HealthSchema`: `redis` and `workers` with RQ only;
        reasons are one line, without credentials), and its HTTP status.

        503 `unavailable` when this process cannot serve the API: the database unreachable, its schema
        missing or behind, or (RQ) Redis unreachable. 200 `degraded` when it can, but a queue has no live
        worker (its jobs wait, nothing is lost) or the schema is ahead of this code (a rolled-back release).
        """
        body: dict = {"status": "ok"}
        try:
            schema = self.gate.read()
        except (DBAPIError, PoolTimeout) as exc:
            body["database"] = _error_text(exc, self.secrets)
            body["schema"] = {"current": None, "head": shipped_head(), "state": "unknown"}
            unavailable, degraded = True, False
        else:
            body["database"] = "ok"
            body["schema"] = schema
            unavailable, degraded = not schema.usable, schema.state == "ahead"
        body["jobs"] = self.jobs
        if self.workers is not None:
            body["redis"], body["workers"] = self.workers.report()
            unavailable = unavailable or body["workers"] is None
            degraded = degraded or 0 in (body["workers"] or {}).values()
        body["status"] = "unavailable" if unavailable else "degraded" if degraded else "ok"
        return HEALTH_SCHEMA.dump(body), 503 if unavailable else 200


class WorkerRegistry:
    """RQ's worker registry, asked with REDIS_TIMEOUT_SECONDS socket timeouts (RQ mode only: Redis and
    RQ are imported here, not by the embedded mode)."""

    def __init__(self, settings: Settings, secrets: list[str]):
        from redis import Redis
        from rq import Queue

        self.redis = Redis.from_url(settings.redis_url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                                    socket_timeout=REDIS_TIMEOUT_SECONDS)
        self.queues = {kind: Queue(queue_name(settings, kind), connection=self.redis) for kind in QUEUES}
        self.secrets = secrets

    def report(self) -> tuple[str, dict[str, int] | None]:
        """(`ok`, the live workers serving each queue), or (`error: <reason>`, None) when Redis cannot be
        asked. A worker is live when it is registered for the queue and its worker key has not expired;
        one serving both queues counts in both."""
        from redis.exceptions import RedisError
        from rq import Worker

        try:
            registered = {kind: Worker.all_keys(queue=queue) for kind, queue in self.queues.items()}
            keys = sorted(set().union(*registered.values()))
            with self.redis.pipeline(transaction=False) as pipeline:
                for key in keys:
                    pipeline.exists(key)
                alive = {key for key, exists in zip(keys, pipeline.execute()) if exists}
        except RedisError as exc:
            return _error_text(exc, self.secrets), None
        return "ok", {kind: len(alive.intersection(keys_of_kind)) for kind, keys_of_kind in registered.items()}


def _error_text(exc: BaseException, secrets: list[str]) -> str:
    """`error: <reason>`: the first line of the driver's message, the `secrets` (passwords) masked."""
    if isinstance(exc, PoolTimeout):
        return "error: no database connection free in this process's pool"
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    reason = lines[0] if lines else type(cause).__name__
    for secret in secrets:
        reason = reason.replace(secret, "***")
    return f"error: {reason}"


def _password(url: str | None) -> str | None:
    try:
        return urlsplit(url).password if url else None
    except ValueError:
        return None
