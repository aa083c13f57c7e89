"""Cohort jobs: apply each stored webhook batch to the cohort's membership, exactly once.

The database is the record of what is left to do: a batch stays `received` until the transaction that
applies it commits, and the periodic sweep re-queues batches that have waited too long (a lost job, a
flushed Redis, a worker killed mid-batch).
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import timedelta

import orjson
from sqlalchemy import select, update

from bridge import failures
from bridge.cohorts.membership import BatchCounts, apply_batch
from bridge.cohorts.models import FAILED, PROCESSED, RECEIVED, Cohort, CohortBatch
from bridge.db import utcnow
from bridge.runtime import Runtime, current

log = logging.getLogger(__name__)

B = CohortBatch.__table__.c
C = Cohort.__table__.c
# A batch is queued at most once at a time; the job forgets its key as it starts.
_BATCH_KEY_TTL = 600.0
# A batch still `received` this long after it arrived is queued again by the sweep.
RESCHEDULE_AFTER = timedelta(seconds=30)
_SWEEP_LIMIT = 1000
# After this many failed runs a batch is marked failed (shown in the sync history) and not retried.
MAX_ATTEMPTS = 10


def batch_key(batch_id: int) -> str:
    return f"cohort-batch:{batch_id}"


def schedule_batch(runtime: Runtime, batch_id: int) -> bool:
    """Queue `process_batch(batch_id)` unless it is already waiting. True if queued."""
    return runtime.runner.enqueue_once(batch_key(batch_id), _BATCH_KEY_TTL, process_batch, batch_id)


def process_batch(batch_id: int, runtime: Runtime | None = None) -> BatchCounts | None:
    """Job: apply a `received` batch to its cohort and record what it did, in one transaction.

    Returns the counts, or None when the batch is unknown or already applied (running twice is
    harmless). Batches of one cohort are applied one after the other; different cohorts in parallel.
    """
    runtime = runtime or current()
    runtime.runner.forget(batch_key(batch_id))
    now = utcnow()
    with runtime.session() as session:
        # Claiming the batch is its state change: a concurrent run finds nothing to claim, and a
        # failure rolls the claim back so the sweep retries.
        batch = session.execute(
            update(CohortBatch.__table__)
            .where(B.id == batch_id, B.state == RECEIVED)
            .values(state=PROCESSED, processed_at=now, error=None)
            .returning(B.app_id, B.cohort_id, B.cohort_name, B.in_cohort, B.computed_time, B.payload)
        ).first()
        if batch is None:
            session.rollback()
            return None
        # Updating the cohort row locks it until commit: the cohort's batches are applied one at a time.
        session.execute(
            update(Cohort.__table__)
            .where(C.app_id == batch.app_id, C.cohort_id == batch.cohort_id)
            .values(name=batch.cohort_name, updated_at=now)
        )
        try:
            counts = apply_batch(session, batch.app_id, batch.cohort_id, batch.in_cohort, batch.computed_time,
                                 orjson.loads(batch.payload))
        except Exception as exc:
            session.rollback()
            _record_error(runtime, batch_id, exc)
            raise
        session.execute(update(CohortBatch.__table__).where(B.id == batch_id).values(**asdict(counts)))
        session.commit()
    log.info("cohort batch %s applied to %s/%s: %s", batch_id, batch.app_id, batch.cohort_id, counts)
    return counts


def schedule_unprocessed(runtime: Runtime) -> int:
    """Queue every batch still `received` RESCHEDULE_AFTER after it arrived (up to 1,000 per call);
    returns how many were queued. Used by the periodic sweep."""
    cutoff = utcnow() - RESCHEDULE_AFTER
    with runtime.session() as session:
        ids = list(session.scalars(
            select(B.id).where(B.state == RECEIVED, B.received_at < cutoff).order_by(B.received_at).limit(_SWEEP_LIMIT)
        ))
    return sum(1 for batch_id in ids if schedule_batch(runtime, batch_id))


def _record_error(runtime: Runtime, batch_id: int, exc: Exception) -> None:
    """Keep the failure on the batch, where the sync history shows it: its type and place, not its
    message, which may quote the users' ids (`failures.describe`). The sweep retries a `received`
    batch; after MAX_ATTEMPTS failures it is marked failed instead."""
    error = failures.describe(exc)
    with runtime.session() as session:
        attempts = session.execute(
            update(CohortBatch.__table__).where(B.id == batch_id)
            .values(error=error[:2000], attempts=B.attempts + 1).returning(B.attempts)
        ).scalar_one()
        if attempts >= MAX_ATTEMPTS:
            session.execute(update(CohortBatch.__table__).where(B.id == batch_id).values(state=FAILED))
        session.commit()
    log.warning("cohort batch %s failed (attempt %d of %d): %s", batch_id, attempts, MAX_ATTEMPTS, error)
