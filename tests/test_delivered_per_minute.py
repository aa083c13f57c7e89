"""Delivered events per minute: counted by the pusher as Amplitude accepts them, shown by the stats as the
last hour, forgotten by `bridge prune` after a day."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select

from bridge.delivery.models import DeliveredMinute
from bridge.delivery.pusher import drain_app
from bridge.maintenance import prune
from support.factories import event_items

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
