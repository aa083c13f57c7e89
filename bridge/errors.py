"""One JSON error shape for every 4xx/5xx the API answers: {"error", "message", "details"}."""
from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from flask import Flask, g, jsonify, request
from marshmallow import Schema, fields
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the client can act on. `code` is stable and machine-readable; `message` is for people;
    `details` (a JSON object, {} when not given) holds facts about it."""

    def __init__(self, status: int, code: str, message: str, details: object | None = None, *,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details if details is not None else {}
        self.retry_after = retry_after  # seconds, sent as Retry-After (429 and 503)


class ErrorSchema(Schema):
    """The one shape of every 4xx and 5xx answer, dumped from an `ApiError`."""

    error = fields.String(required=True, attribute="code", metadata={"description": "A stable, machine-readable code."})
    message = fields.String(required=True, metadata={"description": "What went wrong, for people."})
    details = fields.Dict(required=True, metadata={"description": "Facts about the error; {} when there are none."})


ERROR_SCHEMA = ErrorSchema()


def error_response(error: ApiError):
    """`error` as the API answers it: ErrorSchema, its status, and Retry-After when it has one. The code is
    kept on the request (`g.error_code`), where the intake's metrics read it."""
    g.error_code = error.code
    response = jsonify(ERROR_SCHEMA.dump(error))
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    return response, error.status


def register_error_handlers(app: Flask,
                            explain_database_error: Callable[[DBAPIError], ApiError | None] = lambda _exc: None) -> None:
    """Answer every error in the one JSON shape. `explain_database_error` may turn a database error into an
    ApiError the client can act on (health.SchemaGate.explain: a schema not migrated); otherwise a
    deadlock or a serialization failure is a 503 `database_conflict` (the database chose this request to
    give way to a concurrent one: trying again works), an unreachable database a 503
    `database_unavailable`, and any other database error a 500."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc):
        limit = request.max_content_length or 0  # this route's limit (the cohort webhook has its own)
        return error_response(ApiError(413, "payload_too_large", f"The body is larger than the {limit:,}-byte limit.",
                                       {"limit_bytes": limit}))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(ApiError(exc.code or 500, code, exc.description or exc.name))

    @app.errorhandler(PoolTimeout)
    def _database_busy(exc: PoolTimeout):
        log.warning("no database connection free: %s", exc)
        return error_response(ApiError(503, "database_busy", "Every database connection is in use; retry shortly.",
                                       retry_after=1))

    @app.errorhandler(DBAPIError)
    def _database_unavailable(exc: DBAPIError):
        explained = explain_database_error(exc)
        if explained is not None:
            log.warning("%s", explained.message)
            return error_response(explained)
        if database_conflict(exc):
            log.warning("database conflict: %s", exc.orig)
            return error_response(ApiError(503, "database_conflict",
                                           "A concurrent change conflicted with this request; retry.", retry_after=1))
        if not database_unreachable(exc):
            return _unexpected(exc)
        log.warning("database unavailable: %s", exc.orig)
        return error_response(ApiError(503, "database_unavailable", "The database is unreachable; retry shortly.",
                                       retry_after=5))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(ApiError(500, "internal_error", "The server hit an unexpected error; it has been logged."))


def database_unreachable(exc: BaseException) -> bool:
    """True for errors that mean the database cannot be reached, rather than a bad statement, bad data or
    a conflict with a concurrent transaction (`database_conflict`)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError) and not database_conflict(exc)


# PostgreSQL's SQLSTATEs for a deadlock (deadlock_detected) and a serialization failure
# (serialization_failure): the database rolled this transaction back for a concurrent one's sake.
_CONFLICT = frozenset({"40P01", "40001"})


def database_conflict(exc: BaseException) -> bool:
    """True for a deadlock or a serialization failure: the transaction was rolled back so that a
    concurrent one could go on, and the same request tried again succeeds."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in _CONFLICT


# PostgreSQL's SQLSTATEs for a table and a column that do not exist.
_UNDEFINED_TABLE_OR_COLUMN = frozenset({"42P01", "42703"})


def missing_table_or_column(exc: BaseException) -> bool:
    """True for errors saying that a table or column does not exist (PostgreSQL's undefined_table and
    undefined_column, SQLite's `no such table`, `no such column` and `table ... has no column named`): on a
    deployment, a schema the release phase has not migrated."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) in _UNDEFINED_TABLE_OR_COLUMN:
        return True
    message = str(orig)
    return isinstance(orig, sqlite3.OperationalError) and (
        message.startswith(("no such table", "no such column")) or " has no column named " in message)
