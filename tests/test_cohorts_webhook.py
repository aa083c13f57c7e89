"""The cohort webhook: authenticate, validate, store once per message_id, answer, and apply later."""
from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from freezegun import freeze_time
from sqlalchemy import func, select

from bridge.apps.service import create_app_record
from bridge.cohorts import jobs, membership
from bridge.cohorts.models import PROCESSED, RECEIVED, Cohort, CohortBatch, CohortMember
from bridge.db import utcnow
from bridge.maintenance import sweep

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

URL = "/v1/apps/{}/amplitude/cohorts"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def post(client, tenant, body, headers=None):
    return client.post(URL.format(tenant.app_id), data=orjson.dumps(body), content_type="application/json",
                       headers=tenant.cohort_auth if headers is None else headers)


def batches(runtime) -> list[CohortBatch]:
    with runtime.session() as session:
        return list(session.scalars(select(CohortBatch).order_by(CohortBatch.id)))


def members(runtime) -> dict[str, bool]:
    with runtime.session() as session:
        return {m.user_id: m.in_cohort for m in session.scalars(select(CohortMember))}


def test_batch_is_stored_and_answered_before_membership_is_applied(client, runtime, tenant):
    response = post(client, tenant, fixture("cohort-initial-sync.json"))

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "accepted" and body["state"] == RECEIVED and body["retries"] == 0
    assert body["cohort_id"] == "7b2k9xq" and body["users"] == 6
    [batch] = batches(runtime)
    assert (batch.id, batch.state, batch.user_count, batch.computed_time) == (body["batch_id"], RECEIVED, 6, 1763856000)
    assert json.loads(batch.payload) == ["user-000123", "user-000456", "user-000789", "user-001011", "user-001213",
                                         "user-000456"]
    assert members(runtime) == {}  # nothing applied inside the request

    assert runtime.runner.run_pending() == 1
    [batch] = batches(runtime)
    assert (batch.state, batch.entered, batch.duplicate_users) == (PROCESSED, 5, 1)
    assert members(runtime) == dict.fromkeys(["user-000123", "user-000456", "user-000789", "user-001011", "user-001213"], True)
    with runtime.session() as session:
        assert session.get(Cohort, (tenant.app_id, "7b2k9xq")).name == "Churn risk - 14 days inactive"


def test_enter_and_exit_batches_move_users(client, runtime, tenant):
    for name in ("cohort-initial-sync.json", "cohort-entered.json", "cohort-left.json"):
        assert post(client, tenant, fixture(name)).status_code == 200
    runtime.runner.run_pending()

    state = members(runtime)
    assert sorted(u for u, inside in state.items() if inside) == [
        "user-000456", "user-001011", "user-001213", "user-001415", "user-001617"]
    assert sorted(u for u, inside in state.items() if not inside) == ["user-000123", "user-000789"]
    assert [(b.entered, b.left) for b in batches(runtime)] == [(5, 0), (2, 0), (0, 2)]


def test_same_message_id_twice_is_one_batch_and_a_no_op(client, runtime, tenant):
    first = post(client, tenant, fixture("cohort-initial-sync.json")).get_json()
    runtime.runner.run_pending()
    before = members(runtime)

    again = post(client, tenant, fixture("cohort-initial-sync.json"))

    assert again.status_code == 200
    assert again.get_json() | {"status": "duplicate", "batch_id": first["batch_id"], "retries": 1} == again.get_json()
    assert runtime.runner.run_pending() == 0  # an applied batch is not queued again
    [batch] = batches(runtime)
    assert (batch.retries, batch.entered, batch.state) == (1, 5, PROCESSED)
    assert members(runtime) == before


def test_a_retry_of_a_batch_whose_job_was_lost_queues_it_again(client, runtime, tenant):
    post(client, tenant, fixture("cohort-entered.json"))
    runtime.runner.pending.clear()  # e.g. Redis flushed
    runtime.runner.waiting_keys.clear()

    assert post(client, tenant, fixture("cohort-entered.json")).get_json()["status"] == "duplicate"
    assert runtime.runner.run_pending() == 1
    assert members(runtime) == {"user-001415": True, "user-001617": True}


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer not-the-token"},
    {"Authorization": "Basic abc"},
])
def test_requests_without_the_cohort_token_are_refused(client, runtime, tenant, headers):
    response = post(client, tenant, fixture("cohort-entered.json"), headers=headers)

    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"
    assert batches(runtime) == []


def test_the_api_key_is_not_a_cohort_token(client, runtime, tenant):
    assert post(client, tenant, fixture("cohort-entered.json"), headers=tenant.auth).status_code == 401
    assert batches(runtime) == []


def test_another_apps_cohort_token_is_refused(client, runtime, tenant):
    with runtime.session() as session:
        _record, issued = create_app_record(session, name="Other", amplitude_api_key="amp-other-" + uuid.uuid4().hex[:6])
    response = post(client, tenant, fixture("cohort-entered.json"),
                    headers={"Authorization": f"Bearer {issued.cohort_token}"})
    assert response.status_code == 401


def test_unknown_app_is_404(client, tenant):
    response = client.post(URL.format("no-such-app"), data=orjson.dumps(fixture("cohort-entered.json")),
                           content_type="application/json", headers=tenant.cohort_auth)
    assert response.status_code == 404
    assert response.get_json()["error"] == "app_not_found"


def _without(key):
    body = fixture("cohort-entered.json")
    del body[key]
    return body


def _with(**changes):
    return fixture("cohort-entered.json") | changes


@pytest.mark.parametrize(("body", "field"), [
    (_without("cohort_id"), "cohort_id"),
    (_without("message_id"), "message_id"),
    (_without("users"), "users"),
    (_without("computed_time"), "computed_time"),
    (_with(in_cohort="yes"), "in_cohort"),
    (_with(computed_time="yesterday"), "computed_time"),
    (_with(computed_time=-5), "computed_time"),
    (_with(users={"user_id": "u"}), "users"),
    (_with(users=[{"user_id": "u"}, {"user_properties": {}}]), "users.1.user_id"),
    (_with(users=[{"user_id": ""}]), "users.0.user_id"),
    (_with(users=[{"user_id": 42}]), "users.0.user_id"),
    (_with(users=["user-1"]), "users.0"),
    (_with(cohort_id=""), "cohort_id"),
])
def test_invalid_payloads_are_400_naming_the_field(client, runtime, tenant, body, field):
    response = post(client, tenant, body)

    assert response.status_code == 400
    error = response.get_json()
    assert error["error"] == "invalid_payload"
    assert field in error["details"], error
    assert batches(runtime) == []


@pytest.mark.parametrize(("raw", "code"), [(b"[]", "invalid_body"), (b"{not json", "invalid_json")])
def test_a_body_that_is_not_an_object_is_400(client, tenant, raw, code):
    response = client.post(URL.format(tenant.app_id), data=raw, content_type="application/json",
                           headers=tenant.cohort_auth)
    assert response.status_code == 400
    assert response.get_json()["error"] == code


def test_computed_time_may_be_a_number(client, runtime, tenant):
    assert post(client, tenant, _with(computed_time=1763942400)).status_code == 200
    assert batches(runtime)[0].computed_time == 1763942400


def test_a_full_batch_larger_than_the_global_body_limit_is_accepted(client, runtime, tenant):
    properties = {"plan": "pro", "city": "Lisbon", "country": "Portugal", "device_family": "Apple iPhone",
                  "platform": "iOS", "utm_source": "newsletter", "utm_campaign": "spring-reactivation",
                  "initial_referrer": "https://www.example.com/blog/how-to-get-started", "language": "pt-PT"}
    users = [{"user_id": f"user-{i:07d}", "user_properties": properties | {"email": f"user{i}@example.com"}}
             for i in range(10_000)]
    body = _with(users=users)
    assert len(orjson.dumps(body)) > runtime.settings.max_body_bytes

    assert post(client, tenant, body).status_code == 200
    runtime.runner.run_pending()
    assert batches(runtime)[0].entered == 10_000
    assert len(members(runtime)) == 10_000


def test_a_body_over_the_cohort_limit_is_413(client, runtime, tenant):
    runtime.settings = dataclasses.replace(runtime.settings, cohort_max_body_bytes=2048)
    body = _with(users=[{"user_id": f"user-{i:07d}"} for i in range(200)])

    response = post(client, tenant, body)

    assert response.status_code == 413
    assert batches(runtime) == []


def test_the_sweep_requeues_batches_whose_job_was_lost(client, runtime, tenant):
    with freeze_time(utcnow()) as clock:
        post(client, tenant, fixture("cohort-entered.json"))
        runtime.runner.pending.clear()
        runtime.runner.waiting_keys.clear()

        clock.tick(timedelta(seconds=10))
        assert jobs.schedule_unprocessed(runtime) == 0  # still fresh: its job may simply be waiting
        clock.tick(timedelta(seconds=25))
        assert sweep(runtime)["cohort_batches"] == 1
        assert jobs.schedule_unprocessed(runtime) == 0  # already waiting: not queued twice

        runtime.runner.run_pending()
        assert batches(runtime)[0].state == PROCESSED
        assert jobs.schedule_unprocessed(runtime) == 0


def test_a_failed_batch_keeps_its_error_and_is_applied_on_retry(client, runtime, tenant, monkeypatch):
    post(client, tenant, fixture("cohort-entered.json"))
    real_apply = membership.apply_batch

    def broken(*args, **kwargs):
        real_apply(*args, **kwargs)
        raise RuntimeError("database went away")

    monkeypatch.setattr(jobs, "apply_batch", broken)
    with pytest.raises(RuntimeError):
        runtime.runner.run_pending()
    [batch] = batches(runtime)
    assert (batch.state, batch.error) == (RECEIVED, "RuntimeError: database went away")
    assert members(runtime) == {}  # rolled back with the claim

    monkeypatch.setattr(jobs, "apply_batch", real_apply)
    assert jobs.process_batch(batch.id, runtime=runtime).entered == 2
    [batch] = batches(runtime)
    assert (batch.state, batch.error) == (PROCESSED, None)
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(CohortMember)) == 2
