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


def test_a_failing_batch_keeps_its_error_and_is_marked_failed_after_the_last_attempt(client, tenant, runtime, monkeypatch):
    body = {"cohort_name": "Churn risk", "cohort_id": "c1", "in_cohort": True, "computed_time": "1763856000",
            "message_id": "m1", "users": [{"user_id": "user-1", "user_properties": {}}]}
    assert client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=body, headers=tenant.cohort_auth).status_code == 200

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
    body = {"cohort_name": "Big", "cohort_id": "c1", "in_cohort": True, "computed_time": "1763856000",
            "message_id": "m1", "users": [{"user_id": "user-1"}]}
    assert client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=body,
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
