"""A cohort batch whose application fails is retried a bounded number of times, and its error is kept."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from bridge.cohorts import jobs
from bridge.cohorts.models import CohortBatch


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
