"""Each cohort's report as last computed, for the dashboard: a 1,000,000-user cohort's report takes
seconds (one aggregate over its members and the channel registry), too long for a page.

The job `refresh_report` computes the report and keeps it, with when its numbers were read
(`computed_at`) and the cohort's `updated_at` they were read with. It is queued:
- by the periodic sweep (`schedule_stale_reports`), for each cohort without a snapshot, or whose
  cohort has changed since (a batch applied moves `updated_at`), at most once every
  COHORT_REPORT_REFRESH_SECONDS per cohort, and not while a batch of it that arrived within that time
  waits to be applied: a sync arriving as 100 batches is not computed 100 times, and a new cohort's
  first report is not computed before its first batch is applied;
- by the dashboard's "Recompute now" (`schedule_refresh`).
A cohort has at most one refresh waiting or running at a time: its key is held until the job ends, so the
sweep does not queue a second one while the first computes.

What a snapshot cannot notice: the channel registry (an import, a new subscription) and erasures change
the report without moving the cohort's `updated_at`. Its `computed_at` says how old its numbers are;
the API's report (`GET /v1/apps/<app_id>/cohorts/<cohort_id>`) is computed on each read.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session

from bridge.cohorts import report
from bridge.cohorts.models import RECEIVED, Cohort, CohortBatch, CohortReportSnapshot
from bridge.cohorts.schemas import CohortReportSchema
from bridge.db import dialect_insert, is_postgresql, utcnow
from bridge.jobs import COHORTS, JOB_TIMEOUT_SECONDS
from bridge.runtime import Runtime, current

log = logging.getLogger(__name__)

snapshots = CohortReportSnapshot.__table__.c
cohorts = Cohort.__table__.c
batches = CohortBatch.__table__.c
# A refresh's key is held while it waits and while it runs (the job forgets it as it ends); a run killed
# before it could forget it frees it after this.
_KEY_TTL = float(JOB_TIMEOUT_SECONDS)
_SWEEP_LIMIT = 1000


def refresh_key(app_id: str, cohort_id: str) -> str:
    return f"cohort-report:{app_id}:{cohort_id}"


def refresh_interval(runtime: Runtime) -> timedelta:
    """The least time between two refreshes the sweep queues for one cohort (COHORT_REPORT_REFRESH_SECONDS)."""
    return timedelta(seconds=runtime.settings.cohort_report_refresh_seconds)


def latest(session: Session, app_id: str, cohort_id: str) -> CohortReportSnapshot | None:
    """The cohort's snapshot, or None when its report was never computed."""
    return session.get(CohortReportSnapshot, (app_id, cohort_id))


def schedule_refresh(runtime: Runtime, app_id: str, cohort_id: str) -> bool:
    """Queue `refresh_report` for the cohort now, unless one is already waiting or running. True if queued.
    It writes nothing, so there is no commit to wait for; raises what the queue raises (Redis down)."""
    return runtime.runner.enqueue_once(COHORTS, refresh_key(app_id, cohort_id), _KEY_TTL, refresh_report,
                                       app_id, cohort_id)


def refresh_report(app_id: str, cohort_id: str, runtime: Runtime | None = None) -> datetime | None:
    """Job: compute the cohort's report and keep it as its snapshot, unless a snapshot read later is
    already kept (running twice is harmless). Returns the `computed_at` of what it computed, or None
    when there is no such cohort."""
    runtime = runtime or current()
    try:
        with runtime.job_session() as session:
            started = time.perf_counter()
            computed = _compute(session, app_id, cohort_id)
            session.commit()  # ends the reading transaction: the snapshot is written in one of its own
            if computed is None:
                log.info("cohort report of %s/%s not computed: there is no such cohort", app_id, cohort_id)
                return None
            _store(session, computed)
            session.commit()
    finally:
        runtime.runner.forget(refresh_key(app_id, cohort_id))
    log.info("cohort report of %s/%s computed in %.2f s", app_id, cohort_id, time.perf_counter() - started)
    return computed["computed_at"]


def _compute(session: Session, app_id: str, cohort_id: str) -> dict[str, object] | None:
    """The snapshot's row: the report as the API dumps it (without its recent syncs), read after the
    cohort's `updated_at`, so that it holds at least what that time says. On PostgreSQL every number is
    read from one snapshot of the database (REPEATABLE READ)."""
    if is_postgresql(session):
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    computed_at = utcnow()
    cohort = session.get(Cohort, (app_id, cohort_id))
    if cohort is None:
        return None
    body = CohortReportSchema().dump(report.cohort_report(session, cohort))
    return {"app_id": app_id, "cohort_id": cohort_id, "report": body, "cohort_updated_at": cohort.updated_at,
            "computed_at": computed_at}


def _store(session: Session, row: dict[str, object]) -> None:
    """Insert or replace the cohort's snapshot, unless the one kept was read later (flushed)."""
    table = CohortReportSnapshot.__table__
    insert = dialect_insert(session, table).values(**row)
    session.execute(insert.on_conflict_do_update(
        index_elements=[table.c.app_id, table.c.cohort_id],
        set_={name: insert.excluded[name] for name in ("report", "cohort_updated_at", "computed_at")},
        where=table.c.computed_at < insert.excluded.computed_at,
    ))


def schedule_stale_reports(runtime: Runtime) -> int:
    """Queue a refresh for every cohort without a snapshot, and for every cohort changed since its
    snapshot was computed once that is COHORT_REPORT_REFRESH_SECONDS old, unless a batch of the cohort
    received within that time waits to be applied (up to 1,000 per call, the longest-changed first);
    returns how many were queued. Used by the periodic sweep."""
    due_before = utcnow() - refresh_interval(runtime)
    batch_waiting = exists().where(batches.app_id == cohorts.app_id, batches.cohort_id == cohorts.cohort_id,
                                   batches.state == RECEIVED, batches.received_at > due_before)
    with runtime.session() as session:
        stale = session.execute(
            select(cohorts.app_id, cohorts.cohort_id)
            .outerjoin(CohortReportSnapshot.__table__,
                       and_(snapshots.app_id == cohorts.app_id, snapshots.cohort_id == cohorts.cohort_id))
            .where(or_(snapshots.computed_at.is_(None),
                       and_(snapshots.cohort_updated_at < cohorts.updated_at, snapshots.computed_at <= due_before)),
                   ~batch_waiting)
            .order_by(cohorts.updated_at).limit(_SWEEP_LIMIT)
        ).all()
    return sum(1 for app_id, cohort_id in stale if schedule_refresh(runtime, app_id, cohort_id))
