"""`GET /metrics` for Prometheus, and the request-latency histogram of the web app.

A scrape answers, in Prometheus' text format, the counters every process wrote (`bridge.metrics`) and
the state the database holds, read at that moment by `DatabaseCollector`: right across every process and
machine, with no gauge to drift. The route exists only when METRICS_TOKEN is set (otherwise `/metrics` is a
404 like any unknown URL), and answers only `Authorization: Bearer <METRICS_TOKEN>` (compared in constant
time); anything else is a 401 in the one error shape.
"""
from __future__ import annotations

import hmac
import logging
import time

from flask import Flask, Response, g, request
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from bridge import metrics
from bridge.apidoc import documented
from bridge.apps.models import App
from bridge.cohorts.models import CohortBatch, PlatformTag
from bridge.db import limit_statements, utcnow
from bridge.delivery.models import DEAD, PENDING, OutboxEvent
from bridge.errors import ApiError
from bridge.runtime import Runtime

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
# PostgreSQL cancels a scrape's statement that runs longer (s); the scrape then reports the database down.
SCRAPE_STATEMENT_TIMEOUT_SECONDS = 5.0


def install(app: Flask, runtime: Runtime) -> None:
    """Time every request of `app` (but scrapes) into bridge_http_request_duration_seconds, and serve
    /metrics when METRICS_TOKEN is set. Call it before the app's other request hooks, so that a request
    a hook refuses (an unmigrated schema's 503) is timed too."""

    @app.before_request
    def _start_clock():
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response):
        started = g.get("metrics_started")
        rule = request.url_rule
        if started is not None and (rule is None or rule.rule != METRICS_PATH):
            metrics.HTTP_REQUEST_DURATION.labels(
                rule.rule if rule is not None else "unmatched", metrics.method_label(request.method),
                metrics.status_class(response.status_code)).observe(time.perf_counter() - started)
        return response

    token = runtime.settings.metrics_token
    if not token:
        return
    expected = f"Bearer {token}".encode()
    database = DatabaseCollector(runtime)

    @app.get(METRICS_PATH)
    @documented("Prometheus metrics (with METRICS_TOKEN only; `Authorization: Bearer <METRICS_TOKEN>`)",
                answer={"type": "string"}, media_types=("text/plain",), errors=(401,))
    def prometheus_metrics():
        """The metrics in Prometheus' text format 0.0.4; 401 without the operator's token."""
        presented = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(presented, expected):
            raise ApiError(401, "unauthorized", "Send METRICS_TOKEN as 'Authorization: Bearer <token>'.")
        body, content_type = metrics.exposition(database)
        return Response(body, content_type=content_type)


class DatabaseCollector:
    """The state the database holds, as gauges, read when Prometheus scrapes (a few grouped queries, each
    cancelled on PostgreSQL after SCRAPE_STATEMENT_TIMEOUT_SECONDS):

    - bridge_outbox_pending_events{app}: events waiting for Amplitude (due or backing off);
    - bridge_outbox_oldest_pending_age_seconds{app}: seconds since the oldest of them was accepted (0: none);
    - bridge_outbox_dead_events{app, reason}: dead letters held (until replayed);
    - bridge_cohort_batches{state}: cohort webhook batches by state (received, processed, failed);
    - bridge_platform_tags{app, state}: platform tags by state (pending, synced, not_on_platform, failed);
    - bridge_metrics_database_up: 1 when these were read, 0 when the database failed (then only this one).

    Every app has its pending and age series, 0 when nothing waits, so an alert on them never sees a
    series vanish."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def collect(self):
        """The gauges, read now; only bridge_metrics_database_up (0) when the database cannot be read."""
        try:
            families = self._read()
        except SQLAlchemyError as exc:
            log.warning("metrics: reading the database failed: %s", getattr(exc, "orig", exc))
            families = []
        up = GaugeMetricFamily("bridge_metrics_database_up",
                               "1 when this scrape read the database's gauges, 0 when reading it failed.")
        up.add_metric([], 1 if families else 0)
        yield from families
        yield up

    def _read(self) -> list[GaugeMetricFamily]:
        outbox = OutboxEvent.__table__.c
        batches = CohortBatch.__table__.c
        tags = PlatformTag.__table__.c
        with self.runtime.session() as session:
            limit_statements(session, SCRAPE_STATEMENT_TIMEOUT_SECONDS)
            apps = session.scalars(select(App.id)).all()
            pending = {app_id: (count, oldest) for app_id, count, oldest in session.execute(
                select(outbox.app_id, func.count(), func.min(outbox.created_at))
                .where(outbox.state == PENDING).group_by(outbox.app_id))}
            dead = session.execute(select(outbox.app_id, outbox.reason, func.count())
                                   .where(outbox.state == DEAD).group_by(outbox.app_id, outbox.reason)).all()
            batch_states = session.execute(select(batches.state, func.count()).group_by(batches.state)).all()
            tag_states = session.execute(select(tags.app_id, tags.state, func.count())
                                         .group_by(tags.app_id, tags.state)).all()
            session.rollback()
        now = utcnow()
        waiting = GaugeMetricFamily("bridge_outbox_pending_events", "Events waiting for Amplitude, by app.",
                                    labels=["app"])
        age = GaugeMetricFamily("bridge_outbox_oldest_pending_age_seconds",
                                "Seconds since the oldest event waiting for Amplitude was accepted, by app (0: none waits).",
                                labels=["app"])
        for app_id in sorted({*apps, *pending}):
            count, oldest = pending.get(app_id, (0, None))
            waiting.add_metric([app_id], count)
            age.add_metric([app_id], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        held = GaugeMetricFamily("bridge_outbox_dead_events", "Dead letters held (until replayed), by app and reason.",
                                 labels=["app", "reason"])
        for app_id, reason, count in dead:
            held.add_metric([app_id, reason or "unknown"], count)
        cohort = GaugeMetricFamily("bridge_cohort_batches", "Cohort webhook batches, by state.", labels=["state"])
        for state, count in batch_states:
            cohort.add_metric([state], count)
        platform = GaugeMetricFamily("bridge_platform_tags", "Platform user tags, by app and state.",
                                     labels=["app", "state"])
        for app_id, state, count in tag_states:
            platform.add_metric([app_id, state], count)
        return [waiting, age, held, cohort, platform]
