"""The intake at the stream's rate: concurrent requests share one transaction, every request is answered
after the commit holding its events, one bad request fails alone, overload is a quick 503 or 429 with
Retry-After, and drains are asked for without a Redis call per request."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select

from bridge.mapping import DEFAULT_VOCABULARY
from bridge.db import make_session_factory
from bridge.delivery.models import EventReceipt, OutboxEvent
from bridge.delivery.scheduling import drain_after_commit, drain_key
from bridge.intake.committer import GroupCommit, Overloaded
from bridge.intake.service import IntakeResult, prepare
from bridge.jobs import BatchedSender, session_info
from bridge.runtime import Runtime
from bridge.settings import Settings
from support.factories import event_item, event_items, new_tenant
from support.processes import SECRET_KEY, wait_until


def stored_ids(runtime) -> list[str]:
    with runtime.session() as session:
        return sorted(session.scalars(select(OutboxEvent.source_event_id)))


class Gate:
    """Holds a group's writer after its commit until opened, so that requests pile up behind it."""

    def __init__(self):
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.groups: list[list[str]] = []

    def hold(self, group: GroupCommit) -> None:
        commit = group._commit

        def commit_then_wait(batch):
            error = commit(batch)
            if error is None:
                self.groups.append([p.events[0].item["event"]["id"] for p in batch])
                self.entered.set()
                assert self.opened.wait(10)
            return error

        group._commit = commit_then_wait


def committer(runtime, gate, **limits) -> GroupCommit:
    group = GroupCommit(runtime.sessions, max_queued_events=limits.get("max_queued_events", 1000),
                        max_wait_seconds=limits.get("max_wait_seconds", 10))
    gate.hold(group)
    return group


def submit_in_thread(group: GroupCommit, prepared, outcomes: dict) -> threading.Thread:
    def run():
        try:
            outcomes[prepared.events[0].item["event"]["id"]] = group.submit(prepared)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcomes[prepared.events[0].item["event"]["id"]] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def hold_the_writer(group: GroupCommit, gate: Gate, app_id: str, outcomes: dict) -> threading.Thread:
    """Submit evt-0 and wait until its writer is held in the gate: later requests queue behind it."""
    first = submit_in_thread(group, prepare(app_id, DEFAULT_VOCABULARY, [event_item("evt-0")]), outcomes)
    assert gate.entered.wait(10)
    return first


def test_requests_waiting_behind_a_commit_share_the_next_one(runtime, tenant):
    gate = Gate()
    group = committer(runtime, gate)
    outcomes: dict = {}
    first = hold_the_writer(group, gate, tenant.app_id, outcomes)
    assert "evt-0" not in outcomes  # answered only after its commit and what follows it
    later = [submit_in_thread(group, prepare(tenant.app_id, DEFAULT_VOCABULARY, [event_item(f"evt-{i}")]), outcomes) for i in range(1, 6)]
    wait_until(lambda: group._queued_events == 5, 10, "5 events to queue", interval=0.005)
    gate.opened.set()
    for thread in [first, *later]:
        thread.join(10)
    assert [sorted(g) for g in gate.groups] == [["evt-0"], ["evt-1", "evt-2", "evt-3", "evt-4", "evt-5"]]
    assert all(outcomes[f"evt-{i}"].accepted == 1 for i in range(6))
    assert stored_ids(runtime) == [f"evt-{i}" for i in range(6)]


def test_the_same_event_in_two_requests_of_one_group_is_stored_once(runtime, tenant):
    prepared = [prepare(tenant.app_id, DEFAULT_VOCABULARY, event_items(2, start=1)), prepare(tenant.app_id, DEFAULT_VOCABULARY, event_items(2, start=2))]
    with runtime.session() as session:
        from bridge.intake.service import store

        store(session, prepared)
        session.commit()
    assert [p.result for p in prepared] == [IntakeResult(accepted=2), IntakeResult(accepted=1, duplicates=1)]
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(EventReceipt)) == 3
    assert stored_ids(runtime) == ["evt-1", "evt-2", "evt-3"]


def test_a_request_that_fails_its_group_fails_alone(runtime, tenant):
    gate = Gate()
    group = committer(runtime, gate)
    outcomes: dict = {}
    first = hold_the_writer(group, gate, tenant.app_id, outcomes)
    good = submit_in_thread(group, prepare(tenant.app_id, DEFAULT_VOCABULARY, [event_item("evt-1")]), outcomes)
    bad = submit_in_thread(group, prepare("no-such-app", DEFAULT_VOCABULARY, [event_item("evt-2")]), outcomes)  # its outbox row breaks a foreign key
    wait_until(lambda: group._queued_events == 2, 10, "2 events to queue", interval=0.005)
    gate.opened.set()
    for thread in (first, good, bad):
        thread.join(10)
    assert outcomes["evt-1"].accepted == 1
    assert isinstance(outcomes["evt-2"], Exception) and "foreign key" in str(outcomes["evt-2"]).lower()
    assert stored_ids(runtime) == ["evt-0", "evt-1"]
    with runtime.session() as session:  # nothing half-written: no receipt without its event
        assert session.scalar(select(func.count()).select_from(EventReceipt)) == 2


def test_past_the_queue_bound_a_request_is_refused_at_once_and_nothing_is_stored(runtime, tenant):
    gate = Gate()
    group = committer(runtime, gate, max_queued_events=3)
    outcomes: dict = {}
    first = hold_the_writer(group, gate, tenant.app_id, outcomes)
    queued = submit_in_thread(group, prepare(tenant.app_id, DEFAULT_VOCABULARY, event_items(3, start=1)), outcomes)
    wait_until(lambda: group._queued_events == 3, 10, "3 events to queue", interval=0.005)
    with pytest.raises(Overloaded, match="already waiting"):
        group.submit(prepare(tenant.app_id, DEFAULT_VOCABULARY, [event_item("evt-4")]))
    gate.opened.set()
    first.join(10)
    queued.join(10)
    assert stored_ids(runtime) == ["evt-0", "evt-1", "evt-2", "evt-3"]


def test_a_request_no_writer_took_in_time_is_refused_and_never_stored(runtime, tenant):
    gate = Gate()
    group = committer(runtime, gate, max_wait_seconds=0.05)
    outcomes: dict = {}
    first = hold_the_writer(group, gate, tenant.app_id, outcomes)
    late = submit_in_thread(group, prepare(tenant.app_id, DEFAULT_VOCABULARY, [event_item("evt-1")]), outcomes)
    late.join(10)
    assert isinstance(outcomes["evt-1"], Overloaded)
    gate.opened.set()
    first.join(10)
    assert stored_ids(runtime) == ["evt-0"]


def test_an_overloaded_intake_answers_503_with_retry_after_in_the_error_shape(app, client, tenant):
    group = app.extensions["bridge.intake"][0]
    group.max_queued_events = 1
    gate = Gate()
    gate.hold(group)
    outcomes: dict = {}
    first = hold_the_writer(group, gate, tenant.app_id, outcomes)
    queued = submit_in_thread(group, prepare(tenant.app_id, DEFAULT_VOCABULARY, [event_item("evt-1")]), outcomes)
    wait_until(lambda: group._queued_events == 1, 10, "the event to queue", interval=0.005)
    response = client.post(f"/v1/apps/{tenant.app_id}/events", json=event_item("evt-2"), headers=tenant.auth)
    gate.opened.set()
    first.join(10)
    queued.join(10)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json["error"] == "overloaded" and set(response.json) == {"error", "message", "details"}


@pytest.fixture
def settings_env(settings_env):
    return {**settings_env, "INTAKE_MAX_BACKLOG": "3"}


def test_an_app_past_its_backlog_bound_gets_429_and_the_others_do_not(client, tenant, runtime):
    other = new_tenant(runtime, "Other")

    def post(app_id: str, token: str, body):
        return client.post(f"/v1/apps/{app_id}/events", json=body, headers={"Authorization": f"Bearer {token}"})

    with freeze_time() as clock:
        assert post(tenant.app_id, tenant.api_key, event_items(4)).status_code == 202
        clock.tick(timedelta(seconds=6))  # the next request counts the backlog again
        refused = post(tenant.app_id, tenant.api_key, [event_item("evt-9")])
        assert refused.status_code == 429 and refused.json["error"] == "backlog_full"
        assert refused.headers["Retry-After"] == "30" and refused.json["details"] == {"limit": 3}
        assert "evt-9" not in stored_ids(runtime)
        assert post(other.app_id, other.api_key, [event_item("evt-20")]).status_code == 202


@pytest.fixture
def rq_runtime(database_url, redis_url):
    rt = Runtime(Settings.from_env({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "LOG_LEVEL": "WARNING",
                                    "SECRET_KEY": SECRET_KEY}))
    yield rt
    rt.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_stream_of_commits_asks_redis_for_a_drain_a_few_times_not_once_per_request(rq_runtime, tenant, monkeypatch):
    client = rq_runtime.runner.redis
    calls: list[tuple] = []
    real_set = client.set

    def counted_set(*args, **kwargs):  # the Redis client's own call, counted (and still made)
        calls.append(args)
        return real_set(*args, **kwargs)

    monkeypatch.setattr(client, "set", counted_set)
    sender = BatchedSender(rq_runtime.runner, interval=0.2)
    sessions = make_session_factory(rq_runtime.engine, session_info(sender))  # as the intake's group commit has
    for _ in range(500):
        with sessions() as session:
            drain_after_commit(session, tenant.app_id)
            session.commit()
    wait_until(sender.idle, 10, "the drain requests to be sent")
    assert 1 <= len(calls) <= 3 and client.exists(f"bridge:once:{drain_key(tenant.app_id)}")
    assert client.llen(f"rq:queue:{rq_runtime.settings.rq_queue}") == 1
