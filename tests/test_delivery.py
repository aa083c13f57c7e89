"""The pusher against an Amplitude-compatible server: batching, and every documented answer."""
from __future__ import annotations

import dataclasses
import random
from datetime import timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from bridge.apps.models import App
from bridge.apps.service import update_app
from bridge.db import utcnow
from bridge.delivery.models import OutboxEvent
from bridge.delivery.pusher import Pusher, drain_app
from bridge.delivery.replay import replay
from support.factories import MESSAGE, OMIT, event_items


@pytest.fixture
def settings_env(database_url, sink):
    return {
        "DATABASE_URL": database_url, "JOB_RUNNER": "manual", "AMPLITUDE_BASE_URL": sink.url, "LOG_LEVEL": "ERROR",
        "DELIVERY_BACKOFF_BASE_SECONDS": "2", "DELIVERY_BACKOFF_CAP_SECONDS": "60",
        "DELIVERY_RETRY_WINDOW_SECONDS": "3600", "AMPLITUDE_TIMEOUT_SECONDS": "2", "DELIVERY_LINGER_SECONDS": "0",
    }


LONG_MESSAGE = {**MESSAGE, "contents": {"en": "x" * 1000}}  # ~1.3 KB an event, as sent to Amplitude


def accept(client, tenant, items: list[dict]) -> None:
    for start in range(0, len(items), 1000):
        response = client.post(f"/v1/apps/{tenant.app_id}/events", json=items[start:start + 1000], headers=tenant.auth)
        assert response.status_code == 202, response.json


def rows(runtime) -> dict[str, OutboxEvent]:
    with runtime.session() as session:
        return {r.source_event_id: r for r in session.scalars(select(OutboxEvent))}


def states(runtime) -> dict[str, int]:
    """How many events are in each state; delivered events have left the outbox and are counted on the app."""
    counts: dict[str, int] = {}
    for row in rows(runtime).values():
        counts[row.state] = counts.get(row.state, 0) + 1
    with runtime.session() as session:
        delivered = session.scalars(select(App.delivered_total)).one()
    if delivered:
        counts["delivered"] = delivered
    return counts


def state_of(runtime, event_ids: list[str]) -> dict[str, str]:
    """Each accepted event's state: its outbox row's, or "delivered" once it has left the outbox."""
    by_id = rows(runtime)
    return {i: by_id[i].state if i in by_id else "delivered" for i in event_ids}


def received_ids(sink) -> list[str]:
    return [e["insert_id"] for e in sink.events()]


def test_events_reach_amplitude_once_in_batches_of_at_most_2000(client, tenant, runtime, sink):
    accept(client, tenant, event_items(4500))
    assert runtime.runner.run_pending() >= 1
    assert sorted(received_ids(sink)) == sorted(f"evt-{i}" for i in range(4500))
    assert sink.stats()["requests"] == {200: 3}  # 2,000 + 2,000 + 500
    assert states(runtime) == {"delivered": 4500}
    first = sink.events()[0]
    assert first["event_type"] == "Push Pending Delivery" and first["user_id"] == "user-0"


def test_requests_stay_under_one_megabyte(client, tenant, runtime, sink):
    accept(client, tenant, event_items(2000, message=LONG_MESSAGE))  # ~1.3 KB each: 2,000 would be ~2.6 MB
    runtime.runner.run_pending()
    stats = sink.stats()
    assert stats["requests"].get(413) is None and stats["requests"][200] >= 3
    assert states(runtime) == {"delivered": 2000}


def test_between_the_requests_of_a_batch_every_event_is_seen_waiting_or_delivered(client, tenant, runtime, sink,
                                                                                   monkeypatch):
    """On SQLite each request's outcome commits on its own: the app's delivered total commits with it, so a
    reader (the stats, `bin/demo`) never finds delivered events gone from the outbox but not yet counted."""
    accept(client, tenant, event_items(2000, message=LONG_MESSAGE))  # three requests under 1 MB
    accounted_for = []
    send = runtime.amplitude.send

    def send_after_a_look(*args):
        counts = states(runtime)
        accounted_for.append(counts.get("pending", 0) + counts.get("delivered", 0))
        return send(*args)

    monkeypatch.setattr(runtime.amplitude, "send", send_after_a_look)
    runtime.runner.run_pending()
    assert len(accounted_for) >= 3 and set(accounted_for) == {2000}
    assert states(runtime) == {"delivered": 2000}


def test_400_drops_only_the_events_amplitude_names(client, tenant, runtime, sink):
    accept(client, tenant, event_items(6))
    sink.add_faults([{"status": 400, "body": {"code": 400, "error": "Invalid field values on some events",
                                             "events_with_invalid_fields": {"time": [1, 4]}}}])
    runtime.runner.run_pending()
    by_id = rows(runtime)
    assert {k for k, r in by_id.items() if r.state == "dead"} == {"evt-1", "evt-4"}
    assert by_id["evt-1"].reason == "amplitude_400" and "invalid_fields: time" in by_id["evt-1"].last_error
    assert sorted(received_ids(sink)) == ["evt-0", "evt-2", "evt-3", "evt-5"]


def test_a_400_that_names_no_event_is_bisected_down_to_the_bad_one(client, tenant, runtime, sink):
    accept(client, tenant, event_items(4))
    unnamed = {"status": 400, "body": {"code": 400, "error": "Request missing required field"}}
    # whole batch refused, then its first half, then evt-0 alone: evt-0 is dead, the rest delivered
    sink.add_faults([unnamed, unnamed, unnamed])
    runtime.runner.run_pending()
    assert state_of(runtime, ["evt-0", "evt-1", "evt-2", "evt-3"]) == {
        "evt-0": "dead", "evt-1": "delivered", "evt-2": "delivered", "evt-3": "delivered"}


def test_amplitudes_own_validation_is_honoured(client, tenant, runtime, sink):
    items = event_items(3)
    items[1]["event"]["subscription_id"] = "null"  # a placeholder device id Amplitude refuses
    accept(client, tenant, items)
    runtime.runner.run_pending()
    assert state_of(runtime, ["evt-0", "evt-1", "evt-2"]) == {"evt-0": "delivered", "evt-1": "dead", "evt-2": "delivered"}


def test_invalid_api_key_holds_the_apps_events_until_the_key_is_fixed(client, tenant, runtime, sink):
    sink.api_keys = frozenset({"the-right-key"})
    accept(client, tenant, event_items(10))
    runtime.runner.run_pending()
    assert states(runtime) == {"pending": 10}
    stats = client.get(f"/v1/apps/{tenant.app_id}/deliveries/stats", headers=tenant.auth).json
    assert stats["held"]["reason"].startswith("Amplitude rejected the API key")
    assert stats["last_error"]["message"].startswith("Invalid API key")
    assert drain_app(tenant.app_id, runtime=runtime).held  # held: nothing is sent while the key is wrong
    assert sink.stats()["requests"] == {400: 1}
    with runtime.session() as session:
        update_app(session, session.get(App, tenant.app_id), amplitude_api_key="the-right-key")
        session.commit()
    drain_app(tenant.app_id, runtime=runtime)
    assert states(runtime) == {"delivered": 10}


def test_413_splits_and_resends(client, tenant, runtime, sink):
    accept(client, tenant, event_items(10))
    sink.add_faults([{"status": 413}])
    runtime.runner.run_pending()
    assert sink.stats()["requests"] == {413: 1, 200: 2}
    assert states(runtime) == {"delivered": 10}


def test_429_holds_throttled_users_about_30s_and_sends_the_rest_now(client, tenant, runtime, sink):
    accept(client, tenant, event_items(20, users=4))
    sink.throttle(users={"user-1"}, daily_quota_users={"user-2"})
    with freeze_time(utcnow()) as frozen:
        runtime.runner.run_pending()
        by_id = rows(runtime)
        held = {k for k, r in by_id.items() if r.state == "pending"}
        assert held == {f"evt-{i}" for i in range(20) if i % 4 == 1}
        assert all(by_id[k].next_attempt_at >= utcnow() + timedelta(seconds=29) for k in held)
        assert {k for k, r in by_id.items() if r.state == "dead"} == {f"evt-{i}" for i in range(20) if i % 4 == 2}
        assert {r.reason for r in by_id.values() if r.state == "dead"} == {"daily_quota_exceeded"}
        assert len(received_ids(sink)) == 10
        sink.unthrottle()
        drain_app(tenant.app_id, runtime=runtime)
        assert len(received_ids(sink)) == 10  # still paused
        frozen.tick(timedelta(seconds=31))
        drain_app(tenant.app_id, runtime=runtime)
    assert len(received_ids(sink)) == 15
    assert states(runtime) == {"delivered": 15, "dead": 5}


def test_5xx_backs_off_exponentially_with_jitter_then_delivers(client, tenant, runtime, sink):
    accept(client, tenant, event_items(3))
    sink.add_faults([{"status": 503, "times": 4}])
    pusher = Pusher(runtime, rng=random.Random(7))
    expected = Pusher(runtime, rng=random.Random(7))
    with freeze_time(utcnow()) as frozen:
        for attempt in range(1, 5):
            pusher.drain(tenant.app_id)
            row = rows(runtime)["evt-0"]
            assert (row.state, row.attempts) == ("pending", attempt)
            delay = (row.next_attempt_at - utcnow()).total_seconds()
            assert delay == pytest.approx(expected.backoff(attempt), abs=0.01)
            ceiling = min(60, 2 * 2 ** (attempt - 1))
            assert ceiling / 2 <= delay <= ceiling
            pusher.drain(tenant.app_id)  # not due yet: nothing is sent
            assert sink.stats()["requests"] == {503: attempt}
            frozen.tick(timedelta(seconds=delay + 0.001))
        pusher.drain(tenant.app_id)
    assert states(runtime) == {"delivered": 3}


def test_the_backoff_is_capped():
    from bridge.runtime import Runtime
    from bridge.settings import Settings

    rt = Runtime(Settings.from_env({"JOB_RUNNER": "manual", "DATABASE_URL": "sqlite://",
                                    "DELIVERY_BACKOFF_BASE_SECONDS": "1", "DELIVERY_BACKOFF_CAP_SECONDS": "300"}))
    pusher = Pusher(rt, rng=random.Random(1))
    assert all(150 <= pusher.backoff(n) <= 300 for n in range(10, 40))
    rt.close()


def test_past_the_retry_window_events_are_dead_lettered_and_replay_brings_them_back(client, tenant, runtime, sink):
    accept(client, tenant, event_items(2))
    sink.add_faults([{"status": 502, "times": 100}])
    with freeze_time(utcnow()) as frozen:
        for _ in range(61):  # 61 minutes of failures: past the one-hour window
            drain_app(tenant.app_id, runtime=runtime)
            frozen.tick(timedelta(seconds=61))
        by_id = rows(runtime)
        assert {r.state for r in by_id.values()} == {"dead"}
        assert {r.reason for r in by_id.values()} == {"retry_window_exceeded"}
        assert "HTTP 502" in by_id["evt-0"].last_error
        stats = client.get(f"/v1/apps/{tenant.app_id}/deliveries/stats", headers=tenant.auth).json
        assert stats["dead"] == {"total": 2, "reasons": {"retry_window_exceeded": 2}}
        sink.reset()
        with runtime.session() as session:
            assert replay(session, app_id=tenant.app_id, reason="retry_window_exceeded").requeued == 2
            session.commit()
        drain_app(tenant.app_id, runtime=runtime)
    assert states(runtime) == {"delivered": 2}


def test_a_500_that_did_ingest_is_retried_and_counted_once_by_insert_id(client, tenant, runtime, sink):
    accept(client, tenant, event_items(5))
    sink.add_faults([{"status": 500, "ingest": True}])
    with freeze_time(utcnow()) as frozen:
        drain_app(tenant.app_id, runtime=runtime)
        frozen.tick(timedelta(seconds=5))
        drain_app(tenant.app_id, runtime=runtime)
    stats = sink.stats()
    assert (stats["events_received"], stats["unique_insert_ids"], stats["duplicates"]) == (10, 5, 5)
    assert states(runtime) == {"delivered": 5}


@pytest.mark.parametrize("fault", [{"reset": True}, {"status": 504, "delay": 2.5}], ids=["reset", "timeout"])
def test_connection_failures_and_timeouts_are_retried(client, tenant, runtime, sink, fault):
    accept(client, tenant, event_items(2))
    sink.add_faults([fault])
    runtime.runner.run_pending()
    row = rows(runtime)["evt-0"]
    assert (row.state, row.attempts) == ("pending", 1)
    assert "timeout" in row.last_error or "connection" in row.last_error
    with freeze_time(utcnow() + timedelta(seconds=5)):
        drain_app(tenant.app_id, runtime=runtime)
    assert states(runtime) == {"delivered": 2}


def test_two_pushers_never_hold_the_same_event(client, tenant, runtime):
    accept(client, tenant, event_items(3000))
    first, second, third = Pusher(runtime), Pusher(runtime), Pusher(runtime)
    with runtime.session() as s1, runtime.session() as s2, runtime.session() as s3:
        a = {c.id for c in first.claims.claim(s1, tenant.app_id, 2000)}
        b = {c.id for c in second.claims.claim(s2, tenant.app_id, 2000)}
        assert (len(a), len(b), a & b) == (2000, 1000, set())
        assert third.claims.claim(s3, tenant.app_id, 2000) == []


def test_a_dead_workers_claim_lapses_and_its_events_are_claimed_again(client, tenant, runtime, sink):
    accept(client, tenant, event_items(5))
    with runtime.session() as session:
        assert len(Pusher(runtime).claims.claim(session, tenant.app_id, 2000)) == 5
    # the worker "dies" here: its session ends without recording any outcome
    drain_app(tenant.app_id, runtime=runtime)
    if runtime.settings.is_sqlite:  # a lease: reserved until it expires
        assert received_ids(sink) == []
        with freeze_time(utcnow() + timedelta(seconds=61)):
            drain_app(tenant.app_id, runtime=runtime)
    # PostgreSQL: row locks die with the transaction, so the events are free at once
    assert states(runtime) == {"delivered": 5}


def test_skipped_events_are_sent_once_the_user_is_known(client, tenant, runtime, sink):
    from bridge.registry.models import Subscription

    items = event_items(2, external_id="", device_type=OMIT)  # no device type: the registry records nothing yet
    accept(client, tenant, items)
    assert states(runtime) == {"skipped": 2}
    with runtime.session() as session:
        session.add(Subscription(app_id=tenant.app_id, subscription_id="sub-0", channel="push", type="AndroidPush",
                                 external_id="user-zero", subscribed=True))
        session.commit()
        result = replay(session, app_id=tenant.app_id, reason="unresolved_user")
        session.commit()
    assert (result.requeued, result.still_unresolved) == (1, 1)
    drain_app(tenant.app_id, runtime=runtime)
    assert [(e["insert_id"], e["user_id"]) for e in sink.events()] == [("evt-0", "user-zero")]


class FrozenWait:
    """The pusher's `wait`: records each wait and moves the frozen clock on instead of sleeping."""

    def __init__(self, clock):
        self.clock = clock
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.clock.tick(timedelta(seconds=seconds))
        return False


def lingering(runtime, seconds: float, batch_size: int = 2000):
    """A runtime like the test's, whose drains linger `seconds` (and claim `batch_size` events)."""
    from bridge.runtime import Runtime

    return Runtime(dataclasses.replace(runtime.settings, delivery_linger_seconds=seconds, delivery_batch_size=batch_size))


def test_a_trickle_lingers_so_that_amplitude_gets_one_request_for_many_events(client, tenant, runtime, sink):
    with freeze_time() as clock:
        accept(client, tenant, event_items(3))
        clock.tick(timedelta(seconds=0.2))
        accept(client, tenant, event_items(2, start=3))
        patient = lingering(runtime, 1.5)
        wait = FrozenWait(clock)
        report = Pusher(patient, wait=wait).drain(tenant.app_id)
        patient.close()
    assert wait.waits == [pytest.approx(1.3)]  # until the oldest event has been due 1.5 s
    assert report.delivered == 5 and sink.stats()["requests"] == {200: 1}


def test_a_full_batch_or_an_old_event_does_not_linger(client, tenant, runtime, sink):
    with freeze_time() as clock:
        accept(client, tenant, event_items(4))
        patient = lingering(runtime, 1.5, batch_size=4)
        wait = FrozenWait(clock)
        assert Pusher(patient, wait=wait).drain(tenant.app_id).delivered == 4  # a full batch: sent at once
        accept(client, tenant, event_items(1, start=4))
        clock.tick(timedelta(seconds=2))  # already due for longer than the linger
        assert Pusher(patient, wait=wait).drain(tenant.app_id).delivered == 1
        patient.close()
    assert wait.waits == [] and sink.stats()["requests"] == {200: 2}
