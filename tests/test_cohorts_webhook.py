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
    assert (batch.public_id, batch.state, batch.user_count, batch.computed_time) == (body["batch_id"], RECEIVED, 6, 1763856000)
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
        session.commit()
    response = post(client, tenant, fixture("cohort-entered.json"),
                    headers={"Authorization": f"Bearer {issued.cohort_token}"})
    assert response.status_code == 401


def test_an_unknown_app_is_answered_as_a_wrong_token_is(client, tenant):
    response = client.post(URL.format("no-such-app"), data=orjson.dumps(fixture("cohort-entered.json")),
                           content_type="application/json", headers=tenant.cohort_auth)
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"


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
    (_with(computed_time=946_684_799), "computed_time"),
    (_with(computed_time="100000000001"), "computed_time"),
    (_with(computed_time="\u00b2"), "computed_time"),
    (_with(computed_time="1" * 5000), "computed_time"),
    (_with(computed_time=True), "computed_time"),
    (_with(users={"user_id": "u"}), "users"),
    (_with(users="u"), "users"),
    (_with(users=None), "users"),
    (_with(cohort_id=""), "cohort_id"),
    (_with(message_id=None), "message_id"),
])
def test_a_malformed_envelope_is_400_naming_the_field(client, runtime, tenant, body, field):
    response = post(client, tenant, body)

    assert response.status_code == 400
    error = response.get_json()
    assert error["error"] == "invalid_payload"
    assert field in error["details"], error
    assert batches(runtime) == []


# The batch of issue 9: one usable user_id, one integer user_id, and three entries without a usable one.
TRIAL_ENDING = {"cohort_id": "q8v2mz", "cohort_name": "Trial ending", "in_cohort": True, "computed_time": "1764201600",
                "message_id": "r7::enter::0",
                "users": [{"user_id": "acct-7781"}, {"user_id": None}, {"user_id": ""}, {"user_id": 99812},
                          {"amplitude_id": 551234}]}


def syncs(client, tenant, cohort_id: str) -> list[dict]:
    return client.get(f"/v1/apps/{tenant.app_id}/cohorts/{cohort_id}/syncs", headers=tenant.auth).get_json()["items"]


def test_entries_without_a_usable_user_id_are_counted_and_the_others_applied(client, runtime, tenant):
    response = post(client, tenant, TRIAL_ENDING)

    assert response.status_code == 200
    ack = response.get_json()
    assert ack == {"status": "accepted", "batch_id": ack["batch_id"], "cohort_id": "q8v2mz",
                   "message_id": "r7::enter::0", "users": 5, "unusable_users": 3, "state": RECEIVED, "retries": 0}
    runtime.runner.run_pending()
    assert members(runtime) == {"acct-7781": True, "99812": True}
    [sync] = syncs(client, tenant, "q8v2mz")
    assert {k: sync[k] for k in ("state", "user_count", "entered", "duplicate_users", "unusable_users",
                                 "unusable_reasons")} == {
        "state": PROCESSED, "user_count": 5, "entered": 2, "duplicate_users": 0, "unusable_users": 3,
        "unusable_reasons": {"missing_user_id": 2, "blank_user_id": 1}}
    assert sync["unusable_examples"] == [
        {"index": 1, "field": "users.1.user_id", "reason": "missing_user_id", "message": "user_id is null."},
        {"index": 2, "field": "users.2.user_id", "reason": "blank_user_id",
         "message": "user_id is empty or only whitespace."},
        {"index": 4, "field": "users.4.user_id", "reason": "missing_user_id",
         "message": "No user_id; the entry has amplitude_id."},
    ]
    assert sync["user_count"] == sum(sync[k] for k in ("entered", "left", "already_known", "stale", "duplicate_users",
                                                       "unusable_users"))


def test_a_resent_batch_with_unusable_entries_is_a_duplicate_and_counts_nothing_twice(client, runtime, tenant):
    first = post(client, tenant, TRIAL_ENDING).get_json()
    runtime.runner.run_pending()
    before = syncs(client, tenant, "q8v2mz")

    again = post(client, tenant, TRIAL_ENDING)

    assert again.status_code == 200
    assert again.get_json() == first | {"status": "duplicate", "state": PROCESSED, "retries": 1}
    assert runtime.runner.run_pending() == 0
    assert members(runtime) == {"acct-7781": True, "99812": True}
    [after] = syncs(client, tenant, "q8v2mz")
    assert after == before[0] | {"retries": 1}
    report = client.get(f"/v1/apps/{tenant.app_id}/cohorts/q8v2mz", headers=tenant.auth).get_json()
    assert (report["unusable_users"], report["unusable_reasons"]) == (3, {"missing_user_id": 2, "blank_user_id": 1})


def test_every_kind_of_unusable_entry_is_stored_with_its_reason(client, runtime, tenant):
    users = [{"user_id": True}, {"user_id": 99812.0}, {"user_id": {"id": 1}}, {"user_id": "x" * 257},
             {"user_id": "a\x00b"}, {"user_id": " Undefined "}, {"user_id": 0}, "acct-1", None,
             {"a\x00b": 1, "k" * 50: 2, "c": 3, "d": 4}, {"user_id": "  acct-2\t"}, {"user_id": "x" * 256}]

    assert post(client, tenant, _with(users=users)).get_json()["unusable_users"] == 10
    runtime.runner.run_pending()

    assert members(runtime) == {"acct-2": True, "x" * 256: True}
    [sync] = syncs(client, tenant, "7b2k9xq")
    assert sync["unusable_reasons"] == {"not_an_object": 2, "placeholder_user_id": 2, "wrong_type_user_id": 3,
                                        "missing_user_id": 1, "nul_in_user_id": 1, "too_long_user_id": 1}
    assert [(e["field"], e["message"]) for e in sync["unusable_examples"]] == [
        ("users.0.user_id", "Must be a string or an integer, not a boolean (true)."),
        ("users.1.user_id", "Must be a string or an integer, not a decimal number (99812.0)."),
        ("users.2.user_id", 'Must be a string or an integer, not an object ({"id":1}).'),
        ("users.3.user_id", "user_id is 257 characters long; at most 256 are allowed."),
        ("users.4.user_id", "user_id contains a NUL character."),
        ("users.5.user_id", 'user_id "Undefined" is a placeholder, never an External User ID.'),
        ("users.6.user_id", 'user_id "0" is a placeholder, never an External User ID.'),
        ("users.7", 'Must be an object with a user_id, not a string ("acct-1").'),
        ("users.8", "Must be an object with a user_id, not null (null)."),
        ("users.9.user_id", f"No user_id; the entry has a\x00b, {'k' * 40}, c, ...."),
    ]


def test_only_the_first_examples_are_kept_and_every_entry_is_counted(client, runtime, tenant):
    users = [{"user_id": ""}] * 30 + [{"user_id": "u1"}]

    ack = post(client, tenant, _with(users=users)).get_json()
    assert (ack["users"], ack["unusable_users"]) == (31, 30)
    runtime.runner.run_pending()

    [sync] = syncs(client, tenant, "7b2k9xq")
    assert (sync["unusable_users"], sync["unusable_reasons"], sync["entered"]) == (30, {"blank_user_id": 30}, 1)
    assert [e["index"] for e in sync["unusable_examples"]] == list(range(20))


def test_a_batch_with_no_usable_user_is_accepted_and_changes_nothing(client, runtime, tenant):
    assert post(client, tenant, _with(users=[{"user_id": None}])).status_code == 200
    runtime.runner.run_pending()

    [batch] = batches(runtime)
    assert (batch.state, batch.payload, batch.user_count, batch.unusable_users, batch.entered) == \
        (PROCESSED, "[]", 1, 1, 0)
    assert members(runtime) == {}


@pytest.mark.parametrize(("raw", "code"), [(b"[]", "invalid_body"), (b"{not json", "invalid_json")])
def test_a_body_that_is_not_an_object_is_400(client, tenant, raw, code):
    response = client.post(URL.format(tenant.app_id), data=raw, content_type="application/json",
                           headers=tenant.cohort_auth)
    assert response.status_code == 400
    assert response.get_json()["error"] == code


def test_computed_time_may_be_a_number(client, runtime, tenant):
    assert post(client, tenant, _with(computed_time=1763942400)).status_code == 200
    assert batches(runtime)[0].computed_time == 1763942400


@pytest.mark.parametrize(("computed_time", "unit"), [
    ("1764201600000", "milliseconds"), (1764201600000, "milliseconds"), (1764201600000000, "microseconds"),
])
def test_a_computed_time_in_a_finer_unit_is_400_naming_the_unit(client, runtime, tenant, computed_time, unit):
    response = post(client, tenant, _with(computed_time=computed_time))

    assert response.status_code == 400
    assert response.get_json()["details"] == {
        "computed_time": f"{int(computed_time)} looks like {unit} (2025-11-27T00:00:00Z); send epoch seconds."}
    assert batches(runtime) == []


@pytest.mark.parametrize(("computed_time", "accepted"), [
    ("946684800", True), (946684799, False), ("1764288000", True), (1764288001, False), (100_000_000_000, False)])
def test_computed_time_is_accepted_from_2000_to_one_day_after_the_clock(client, runtime, tenant, computed_time, accepted):
    with freeze_time("2025-11-27 00:00:00"):
        response = post(client, tenant, _with(computed_time=computed_time))
    assert response.status_code == (200 if accepted else 400)
    if accepted:
        assert batches(runtime)[0].computed_time == int(computed_time)
    else:
        assert "outside the accepted window" in response.get_json()["details"]["computed_time"]


def test_a_long_cohort_name_is_cut_not_refused(client, runtime, tenant):
    assert post(client, tenant, _with(cohort_name="Trial ending " + "x" * 600)).status_code == 200
    assert batches(runtime)[0].cohort_name == ("Trial ending " + "x" * 600)[:500]


def test_a_computed_time_past_2038_is_stored_and_applied(client, runtime, tenant):
    year_2100 = 4_102_444_800
    with freeze_time("2100-01-01 12:00:00"):
        assert post(client, tenant, _with(computed_time=str(year_2100))).status_code == 200
        runtime.runner.run_pending()
        older = _with(computed_time=str(year_2100 - 1), in_cohort=False, message_id="older")
        assert post(client, tenant, older).status_code == 200
        runtime.runner.run_pending()

    with runtime.session() as session:
        assert {(m.user_id, m.in_cohort, m.computed_time) for m in session.scalars(select(CohortMember))} == {
            ("user-001415", True, year_2100), ("user-001617", True, year_2100)}
    assert [(s["computed_time"], s["stale"]) for s in syncs(client, tenant, "7b2k9xq")] == [
        (year_2100 - 1, 2), (year_2100, 0)]


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
    assert batch.state == RECEIVED
    assert batch.error.startswith("RuntimeError at bridge/cohorts/jobs.py:")  # its message may name users: withheld
    assert members(runtime) == {}  # rolled back with the claim

    monkeypatch.setattr(jobs, "apply_batch", real_apply)
    assert jobs.process_batch(batch.id, runtime=runtime).entered == 2
    [batch] = batches(runtime)
    assert (batch.state, batch.error) == (PROCESSED, None)
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(CohortMember)) == 2
