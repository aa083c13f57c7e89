"""Hostile inputs, the heavy kind: one app's backlog must not hold up another app's small stream.

Drains share one FIFO queue; a drain of a big backlog hands the worker back after
DELIVERY_DRAIN_BUDGET_SECONDS and queues itself again behind what came in meanwhile, so another app's
drain waits about one budget, not for the backlog. Time is frozen here: every Amplitude
request moves the clock on as a real round trip would (`bin/bench --only fairness` measures it live).
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time

from bridge.db import utcnow
from support.factories import event_items, new_tenant

pytestmark = pytest.mark.hostile

REQUEST_SECONDS = 0.25  # what one Amplitude request and its bookkeeping take, on the frozen clock


@pytest.fixture
def settings_env(settings_env, sink):
    return {**settings_env, "AMPLITUDE_BASE_URL": sink.url, "DELIVERY_BATCH_SIZE": "10"}


def test_an_apps_backlog_delays_another_apps_event_by_about_one_drain_budget(client, runtime, tenant, sink, monkeypatch):
    small = new_tenant(runtime, "Small")
    send = runtime.amplitude.send
    with freeze_time(utcnow()) as clock:
        def slow_send(*args):
            answer = send(*args)
            clock.tick(timedelta(seconds=REQUEST_SECONDS))
            return answer

        monkeypatch.setattr(runtime.amplitude, "send", slow_send)
        backlog = event_items(1000, prefix="big")  # 100 requests of 10 events: 25 s of sending
        for start in range(0, len(backlog), 1000):
            response = client.post(f"/v1/apps/{tenant.app_id}/events", json=backlog[start:start + 1000], headers=tenant.auth)
            assert response.status_code == 202
        response = client.post(f"/v1/apps/{small.app_id}/events", json=event_items(1, prefix="small"), headers=small.auth)
        assert response.status_code == 202
        answered = utcnow().timestamp()
        runtime.runner.run_pending(limit=200)  # bounded: a drain re-queues itself per budget

    arrivals = sink.arrivals()
    assert len(arrivals) == 1001  # everything delivered, once
    waited = arrivals["small-0"] - answered
    assert waited <= runtime.settings.delivery_drain_budget_seconds + 2 * REQUEST_SECONDS
    assert waited <= 2, f"app B's event waited {waited:.2f} s behind app A's backlog"
