"""Delivered events per minute: counted by the pusher as Amplitude accepts them, shown by the stats as the
last hour, forgotten by `bridge prune` after a day."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from freezegun import freeze_time
from sqlalchemy import func, select

from bridge.apps.models import App
from bridge.delivery.models import DeliveredMinute
from bridge.delivery.pusher import Pusher, drain_app
from bridge.delivery.throughput import delivered_last_hour
from bridge.maintenance import prune
from bridge.runtime import Runtime
from bridge.settings import Settings
from support.databases import libpq_url, truncate
from support.factories import event_items, new_tenant
from support.processes import wait_until

T0 = datetime(2026, 11, 30, 9, 0, 30, tzinfo=UTC)


@pytest.fixture
def settings_env(database_url, sink):
    return {"DATABASE_URL": database_url, "JOB_RUNNER": "manual", "AMPLITUDE_BASE_URL": sink.url,
            "LOG_LEVEL": "ERROR", "DELIVERY_LINGER_SECONDS": "0"}


def deliver(client, tenant, runtime, count: int, start: int) -> None:
    response = client.post(f"/v1/apps/{tenant.app_id}/events", json=event_items(count, start=start), headers=tenant.auth)
    assert response.json["accepted"] == count
    drain_app(tenant.app_id, runtime)


def test_the_stats_show_each_minutes_deliveries_over_the_last_hour(client, tenant, runtime, sink):
    with freeze_time(T0 - timedelta(minutes=61)):  # more than an hour ago: in the total, not in the hour
        deliver(client, tenant, runtime, 2, start=0)
    with freeze_time(T0 - timedelta(minutes=2)):
        deliver(client, tenant, runtime, 3, start=10)
    with freeze_time(T0):
        deliver(client, tenant, runtime, 4, start=20)
        deliver(client, tenant, runtime, 1, start=30)  # the same minute: added to its count
        stats = client.get(f"/v1/apps/{tenant.app_id}/deliveries/stats", headers=tenant.auth).json
    hour = stats["delivered_last_hour"]
    assert datetime.fromisoformat(hour["start"]) == datetime(2026, 11, 30, 8, 1, tzinfo=UTC)
    assert len(hour["per_minute"]) == 60
    assert (hour["per_minute"][-1], hour["per_minute"][-3], sum(hour["per_minute"])) == (5, 3, 8)
    assert stats["delivered"] == 10
    assert len(sink.events()) == 10


def test_events_not_accepted_are_not_counted(client, tenant, runtime, sink):
    sink.add_faults([{"status": 503, "times": 1}])
    with freeze_time(T0):
        deliver(client, tenant, runtime, 3, start=0)
        stats = client.get(f"/v1/apps/{tenant.app_id}/deliveries/stats", headers=tenant.auth).json
    assert (stats["retrying"], sum(stats["delivered_last_hour"]["per_minute"])) == (3, 0)


def test_prune_forgets_minutes_older_than_a_day(client, tenant, runtime, sink):
    with freeze_time(T0 - timedelta(days=1, minutes=1)):
        deliver(client, tenant, runtime, 2, start=0)
    with freeze_time(T0 - timedelta(hours=23)):
        deliver(client, tenant, runtime, 2, start=10)
    with freeze_time(T0):
        assert prune(runtime, older_than_days=30)["delivered_minutes"] == 1
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(DeliveredMinute)) == 1


def test_two_workers_sending_one_apps_events_across_a_minute_never_deadlock(postgresql_url, sink):
    """On PostgreSQL a drain holds its row locks until its batch commits. Worker A records a request in
    one minute and another in the next; worker B, meanwhile, records one in that next minute. B queues
    on the app's row before it touches a minute's row, so A never waits for B (no deadlock), and every
    delivered event is counted."""
    truncate(postgresql_url)
    runtime = Runtime(Settings.from_env({"DATABASE_URL": postgresql_url, "JOB_RUNNER": "manual",
                                         "AMPLITUDE_BASE_URL": sink.url, "LOG_LEVEL": "ERROR"}))
    tenant = new_tenant(runtime)
    pusher = Pusher(runtime)
    first, second = runtime.sessions(), runtime.sessions()
    try:
        app = first.get(App, tenant.app_id)
        with freeze_time(T0) as frozen:
            pusher._update_app(first, app, 1, None, False)  # A: the app's row and minute T0's
            frozen.tick(timedelta(minutes=1))
            with ThreadPoolExecutor(1) as pool:
                def b_records() -> None:
                    pusher._update_app(second, second.get(App, tenant.app_id), 2, None, False)
                    second.commit()

                waiting = pool.submit(b_records)
                wait_until(lambda: lock_waits(postgresql_url) == 1, 10, "worker B to wait for worker A")
                pusher._update_app(first, app, 4, None, False)  # A: the next minute's row
                first.commit()
                waiting.result(timeout=10)
            with runtime.session() as session:
                hour = delivered_last_hour(session, tenant.app_id)
        assert (hour["per_minute"][-2], hour["per_minute"][-1]) == (1, 6)
    finally:
        first.close()
        second.close()
        runtime.close()


def lock_waits(url: str) -> int:
    """Sessions of the database at `url` waiting for a lock a transaction holds."""
    with psycopg.connect(libpq_url(url)) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND datname = current_database()").fetchone()[0]
