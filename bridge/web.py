"""The Flask application factory: API, webhooks, health check and the OpenAPI document."""
from __future__ import annotations

import gc
import logging
import os
import uuid
from collections.abc import Mapping

from flask import Flask, g, request
from werkzeug.routing import BaseConverter, PathConverter

from bridge import logs, request_scope, scrape
from bridge.apidoc import documented
from bridge.apps.auth import TokenCache
from bridge.apps.views import bp as apps_bp
from bridge.cohorts.views import bp as cohorts_bp
from bridge.dashboard import views as dashboard
from bridge.delivery.views import bp as delivery_bp
from bridge.errors import register_error_handlers
from bridge.health import HealthCheck, HealthSchema, LivenessSchema, SchemaGate
from bridge.intake.views import bp as intake_bp
from bridge.openapi import build_document
from bridge.privacy.views import bp as privacy_bp
from bridge.registry.views import bp as registry_bp
from bridge.runtime import Runtime, install
from bridge.settings import Settings

log = logging.getLogger(__name__)


class PathSegment(BaseConverter):
    """The default `<name>` of a route, except that a segment holding NUL matches nothing (404): no id
    holds one, and PostgreSQL refuses it in a query."""

    regex = "[^/\x00]+"


class IdWithSlashes(PathConverter):
    """`<any_id:name>`: the rest of the path, for an id that may hold "/" (sent as %2F, which the server
    decodes first). Any character is taken, a newline too, so that the view refuses a bad id by name."""

    regex = "[^/][\\s\\S]*?"


class BridgeFlask(Flask):
    """Flask, owning each request's unit of work: the session a view used (`request_scope.get_db`) is
    committed as soon as the view returns, so a failed commit is answered like an error of the view; a
    view that raises leaves it to the teardown, which rolls it back."""

    def dispatch_request(self):
        response = super().dispatch_request()
        request_scope.commit()
        return response


def create_app(overrides: Mapping[str, str] | None = None, runtime: Runtime | None = None) -> Flask:
    """Build the web app. `overrides` are environment-style settings laid over the process environment."""
    if runtime is None:
        settings = Settings.from_env({**os.environ, **(overrides or {})})
        runtime = install(Runtime(settings))
    settings = runtime.settings
    logs.configure(settings.log_level, log_format=settings.log_format)

    app = BridgeFlask(__name__, static_folder=None)
    app.url_map.converters["default"] = PathSegment
    app.url_map.converters["any_id"] = IdWithSlashes
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    app.extensions["bridge"] = runtime
    app.extensions["bridge.tokens"] = TokenCache(settings.auth_cache_seconds)  # see apps/auth.py
    schema_gate = SchemaGate(runtime.engine)
    register_error_handlers(app, schema_gate.explain)
    scrape.install(app, runtime)  # first: its clock starts before the other hooks run (bridge/scrape.py)
    health = HealthCheck(runtime, schema_gate)
    schema_at_start = schema_gate.try_read()  # None: the database is unreachable for now
    if schema_at_start is not None and not schema_at_start.usable:
        log.warning("the database is %s", schema_at_start.problem())

    @app.before_request
    def _request_id():
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming[:64] if incoming.isprintable() and incoming else uuid.uuid4().hex

    @app.before_request
    def _schema_migrated():
        if request.blueprint is not None:  # the API; not /healthz, /livez or /openapi.json
            schema_gate.guard()

    @app.after_request
    def _echo_request_id(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response

    @app.teardown_request
    def _close_session(_exc):
        request_scope.close()

    @app.get("/healthz")
    @documented("Health check (readiness)", answer=HealthSchema, unavailable=HealthSchema)
    def healthz():
        """Readiness and monitoring: the database, its schema, Redis and the workers (health.HealthCheck);
        503 when this process cannot serve the API."""
        return health.report()

    @app.get("/livez")
    @documented("Liveness: the process answers", answer=LivenessSchema)
    def livez():
        """Liveness: the process answers. No I/O, so a dependency's outage never restarts the process."""
        return LivenessSchema().dump({"status": "ok"})

    for blueprint in (apps_bp, intake_bp, delivery_bp, registry_bp, cohorts_bp, privacy_bp):
        app.register_blueprint(blueprint)
    if settings.admin_token:  # the operator dashboard's pages; without a token, /dashboard is a 404
        dashboard.init_app(app, settings)

    @app.get("/openapi.json")
    @documented("This document", answer={"type": "object"})
    def openapi_document():
        """The OpenAPI 3 document of this API, built from its routes; public, like /healthz."""
        return build_document(app)

    if settings.job_runner == "thread" and (schema_at_start is None or schema_at_start.usable):
        # On a database not migrated yet the thread would fail its sweep every interval; it starts with
        # the first job queued instead (once `bridge db upgrade` has run, the API's requests queue them).
        runtime.runner.start()  # type: ignore[attr-defined]
    # What start-up made (routes, schemas, SQLAlchemy's metadata) lives as long as the process: moved out
    # of the garbage collector's view, it no longer lengthens the full collections that pause every thread.
    gc.freeze()
    return app
