"""The cohort report's snapshot, which the dashboard shows: the job keeps what the report says at that
moment, and the sweep queues it after a cohort changes, once per COHORT_REPORT_REFRESH_SECONDS per cohort
however many batches arrive. Both databases (the `database_url` fixture); time frozen, never slept."""
from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time

from bridge.cohorts import report, snapshots
from bridge.cohorts.jobs import process_batch
from bridge.cohorts.models import Cohort
from bridge.db import utcnow
from bridge.maintenance import sweep
from bridge.runtime import Runtime
from bridge.settings import Settings
from support.factories import channel_record, cohort_batch

REFRESH = "refresh_report"


def post_batch(client, tenant, cohort_id: str = "c1", users: int | list[str] = 5) -> None:
    body = cohort_batch(users, cohort_id=cohort_id)
    response = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=body, headers=tenant.cohort_auth)
    assert response.status_code == 200, response.text


def register(client, tenant) -> None:
    """Channel records for three of the five users of `post_batch`: one with two, one unsubscribed."""
    records = [channel_record("sub-1", external_id="user-000000", notification_types=1),
               channel_record("sub-2", external_id="user-000000", notification_types=1, type="Email"),
               channel_record("sub-3", external_id="user-000001", notification_types=1),
               channel_record("sub-4", external_id="user-000002", notification_types=-2)]
    assert client.post(f"/v1/apps/{tenant.app_id}/subscriptions", json=records, headers=tenant.auth).status_code == 200


def apply_waiting_batches(runtime) -> None:
    """Run the cohort batches waiting in the manual runner, leaving the other jobs waiting."""
    batches = [(func, args) for func, args in runtime.runner.pending if func is process_batch]
    runtime.runner.pending = [job for job in runtime.runner.pending if job[0] is not process_batch]
    for _, args in batches:
        process_batch(*args, runtime=runtime)


def refreshes_waiting(runtime) -> list[tuple[object, ...]]:
    """The cohorts whose refresh waits in the manual runner, as (app_id, cohort_id)."""
    return [args for func, args in runtime.runner.pending if getattr(func, "__name__", func) == REFRESH]


def test_the_snapshot_the_job_keeps_is_the_report_of_that_moment(client, tenant, runtime):
    register(client, tenant)
    post_batch(client, tenant)
    runtime.runner.run_pending()  # the batch is applied
    with freeze_time(utcnow() + timedelta(seconds=3)):
        now = utcnow()
        assert snapshots.refresh_report(tenant.app_id, "c1", runtime=runtime) == now
        api = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1", headers=tenant.auth).json
    with runtime.session() as session:
        kept = snapshots.latest(session, tenant.app_id, "c1")
        cohort = session.get(Cohort, (tenant.app_id, "c1"))
    assert (kept.computed_at, kept.cohort_updated_at) == (now, cohort.updated_at)
    del api["recent_syncs"]  # the sync history is read live by the page; the snapshot holds the report
    assert kept.report == api
    assert (kept.report["users"]["in_cohort"], kept.report["segment_size"]) == (5, 3)


def test_an_older_computation_never_replaces_a_newer_snapshot(client, tenant, runtime):
    post_batch(client, tenant)
    runtime.runner.run_pending()
    start = utcnow()
    with freeze_time(start + timedelta(seconds=10)):
        snapshots.refresh_report(tenant.app_id, "c1", runtime=runtime)
    with runtime.session() as session:
        older = snapshots._compute(session, tenant.app_id, "c1")  # read before the one kept ...
        session.commit()
        older["computed_at"] = start
        older["report"] = {**older["report"], "segment_size": -1}
        snapshots._store(session, older)  # ... and stored after it
        session.commit()
        kept = snapshots.latest(session, tenant.app_id, "c1")
    assert kept.computed_at == start + timedelta(seconds=10) and kept.report["segment_size"] == 0


def test_a_sync_in_many_batches_is_computed_once_per_refresh_interval_not_once_per_batch(settings_env, client, tenant):
    runtime = client.application.extensions["bridge"]
    interval = timedelta(seconds=runtime.settings.cohort_report_refresh_seconds)
    assert interval == timedelta(seconds=60)  # the default
    start = utcnow()
    with freeze_time(start) as clock:
        post_batch(client, tenant, "c1", [f"a-{i}" for i in range(3)])
        post_batch(client, tenant, "c2", [f"b-{i}" for i in range(3)])
        runtime.runner.run_pending()
        # A cohort without a snapshot: the sweep queues one refresh per cohort ...
        assert sweep(runtime)["cohort_reports"] == 2
        # ... and no other while it waits, however many batches are applied meanwhile.
        for n in range(5):
            clock.tick(1)
            post_batch(client, tenant, "c1", [f"a-{n}-{i}" for i in range(3)])
            apply_waiting_batches(runtime)
            assert sweep(runtime)["cohort_reports"] == 0
        assert sorted(refreshes_waiting(runtime)) == [(tenant.app_id, "c1"), (tenant.app_id, "c2")]
        runtime.runner.run_pending()
        assert refreshes_waiting(runtime) == []
        computed_at = utcnow()
        # Batches applied after the refresh: nothing queued until the snapshot is `interval` old.
        for n in range(5):
            clock.tick(5)
            post_batch(client, tenant, "c1", [f"c-{n}-{i}" for i in range(3)])
            runtime.runner.run_pending()
            assert sweep(runtime)["cohort_reports"] == 0
        clock.move_to(computed_at + interval - timedelta(seconds=1))
        assert sweep(runtime)["cohort_reports"] == 0
        clock.move_to(computed_at + interval)
        assert sweep(runtime)["cohort_reports"] == 1  # c1 only: c2 has not changed since
        assert sweep(runtime)["cohort_reports"] == 0
        assert refreshes_waiting(runtime) == [(tenant.app_id, "c1")]
        runtime.runner.run_pending()
        with runtime.session() as session:
            kept = snapshots.latest(session, tenant.app_id, "c1")
        assert kept.report["users"]["in_cohort"] == 3 * 11 and kept.computed_at == utcnow()
        clock.tick(interval)
        assert sweep(runtime)["cohort_reports"] == 0  # nothing changed since


def test_a_cohort_is_not_recomputed_while_a_recent_batch_of_it_waits_to_be_applied(client, tenant, runtime):
    start = utcnow()
    with freeze_time(start) as clock:
        post_batch(client, tenant, "c1", 3)  # stored, not applied yet: a new cohort's first report waits for it
        assert snapshots.schedule_stale_reports(runtime) == 0
        runtime.runner.run_pending()
        assert snapshots.schedule_stale_reports(runtime) == 1
        runtime.runner.run_pending()
        clock.tick(61)
        post_batch(client, tenant, "c1", [f"x-{i}" for i in range(3)])
        runtime.runner.run_pending()  # applied: the cohort changed
        post_batch(client, tenant, "c1", [f"y-{i}" for i in range(3)])  # and another batch waits
        assert snapshots.schedule_stale_reports(runtime) == 0
        clock.tick(60)  # a batch waiting longer than the interval no longer holds the recompute back
        assert snapshots.schedule_stale_reports(runtime) == 1


def test_cohort_report_refresh_seconds_sets_the_interval(settings_env, tenant):
    runtime = Runtime(Settings.from_env({**settings_env, "COHORT_REPORT_REFRESH_SECONDS": "5"}))
    try:
        start = utcnow()
        with freeze_time(start) as clock, runtime.session() as session:
            session.add(Cohort(app_id=tenant.app_id, cohort_id="c1", name="c"))
            session.commit()
            assert snapshots.schedule_stale_reports(runtime) == 1
            runtime.runner.run_pending()
            clock.tick(1)
            session.get(Cohort, (tenant.app_id, "c1")).updated_at = utcnow()
            session.commit()
            clock.move_to(start + timedelta(seconds=4))
            assert snapshots.schedule_stale_reports(runtime) == 0
            clock.move_to(start + timedelta(seconds=5))
            assert snapshots.schedule_stale_reports(runtime) == 1
    finally:
        runtime.close()


def test_a_refresh_of_a_cohort_that_is_not_there_does_nothing_and_can_be_queued_again(tenant, runtime):
    assert snapshots.schedule_refresh(runtime, tenant.app_id, "gone")
    assert runtime.runner.run_pending() == 1  # the job ran, found no cohort, and wrote nothing
    with runtime.session() as session:
        assert snapshots.latest(session, tenant.app_id, "gone") is None
    assert snapshots.schedule_refresh(runtime, tenant.app_id, "gone")  # its key was given back
    assert snapshots.refresh_report("no-such-app", "gone", runtime=runtime) is None


def test_a_failed_refresh_gives_its_key_back_and_keeps_the_last_snapshot(client, tenant, runtime, monkeypatch):
    post_batch(client, tenant)
    runtime.runner.run_pending()
    snapshots.refresh_report(tenant.app_id, "c1", runtime=runtime)

    def database_trouble(*args, **kwargs):
        raise RuntimeError("canceling statement due to statement timeout")

    monkeypatch.setattr(report, "cohort_report", database_trouble)
    assert snapshots.schedule_refresh(runtime, tenant.app_id, "c1")
    with pytest.raises(RuntimeError):
        runtime.runner.run_pending()
    with runtime.session() as session:
        assert snapshots.latest(session, tenant.app_id, "c1").report["users"]["in_cohort"] == 5
    assert snapshots.schedule_refresh(runtime, tenant.app_id, "c1")
