"""A cohort batch whose application fails, or whose run is killed, is retried a bounded number of times,
and its error is kept."""
from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from bridge.cohorts import jobs
from bridge.cohorts.models import CohortBatch
from bridge.db import utcnow
from bridge.runtime import Runtime
from bridge.settings import Settings
from support.factories import cohort_batch, store_cohort_batch


def test_a_failing_batch_keeps_its_error_and_is_marked_failed_after_the_last_attempt(client, tenant, runtime, monkeypatch):
    assert client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=cohort_batch(cohort_id="c1"),
                       headers=tenant.cohort_auth).status_code == 200

    def database_trouble(*args, **kwargs):
        raise RuntimeError("deadlock detected")

    monkeypatch.setattr(jobs, "apply_batch", database_trouble)
    with runtime.session() as session:
        batch_id = session.scalars(select(CohortBatch.id)).one()
    for attempt in range(1, jobs.MAX_ATTEMPTS + 1):
        with pytest.raises(RuntimeError):
            jobs.process_batch(batch_id, runtime=runtime)
        with runtime.session() as session:
            batch = session.get(CohortBatch, batch_id)
            assert batch.attempts == attempt
            assert batch.error.startswith("RuntimeError at bridge/cohorts/jobs.py:")  # not its message: it may name users
            assert batch.state == ("failed" if attempt == jobs.MAX_ATTEMPTS else "received")
    syncs = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1/syncs", headers=tenant.auth).json["items"]
    assert syncs[0]["error"] == batch.error


class WorkerKilled(BaseException):
    """Stands for a SIGKILL or RQ's job timeout mid-apply: nothing in the run gets to record anything."""


def test_a_run_killed_mid_batch_still_counts_and_the_batch_fails_after_the_last_attempt(client, tenant, runtime,
                                                                                      monkeypatch):
    assert client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=cohort_batch(cohort_id="c1"),
                       headers=tenant.cohort_auth).status_code == 200
    with runtime.session() as session:
        batch_id = session.scalars(select(CohortBatch.id)).one()

    def killed(*args, **kwargs):
        raise WorkerKilled

    monkeypatch.setattr(jobs, "apply_batch", killed)
    start = utcnow()
    for attempt in range(1, jobs.MAX_ATTEMPTS + 1):
        with freeze_time(start + attempt * (jobs.CLAIM_LEASE + timedelta(seconds=1))):
            if attempt > 1:  # the claim of the killed run has lapsed: the sweep queues the batch again
                assert jobs.schedule_unprocessed(runtime) == 1
            with pytest.raises(WorkerKilled):
                runtime.runner.run_pending()
            with runtime.session() as session:
                batch = session.get(CohortBatch, batch_id)
            assert (batch.attempts, batch.state, batch.claimed_at) == (attempt, "received", utcnow())
            assert batch.error == (None if attempt == 1 else jobs.INTERRUPTED)
            # While the claim is live, neither another run nor the sweep starts the batch.
            assert jobs.process_batch(batch_id, runtime=runtime) is None
            assert jobs.schedule_unprocessed(runtime) == 0
    with freeze_time(start + (jobs.MAX_ATTEMPTS + 1) * (jobs.CLAIM_LEASE + timedelta(seconds=1))):
        assert jobs.schedule_unprocessed(runtime) == 0
    with runtime.session() as session:
        batch = session.get(CohortBatch, batch_id)
    assert (batch.state, batch.attempts) == ("failed", jobs.MAX_ATTEMPTS)
    assert batch.error.startswith(f"Gave up after {jobs.MAX_ATTEMPTS} runs; the last one never finished.")


def test_the_sweep_waits_cohort_reschedule_seconds_after_arrival_and_after_a_dead_runs_claim(settings_env, tenant,
                                                                                           monkeypatch):
    """COHORT_RESCHEDULE_SECONDS (5 here) is how long a batch is left to its job, and on PostgreSQL to a
    run that claimed it; SQLite, without row locks, leaves a claim alone for CLAIM_LEASE."""
    runtime = Runtime(Settings.from_env({**settings_env, "COHORT_RESCHEDULE_SECONDS": "5"}))

    def killed(*args, **kwargs):
        raise WorkerKilled

    monkeypatch.setattr(jobs, "apply_batch", killed)
    try:
        with freeze_time(utcnow()) as clock:
            store_cohort_batch(runtime, tenant.app_id, "m1", ["user-1"])
            runtime.runner.pending.clear()  # its job is lost (Redis flushed)
            runtime.runner.waiting_keys.clear()
            clock.tick(timedelta(seconds=4))
            assert jobs.schedule_unprocessed(runtime) == 0
            clock.tick(timedelta(seconds=2))
            assert jobs.schedule_unprocessed(runtime) == 1
            with pytest.raises(WorkerKilled):  # the run claims the batch and dies
                runtime.runner.run_pending()
            clock.tick(timedelta(seconds=4))
            assert jobs.schedule_unprocessed(runtime) == 0
            clock.tick(timedelta(seconds=2))
            assert jobs.schedule_unprocessed(runtime) == (0 if runtime.settings.is_sqlite else 1)
    finally:
        runtime.close()
