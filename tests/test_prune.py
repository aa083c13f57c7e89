"""`bridge prune` forgets old receipts and cohort user lists, and nothing newer."""
from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select

from bridge.db import utcnow
from bridge.delivery.models import EventReceipt
from bridge.maintenance import prune
from support.factories import cohort_batch, event_item, event_items


def test_old_receipts_are_forgotten_and_recent_ones_kept(client, tenant, runtime):
    now = utcnow()
    with freeze_time(now - timedelta(days=40)):
        client.post(f"/v1/apps/{tenant.app_id}/events", json=event_items(2, start=1), headers=tenant.auth)
    client.post(f"/v1/apps/{tenant.app_id}/events", json=[event_item("evt-3")], headers=tenant.auth)
    assert prune(runtime, older_than_days=30, batch=1) == {
        "event_receipts": 2, "cohort_batch_user_lists": 0, "message_catalog": 0, "delivered_minutes": 0}
    with runtime.session() as session:
        assert session.scalars(select(EventReceipt.source_event_id)).all() == ["evt-3"]
    # a re-post of a forgotten event is accepted again; a recent one is still a duplicate
    again = client.post(f"/v1/apps/{tenant.app_id}/events", json=[event_item("evt-1"), event_item("evt-3")],
                        headers=tenant.auth).json
    assert (again["accepted"], again["duplicates"]) == (1, 1)


def test_prune_refuses_to_go_under_amplitudes_window(client, tenant, runtime):
    with freeze_time(utcnow() - timedelta(days=5)):  # inside Amplitude's 7 days, past the 3 asked for
        client.post(f"/v1/apps/{tenant.app_id}/events", json=event_items(2), headers=tenant.auth)
    with pytest.raises(ValueError, match="7 days"):
        prune(runtime, older_than_days=3)
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(EventReceipt)) == 2  # nothing was forgotten


def test_applied_cohort_batches_lose_their_user_lists_but_keep_their_history(client, tenant, runtime):
    from bridge.cohorts.models import CohortBatch

    body = cohort_batch(["user-1", "user-2"], cohort_id="c1")
    with freeze_time(utcnow() - timedelta(days=40)):
        client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=body, headers=tenant.cohort_auth)
        runtime.runner.run_pending()
    assert prune(runtime, older_than_days=30)["cohort_batch_user_lists"] == 1
    with runtime.session() as session:
        batch = session.scalars(select(CohortBatch)).one()
    assert (batch.user_ids, batch.entered, batch.state) == ("[]", 2, "processed")
    report = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1", headers=tenant.auth).json
    assert report["users"]["in_cohort"] == 2  # membership itself is untouched
