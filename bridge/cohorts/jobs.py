"""Cohort jobs: apply each stored webhook batch to the cohort's membership, exactly once.

The database is the record of what is left to do: a batch stays `received` until the transaction that
applies it commits, and the periodic sweep re-queues batches that have waited too long (a lost job, a
flushed Redis, a worker killed mid-batch).

A run counts itself before it does anything: the claim (attempt + 1, `claimed_at`) commits on its own,
so a run that is killed, times out or loses its database still counts, and a batch that always kills
its run ends `failed` after MAX_ATTEMPTS instead of restarting forever. No run starts a batch that a
live run holds:
- on PostgreSQL a run holds its batch's row lock while it applies it; a claim older than
  COHORT_RESCHEDULE_SECONDS whose row is not locked belongs to a run that died (the database released
  its lock);
- on SQLite, which has no row locks, a claim holds for CLAIM_LEASE, longer than a run can last (RQ
  stops a job after JOB_TIMEOUT_SECONDS).
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime, timedelta

import orjson
from sqlalchemy import Select, case, or_, select, update
from sqlalchemy.orm import Session

from bridge import failures, metrics
from bridge.cohorts import tagging
from bridge.cohorts.membership import BatchCounts, apply_batch
from bridge.cohorts.tagger import tag_after_commit
from bridge.cohorts.models import FAILED, PROCESSED, RECEIVED, Cohort, CohortBatch
from bridge.db import is_postgresql, utcnow
from bridge.jobs import COHORTS, JOB_TIMEOUT_SECONDS, after_commit_once
from bridge.runtime import Runtime, current

log = logging.getLogger(__name__)

batches = CohortBatch.__table__.c
cohorts = Cohort.__table__.c
# A batch is queued at most once at a time; the job forgets its key as it starts.
_BATCH_KEY_TTL = 600.0
_SWEEP_LIMIT = 1000
# After this many runs a batch is marked failed (shown in the sync history) and not retried.
MAX_ATTEMPTS = 10
# SQLite: how long a run's claim keeps other runs off its batch: longer than any run can last.
CLAIM_LEASE = timedelta(seconds=JOB_TIMEOUT_SECONDS + 60)
INTERRUPTED = ("A run was interrupted before it could finish or record an error (its worker stopped or was "
               "killed, or it ran past the job timeout).")


def reschedule_after(runtime: Runtime) -> timedelta:
    """How long a batch is left alone before the sweep queues it again (COHORT_RESCHEDULE_SECONDS): after
    it arrived, its job may be lost; on PostgreSQL, a claim this old whose row is not locked is a dead
    run's (a live run locks the row right after claiming it)."""
    return timedelta(seconds=runtime.settings.cohort_reschedule_seconds)


def batch_key(batch_id: int) -> str:
    return f"cohort-batch:{batch_id}"


def batch_after_commit(session: Session, batch_id: int) -> None:
    """Queue `process_batch(batch_id)` when the transaction of `session` commits, unless it is already
    waiting then (`bridge.jobs.after_commit_once`); nothing if it rolls back."""
    after_commit_once(session, COHORTS, batch_key(batch_id), _BATCH_KEY_TTL, process_batch, batch_id)


def schedule_batch(runtime: Runtime, batch_id: int) -> bool:
    """Queue `process_batch(batch_id)` now, unless it is already waiting. True if queued. For batches
    already committed (the sweep); a transaction uses `batch_after_commit`."""
    return runtime.runner.enqueue_once(COHORTS, batch_key(batch_id), _BATCH_KEY_TTL, process_batch, batch_id)


def process_batch(batch_id: int, runtime: Runtime | None = None) -> BatchCounts | None:
    """Job: claim a `received` batch (counting the attempt, committed at once), then apply it to its
    cohort and record what it did, in one transaction.

    Returns the counts, or None when there is nothing to do: the batch is unknown, applied, failed, or
    held by a live run (running twice is harmless). Batches of one cohort are
    applied one after the other; different cohorts in parallel. A failure is recorded on the batch
    and raised."""
    runtime = runtime or current()
    runtime.runner.forget(batch_key(batch_id))
    with runtime.job_session() as session:
        claim = _claim(session, batch_id, reschedule_after(runtime))
        if claim is None:
            metrics.COHORT_BATCH_RUNS.labels("skipped").inc()
            return None
        try:
            counts = _apply(session, batch_id, claim)
        except Exception as exc:
            metrics.COHORT_BATCH_RUNS.labels("failed").inc()
            _roll_back(session)
            _record_error(runtime, batch_id, claim.claimed_at, exc)
            raise
    metrics.COHORT_BATCH_RUNS.labels("skipped" if counts is None else "processed").inc()
    if counts is not None:
        log.info("cohort batch %s applied to %s/%s: %s", batch_id, claim.app_id, claim.cohort_id, counts)
    return counts


def _claim(session: Session, batch_id: int, grace: timedelta):
    """Count a run of the batch and mark it claimed, in a transaction of its own. The claimed row
    (app_id, cohort_id, cohort_name, in_cohort, computed_time, user_ids, claimed_at), or None."""
    now = utcnow()
    claimable = _unclaimed(session, now, grace, batches.id == batch_id, batches.state == RECEIVED,
                           batches.attempts < MAX_ATTEMPTS)
    claim = session.execute(
        update(CohortBatch.__table__)
        .where(batches.id.in_(claimable.scalar_subquery()))
        # A claim still set is that of a run that ended without a word: say so in the sync history.
        .values(attempts=batches.attempts + 1, claimed_at=now,
                error=case((batches.claimed_at.is_not(None), INTERRUPTED), else_=batches.error))
        .returning(batches.app_id, batches.cohort_id, batches.cohort_name, batches.in_cohort, batches.computed_time,
                   batches.user_ids, batches.claimed_at)
    ).first()
    session.commit()
    return claim


def _apply(session: Session, batch_id: int, claim) -> BatchCounts | None:
    """Apply the claimed batch and mark it processed, committed together; None (nothing written) if
    another run has claimed or applied it meanwhile."""
    now = utcnow()
    # The batch's row lock, held until commit, tells other runs on PostgreSQL that this one is alive.
    mine = session.execute(select(batches.id).where(batches.id == batch_id, batches.state == RECEIVED,
                                                    batches.claimed_at == claim.claimed_at)
                           .with_for_update()).first()
    if mine is None:
        session.rollback()
        return None
    # Updating the cohort row locks it until commit: the cohort's batches are applied one at a time.
    session.execute(
        update(Cohort.__table__)
        .where(cohorts.app_id == claim.app_id, cohorts.cohort_id == claim.cohort_id)
        .values(name=claim.cohort_name, updated_at=now)
    )
    changed: list[tuple[str, bool, int]] = []
    counts = apply_batch(session, claim.app_id, claim.cohort_id, claim.in_cohort, claim.computed_time,
                         orjson.loads(claim.user_ids), changed)
    # The platform's tags follow the membership in this same transaction (sent after the commit).
    if tagging.record_changes(session, claim.app_id, claim.cohort_id, changed):
        tag_after_commit(session, claim.app_id)
    done = session.execute(
        update(CohortBatch.__table__)
        .where(batches.id == batch_id, batches.state == RECEIVED, batches.claimed_at == claim.claimed_at)
        .values(state=PROCESSED, processed_at=utcnow(), error=None, **asdict(counts))
    )
    if done.rowcount != 1:  # this run outlived its claim, and another run took the batch
        session.rollback()
        log.warning("cohort batch %s: claimed again by another run; this run's work is discarded", batch_id)
        return None
    session.commit()
    return counts


def _unclaimed(session: Session, now: datetime, grace: timedelta, *conditions) -> Select:
    """The ids of batches matching `conditions` that no live run holds: never claimed, given up by a run
    that recorded its failure, or claimed by a run that died (see the module's docstring; on PostgreSQL,
    a claim is left alone for `grace`). On PostgreSQL the rows are locked (SKIP LOCKED) until the
    caller's transaction ends."""
    if is_postgresql(session):
        query = select(batches.id).where(*conditions,
                                         or_(batches.claimed_at.is_(None), batches.claimed_at < now - grace))
        return query.with_for_update(skip_locked=True)
    return select(batches.id).where(*conditions,
                                    or_(batches.claimed_at.is_(None), batches.claimed_at < now - CLAIM_LEASE))


def _roll_back(session: Session) -> None:
    try:
        session.rollback()
    except Exception:  # noqa: BLE001 - a broken connection: the attempt is counted all the same
        log.warning("rollback failed", exc_info=True)


def schedule_unprocessed(runtime: Runtime) -> int:
    """Queue every batch still `received` `reschedule_after` after it arrived and not held by a live
    run (up to 1,000 per call); returns how many were queued. A batch whose last allowed run never
    finished is marked failed instead. Used by the periodic sweep."""
    now, wait = utcnow(), reschedule_after(runtime)
    with runtime.job_session() as session:
        abandoned = _unclaimed(session, now, wait, batches.state == RECEIVED, batches.attempts >= MAX_ATTEMPTS)
        session.execute(
            update(CohortBatch.__table__).where(batches.id.in_(abandoned.scalar_subquery()))
            .values(state=FAILED, claimed_at=None,
                    error=f"Gave up after {MAX_ATTEMPTS} runs; the last one never finished. {INTERRUPTED}")
        )
        session.commit()
        ids = list(session.scalars(
            _unclaimed(session, now, wait, batches.state == RECEIVED, batches.received_at < now - wait)
            .order_by(batches.received_at).limit(_SWEEP_LIMIT)
        ))
        session.commit()
    return sum(1 for batch_id in ids if schedule_batch(runtime, batch_id))


def _record_error(runtime: Runtime, batch_id: int, claimed_at: datetime, exc: Exception) -> None:
    """Keep the failure on the batch, where the sync history shows it: its type and place, not its
    message, which may quote the users' ids (`failures.describe`). Give up the claim so the sweep
    retries the batch; after MAX_ATTEMPTS runs it is marked failed instead."""
    error = failures.describe(exc)
    with runtime.job_session() as session:
        attempts = session.execute(
            update(CohortBatch.__table__)
            .where(batches.id == batch_id, batches.state == RECEIVED, batches.claimed_at == claimed_at)
            .values(error=error[:2000], claimed_at=None,
                    state=case((batches.attempts >= MAX_ATTEMPTS, FAILED), else_=RECEIVED))
            .returning(batches.attempts)
        ).scalar_one_or_none()
        session.commit()
    log.warning("cohort batch %s failed (attempt %s of %d): %s", batch_id, attempts, MAX_ATTEMPTS, error)
