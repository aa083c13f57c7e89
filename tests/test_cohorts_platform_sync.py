"""Cohorts applied to the messaging platform as tags: what is queued, what the tagger sends, and what
every answer of the platform does — against the local platform server (bridge.platforms.server)."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from bridge.apps.models import App
from bridge.apps.service import connect_platform
from bridge.cli import main
from bridge.cohorts import tagging
from bridge.cohorts.models import CohortMember, PlatformTag, PlatformUser
from bridge.cohorts.tagger import Tagger
from bridge.db import utcnow
from bridge.runtime import Runtime
from bridge.settings import Settings
from support.factories import T0, cohort_batch, new_tenant
from support.platform import API_KEY, APP_ID, OTHER_APP_ID


@pytest.fixture
def runtime(settings_env, platform_server):
    """The test's runtime, its platform calls going to the local platform server."""
    rt = Runtime(Settings.from_env({**settings_env, "PLATFORM_BASE_URL": platform_server.url,
                                    "PLATFORM_BACKOFF_BASE_SECONDS": "10", "PLATFORM_BACKOFF_CAP_SECONDS": "10",
                                    "PLATFORM_RETRY_WINDOW_SECONDS": "3600"}))
    yield rt
    rt.close()


@pytest.fixture
def tenant(runtime):
    tenant = new_tenant(runtime)
    with runtime.session() as session:
        connect_platform(session, session.get(App, tenant.app_id), platform="onesignal", platform_app_id=APP_ID,
                         platform_api_key=API_KEY)
        session.commit()
    return tenant


def post_batch(client, tenant, runtime, users, *, cohort_id="c1", in_cohort=True, computed_time=T0, message_id=None):
    body = cohort_batch(users, cohort_id=cohort_id, in_cohort=in_cohort, computed_time=computed_time,
                        message_id=message_id)
    response = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=body, headers=tenant.cohort_auth)
    assert response.status_code == 200, response.json
    runtime.runner.run_pending()  # applies the batch (and runs the tagger it queued)


def enable(client, tenant, cohort_id="c1", **body):
    response = client.put(f"/v1/apps/{tenant.app_id}/cohorts/{cohort_id}/platform-sync",
                          json={"enabled": True, **body}, headers=tenant.auth)
    assert response.status_code == 200, response.json
    return response.json


def tag(runtime, tenant, linger: float = 0):
    """Run the app's tagger once, as the queued job would (it waits for no one: `linger` 0)."""
    return Tagger(runtime, linger=linger).run(tenant.app_id)


def stored(runtime, app_id):
    with runtime.session() as session:
        return {(t.external_id, t.tag_key): (t.value, t.state, t.reason) for t in session.scalars(select(PlatformTag))}


def test_turning_sync_on_tags_the_members_and_every_later_change(client, tenant, runtime, platform_server):
    platform_server.add_users(APP_ID, ["u1", "u2", "u3", "u4"])
    post_batch(client, tenant, runtime, ["u1", "u2", "u3"])
    plan = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1/platform-sync/plan", headers=tenant.auth).json
    assert plan == {"enabled": False, "tag_key": "amplitude_cohort_c1", "adds": 3, "removes": 0,
                    "sample": {"adds": ["u1", "u2", "u3"], "removes": []}}
    assert platform_server.requests() == []  # a plan sends nothing
    status = enable(client, tenant)
    assert (status["enabled"], status["tag_key"], status["pending"], status["tagged"]) == (True, "amplitude_cohort_c1", 3, 0)
    runtime.runner.run_pending()  # the tagger queued by turning it on
    assert platform_server.all_tags(APP_ID) == {u: {"amplitude_cohort_c1": "1"} for u in ("u1", "u2", "u3")}
    post_batch(client, tenant, runtime, ["u2"], in_cohort=False, computed_time=T0 + 60)
    post_batch(client, tenant, runtime, ["u4"], computed_time=T0 + 60)
    with freeze_time(utcnow() + timedelta(seconds=2)):  # u2's previous request was within the second
        tag(runtime, tenant)
    assert platform_server.all_tags(APP_ID) == {u: {"amplitude_cohort_c1": "1"} for u in ("u1", "u3", "u4")}
    report = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1", headers=tenant.auth).json["platform_sync"]
    assert {k: report[k] for k in ("tagged", "untagged", "pending", "not_on_platform", "failed")} == {
        "tagged": 3, "untagged": 1, "pending": 0, "not_on_platform": 0, "failed": {"total": 0, "reasons": {}}}
    assert report["last_synced_at"] is not None


def test_batches_applied_in_any_order_and_retried_end_in_the_newest_state(client, tenant, runtime, platform_server):
    platform_server.add_users(APP_ID, ["u1", "u2"])
    enable(client, tenant)
    post_batch(client, tenant, runtime, ["u1", "u2"], in_cohort=False, computed_time=T0 + 100, message_id="exit")
    post_batch(client, tenant, runtime, ["u1", "u2"], in_cohort=True, computed_time=T0, message_id="enter")  # older
    post_batch(client, tenant, runtime, ["u1", "u2"], in_cohort=False, computed_time=T0 + 100, message_id="exit")
    runtime.runner.run_pending()
    assert platform_server.all_tags(APP_ID) == {}
    assert platform_server.requests() == []  # nothing of ours was ever on the platform: nothing to remove
    post_batch(client, tenant, runtime, ["u1"], in_cohort=True, computed_time=T0 + 200)
    assert platform_server.all_tags(APP_ID) == {"u1": {"amplitude_cohort_c1": "1"}}


def test_several_cohorts_of_one_user_go_in_one_request(client, tenant, runtime, platform_server):
    platform_server.add_users(APP_ID, ["u1"])
    enable(client, tenant, "c1")
    enable(client, tenant, "c2", tag_key="vip")
    with runtime.session() as session:  # both batches land before the tagger runs
        for cohort_id in ("c1", "c2"):
            session.add(CohortMember(app_id=tenant.app_id, cohort_id=cohort_id, user_id="u1", computed_time=T0))
            tagging.record_changes(session, tenant.app_id, cohort_id, [("u1", True, T0)])
        session.commit()
    tag(runtime, tenant)
    assert [r["tags"] for r in platform_server.requests()] == [{"amplitude_cohort_c1": "1", "vip": "1"}]


def test_more_tags_than_a_request_holds_go_a_second_apart(client, tenant, runtime, platform_server):
    platform_server.add_users(APP_ID, ["u1"])
    with runtime.session() as session:
        for n in range(101):
            tagging.set_platform_sync(session, tenant.app_id, f"c{n}", enabled=True)
            tagging.record_changes(session, tenant.app_id, f"c{n}", [("u1", True, T0)])
        session.commit()
    now = utcnow()
    with freeze_time(now) as frozen:
        tag(runtime, tenant)
        assert [len(r["tags"]) for r in platform_server.requests()] == [100]
        with runtime.session() as session:
            due = session.scalar(select(PlatformUser.due_at))
        assert due - now >= timedelta(seconds=1)  # the platform's 1 request per second per user
        tag(runtime, tenant)
        assert len(platform_server.requests()) == 1  # not due yet
        frozen.tick(timedelta(seconds=1.1))
        tag(runtime, tenant)
    assert [len(r["tags"]) for r in platform_server.requests()] == [100, 1]
    assert len(platform_server.tags(APP_ID, "u1")) == 101


def test_users_the_platform_does_not_know_are_counted_not_retried(client, tenant, runtime, platform_server):
    platform_server.add_users(APP_ID, ["u1"])
    post_batch(client, tenant, runtime, ["u1", "ghost-1", "ghost-2"])
    enable(client, tenant)
    runtime.runner.run_pending()
    body = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1", headers=tenant.auth).json
    assert body["platform_sync"]["not_on_platform"] == 2 and body["platform_sync"]["tagged"] == 1
    assert any("the platform does not know 2 users" in line for line in body["context"])
    with freeze_time(utcnow() + timedelta(hours=1)):
        tag(runtime, tenant)
    assert len(platform_server.requests()) == 3  # not tried again
    post_batch(client, tenant, runtime, ["ghost-1"], in_cohort=False, computed_time=T0 + 60)  # a change: tried again
    assert len(platform_server.requests()) == 4


@pytest.mark.parametrize(("fault", "state", "reason", "error"), [
    ({"status": 409, "message": "User is being merged"}, "failed", "conflict", "User is being merged"),
    ({"status": 400, "message": "Invalid tag value"}, "failed", "rejected", "Invalid tag value"),
    ({"status": 200, "message": "tags limit reached"}, "failed", "rejected", "tags limit reached"),
])
def test_a_refusal_is_recorded_with_the_platforms_words(client, tenant, runtime, platform_server, fault, state, reason,
                                                        error):
    platform_server.add_users(APP_ID, ["u1"])
    platform_server.add_faults([fault])
    enable(client, tenant)
    post_batch(client, tenant, runtime, ["u1"])
    assert stored(runtime, tenant.app_id) == {("u1", "amplitude_cohort_c1"): ("1", state, reason)}
    status = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1", headers=tenant.auth).json["platform_sync"]
    assert status["failed"] == {"total": 1, "reasons": {reason: 1}} and error in status["last_error"]
    result = runner(runtime).invoke(main, ["cohorts", "platform-replay", "--app", tenant.app_id, "--reason", reason])
    assert json.loads(result.output) == {"requeued": 1}
    with freeze_time(utcnow() + timedelta(seconds=2)):  # the platform's second per user
        tag(runtime, tenant)
    assert platform_server.tags(APP_ID, "u1") == {"amplitude_cohort_c1": "1"}


def test_a_2xx_naming_one_tag_fails_only_that_tag(client, tenant, runtime, platform_server):
    platform_server.add_users(APP_ID, ["u1"])
    enable(client, tenant, "c1")
    enable(client, tenant, "c2", tag_key="vip")
    platform_server.add_faults([{"status": 200, "failed_tags": ["vip"], "message": "tag key reserved"}])
    with runtime.session() as session:
        for cohort_id in ("c1", "c2"):
            tagging.record_changes(session, tenant.app_id, cohort_id, [("u1", True, T0)])
        session.commit()
    tag(runtime, tenant)
    assert stored(runtime, tenant.app_id) == {("u1", "amplitude_cohort_c1"): ("1", "synced", None),
                                              ("u1", "vip"): ("1", "failed", "rejected")}


def test_429_holds_the_whole_app_for_retry_after_without_counting_attempts(client, tenant, runtime, platform_server):
    platform_server.add_users(APP_ID, [f"u{n}" for n in range(20)])
    platform_server.add_faults([{"status": 429, "retry_after": "30", "times": 1}])
    enable(client, tenant)
    now = utcnow()
    with freeze_time(now) as frozen:
        post_batch(client, tenant, runtime, [f"u{n}" for n in range(20)])
        with runtime.session() as session:
            app = session.get(App, tenant.app_id)
            assert app.platform_held_until == now + timedelta(seconds=30)
            rows = list(session.scalars(select(PlatformTag)))
            assert all(t.attempts == 0 and t.state in ("pending", "synced") for t in rows)
            assert any(t.state == "pending" for t in rows)
        sent = len(platform_server.requests())
        assert sent < 20  # the others waited with the app
        frozen.tick(timedelta(seconds=29))
        tag(runtime, tenant)
        assert len(platform_server.requests()) == sent
        frozen.tick(timedelta(seconds=2))
        tag(runtime, tenant)
    assert len(platform_server.all_tags(APP_ID)) == 20


def test_a_refused_key_holds_the_app_until_a_new_key(client, tenant, runtime, platform_server, cli):
    platform_server.add_users(APP_ID, ["u1"])
    with runtime.session() as session:
        connect_platform(session, session.get(App, tenant.app_id), platform="onesignal", platform_api_key="wrong-key")
        session.commit()
    enable(client, tenant)
    post_batch(client, tenant, runtime, ["u1"])
    assert stored(runtime, tenant.app_id) == {("u1", "amplitude_cohort_c1"): ("1", "pending", None)}
    with runtime.session() as session:
        assert "refused the API key" in session.get(App, tenant.app_id).platform_held_reason
    with runtime.session() as session:
        connect_platform(session, session.get(App, tenant.app_id), platform="onesignal", platform_api_key=API_KEY)
        session.commit()
    with freeze_time(utcnow() + timedelta(seconds=2)):  # the user's second since the refused request
        tag(runtime, tenant)
    assert platform_server.tags(APP_ID, "u1") == {"amplitude_cohort_c1": "1"}


def test_failures_back_off_then_dead_letter_after_the_retry_window(client, tenant, runtime, platform_server):
    platform_server.add_users(APP_ID, ["u1"])
    platform_server.add_faults([{"status": 503, "times": 100}])
    enable(client, tenant)
    start = utcnow()
    with freeze_time(start) as frozen:
        post_batch(client, tenant, runtime, ["u1"])
        with runtime.session() as session:
            tag_row = session.scalar(select(PlatformTag))
            due = session.scalar(select(PlatformUser.due_at))
        assert (tag_row.state, tag_row.attempts) == ("pending", 1) and "503" in tag_row.last_error
        assert timedelta(seconds=5) <= due - start <= timedelta(seconds=10.1)  # backoff with jitter, in [d/2, d]
        for _ in range(9):  # 9 × 400 s: still within the hour's retry window
            frozen.tick(timedelta(seconds=400))
            tag(runtime, tenant)
        assert stored(runtime, tenant.app_id) == {("u1", "amplitude_cohort_c1"): ("1", "pending", None)}
        frozen.tick(timedelta(seconds=400))
        tag(runtime, tenant)
    assert stored(runtime, tenant.app_id) == {("u1", "amplitude_cohort_c1"): ("1", "failed", "retry_window_exceeded")}
    assert len(platform_server.requests()) == 11


def test_turning_it_off_stops_sending_and_on_again_catches_up(client, tenant, runtime, platform_server):
    platform_server.add_users(APP_ID, ["u1", "u2"])
    enable(client, tenant)
    post_batch(client, tenant, runtime, ["u1"])
    off = client.put(f"/v1/apps/{tenant.app_id}/cohorts/c1/platform-sync", json={"enabled": False}, headers=tenant.auth)
    assert off.status_code == 200 and off.json["enabled"] is False
    post_batch(client, tenant, runtime, ["u1"], in_cohort=False, computed_time=T0 + 10)
    post_batch(client, tenant, runtime, ["u2"], computed_time=T0 + 10)
    assert platform_server.all_tags(APP_ID) == {"u1": {"amplitude_cohort_c1": "1"}}
    plan = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1/platform-sync/plan", headers=tenant.auth).json
    assert (plan["adds"], plan["removes"], plan["sample"]) == (1, 1, {"adds": ["u2"], "removes": ["u1"]})
    enable(client, tenant)
    with freeze_time(utcnow() + timedelta(seconds=2)):
        runtime.runner.run_pending()
    assert platform_server.all_tags(APP_ID) == {"u2": {"amplitude_cohort_c1": "1"}}


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"enabled": "yes"}, 400, "invalid_request"),
    ({}, 400, "invalid_request"),
    ({"enabled": True, "tag_key": "has space"}, 400, "invalid_request"),
    ({"enabled": True, "tag_key": "x" * 129}, 400, "invalid_request"),
    ({"enabled": True, "tag_key": ""}, 400, "invalid_request"),
    ({"enabled": True, "colour": "red"}, 400, "invalid_request"),
    ([], 400, "invalid_request"),
])
def test_a_bad_setting_is_refused_naming_the_field(client, tenant, body, status, code):
    response = client.put(f"/v1/apps/{tenant.app_id}/cohorts/c1/platform-sync", json=body, headers=tenant.auth)
    assert (response.status_code, response.json["error"]) == (status, code)


def test_a_tag_key_belongs_to_one_cohort_and_an_unconnected_app_cannot_sync(client, tenant, runtime):
    enable(client, tenant, "c1", tag_key="vip")
    taken = client.put(f"/v1/apps/{tenant.app_id}/cohorts/c2/platform-sync", json={"enabled": True, "tag_key": "vip"},
                       headers=tenant.auth)
    assert (taken.status_code, taken.json["error"]) == (409, "tag_key_conflict")
    other = new_tenant(runtime, "Other")
    response = client.put(f"/v1/apps/{other.app_id}/cohorts/c1/platform-sync", json={"enabled": True},
                          headers=other.auth)
    assert (response.status_code, response.json["error"]) == (409, "platform_not_connected")


def test_the_connection_is_shown_masked(cli, runtime, tenant):
    result = runner(runtime).invoke(main, ["apps", "list"])
    platform = json.loads(result.output)[0]["platform"]
    assert platform["name"] == "onesignal" and platform["app_id"] == APP_ID
    assert API_KEY not in result.output and platform["api_key"].endswith("…")


def runner(runtime):
    """`bridge` commands on the test's database (and platform)."""
    from click.testing import CliRunner

    env = {"DATABASE_URL": runtime.settings.database_url, "JOB_RUNNER": "manual", "LOG_LEVEL": "WARNING"}
    return CliRunner(env=env)


def test_another_platform_app_gets_every_tag_again_and_the_counts_say_so(client, tenant, runtime, platform_server):
    platform_server.add_users(APP_ID, ["u1", "u2"])
    platform_server.add_users(OTHER_APP_ID, ["u1", "u2"])
    enable(client, tenant)
    post_batch(client, tenant, runtime, ["u1", "u2"])
    post_batch(client, tenant, runtime, ["u2"], in_cohort=False, computed_time=T0 + 10)
    assert platform_server.all_tags(APP_ID) == {"u1": {"amplitude_cohort_c1": "1"}}
    result = runner(runtime).invoke(main, ["apps", "update", tenant.app_id, "--platform-app-id", OTHER_APP_ID])
    assert result.exit_code == 0, result.output
    status = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1", headers=tenant.auth).json["platform_sync"]
    assert (status["tagged"], status["pending"]) == (0, 1)  # nothing is on the new app yet
    with freeze_time(utcnow() + timedelta(seconds=2)):
        tag(runtime, tenant)
    assert platform_server.all_tags(OTHER_APP_ID) == {"u1": {"amplitude_cohort_c1": "1"}}
    status = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1", headers=tenant.auth).json["platform_sync"]
    assert (status["tagged"], status["pending"]) == (1, 0)


def test_a_user_the_platform_does_not_know_is_not_the_last_error(client, tenant, runtime, platform_server):
    platform_server.add_users(APP_ID, ["u1"])
    enable(client, tenant)
    post_batch(client, tenant, runtime, ["ghost"])
    status = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1", headers=tenant.auth).json["platform_sync"]
    assert status["not_on_platform"] == 1 and status["last_error"] is None


@pytest.mark.parametrize(("args", "error"), [
    (["--platform", "onesignal", "--platform-api-key", "k"], "--platform-app-id is required"),
    (["--platform", "onesignal", "--platform-app-id", "OS/APP", "--platform-api-key", "k"], "must not hold '/'"),
    (["--platform", "onesignal", "--platform-app-id", "a", "--platform-api-key", "k", "--platform-rate", "960"],
     "at most 950"),
])
def test_a_bad_connection_is_refused_naming_the_option(runtime, args, error):
    other = new_tenant(runtime, "Unconnected")
    result = runner(runtime).invoke(main, ["apps", "update", other.app_id, *args])
    assert result.exit_code != 0 and error in result.output


def test_requests_are_spaced_under_the_apps_rate():
    from bridge.cohorts.tagger import PACE_SHARE, Pacer

    now, slept = [0.0], []
    pacer = Pacer(100 * PACE_SHARE, clock=lambda: now[0], sleep=lambda s: (slept.append(s), now.__setitem__(0, now[0] + s)))
    starts = []
    for _ in range(300):
        pacer.wait()
        starts.append(now[0])
    most = max(sum(1 for t in starts if a <= t < a + 1.0) for a in starts)
    assert most <= 100 - 2  # never the full rate in any second: room for the network's jitter
