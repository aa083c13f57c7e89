"""POST /v1/apps/<app_id>/events: durable acceptance, idempotency, and every class of bad input."""
from __future__ import annotations

import copy
import json

import orjson
import pytest
from sqlalchemy import select

from bridge.delivery.models import OutboxEvent
from support import FIXTURES
from support.factories import event_item, event_items


def outbox(runtime) -> list[OutboxEvent]:
    with runtime.session() as session:
        return list(session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))


def post(client, tenant, body, **headers):
    return client.post(f"/v1/apps/{tenant.app_id}/events", json=body, headers={**tenant.auth, **headers})


def test_accepts_a_batch_and_stores_it_before_answering(client, tenant, runtime):
    response = post(client, tenant, event_items(5))
    assert response.status_code == 202
    assert response.json == {"accepted": 5, "skipped": 0, "duplicates": 0, "ignored": 0, "rejected": []}
    rows = outbox(runtime)
    assert [r.source_event_id for r in rows] == [f"evt-{i}" for i in range(5)]
    assert all(r.state == "pending" for r in rows)
    assert orjson.loads(rows[0].amplitude_event)["event_type"] == "Push Pending Delivery"


def test_a_single_object_is_accepted_too(client, tenant):
    assert post(client, tenant, event_item("evt-1")).json["accepted"] == 1


def test_reposting_the_same_event_ids_is_a_counted_no_op(client, tenant, runtime):
    post(client, tenant, [event_item("evt-1"), event_item("evt-2")])
    again = post(client, tenant, [event_item("evt-1"), event_item("evt-2"), event_item("evt-3"), event_item("evt-3")])
    assert again.json == {"accepted": 1, "skipped": 0, "duplicates": 3, "ignored": 0, "rejected": []}
    assert len(outbox(runtime)) == 3


def test_unmapped_kinds_are_ignored_and_counted(client, tenant, runtime):
    body = [event_item("evt-1"), {"event": {"id": "s1", "kind": "session.started"}}, {"event": {"id": "x", "kind": "user.tag.set", "whatever": 1}}]
    assert post(client, tenant, body).json == {"accepted": 1, "skipped": 0, "duplicates": 0, "ignored": 2, "rejected": []}
    assert len(outbox(runtime)) == 1


def test_invalid_items_are_reported_by_index_and_field_and_never_block_valid_ones(client, tenant, runtime):
    no_id = event_item("evt-2")
    del no_id["event"]["id"]
    bad_time = event_item("evt-3")
    del bad_time["event"]["timestamp"]
    no_message_id = event_item("evt-4")
    del no_message_id["message"]["id"]
    bad_title = event_item("evt-5")
    bad_title["message"]["title"] = 42
    body = [event_item("evt-1"), no_id, bad_time, no_message_id, bad_title, "not an object", event_item("evt-6")]
    response = post(client, tenant, body)
    assert response.status_code == 202
    assert response.json["accepted"] == 2
    errors = {r["index"]: r["errors"] for r in response.json["rejected"]}
    assert set(errors) == {1, 2, 3, 4, 5}
    assert "event.id" in errors[1]
    assert "event.timestamp" in errors[2]
    assert "message.id" in errors[3]
    assert "message.title" in errors[4]
    assert "_item" in errors[5]
    assert {r.source_event_id for r in outbox(runtime)} == {"evt-1", "evt-6"}


def test_a_request_with_no_valid_item_is_a_400_with_the_same_details(client, tenant, runtime):
    bad = event_item("evt-1")
    del bad["event"]["subscription_id"]
    response = post(client, tenant, [bad])
    assert response.status_code == 400
    assert response.json["error"] == "invalid_events"
    assert response.json["details"]["rejected"][0]["errors"] == {"event.subscription_id": "Missing data for required field."}
    assert outbox(runtime) == []


def test_events_without_a_resolvable_user_are_stored_as_skipped_with_the_reason(client, tenant, runtime):
    response = post(client, tenant, [event_item("evt-1", external_id=""), event_item("evt-2", external_id="null"),
                                     event_item("evt-3")])
    assert response.json["skipped"] == 2
    skipped = [r for r in outbox(runtime) if r.state == "skipped"]
    assert {r.reason for r in skipped} == {"unresolved_user"}
    stats = client.get(f"/v1/apps/{tenant.app_id}/deliveries/stats", headers=tenant.auth).json
    assert stats["skipped"] == {"total": 2, "reasons": {"unresolved_user": 2}}


def test_an_event_without_external_id_takes_the_one_seen_on_its_subscription_in_the_same_request(client, tenant, runtime):
    first = event_item("evt-7", external_id="user-77", subscription_id="sub-0")
    second = event_item("evt-14", external_id=None, subscription_id="sub-0")
    assert post(client, tenant, [first, second]).json["accepted"] == 2
    assert {r.user_id for r in outbox(runtime)} == {"user-77"}


def test_the_apps_enabled_kinds_decide_what_is_sent(client, tenant, runtime):
    from bridge.apps.models import App
    from bridge.apps.service import update_app

    with runtime.session() as session:
        update_app(session, session.get(App, tenant.app_id), enabled_kinds=["message.push.clicked"])
        session.commit()
    body = [event_item("evt-1", "message.push.sent"), event_item("evt-2", "message.push.clicked")]
    assert post(client, tenant, body).json["ignored"] == 1
    assert [r.kind for r in outbox(runtime)] == ["message.push.clicked"]


def test_accepting_schedules_a_delivery_once(client, tenant, runtime):
    post(client, tenant, [event_item("evt-1")])
    post(client, tenant, [event_item("evt-2")])
    assert len(runtime.runner.pending) == 1


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "unauthorized"),
    ({"Authorization": "Bearer wrong"}, 401, "unauthorized"),
    ({"Authorization": "Basic abc"}, 401, "unauthorized"),
])
def test_wrong_or_missing_token(client, tenant, headers, status, code):
    response = client.post(f"/v1/apps/{tenant.app_id}/events", json=[event_item("evt-1")], headers=headers)
    assert (response.status_code, response.json["error"]) == (status, code)


def test_the_cohort_token_does_not_open_the_event_api(client, tenant):
    response = client.post(f"/v1/apps/{tenant.app_id}/events", json=[event_item("evt-1")], headers=tenant.cohort_auth)
    assert response.status_code == 401


def test_an_unknown_app_is_answered_as_a_wrong_token_is_so_app_ids_cannot_be_probed(client, tenant):
    unknown = client.post("/v1/apps/00000000-0000-4000-8000-000000000000/events", json=[event_item("evt-1")], headers=tenant.auth)
    wrong_token = client.post(f"/v1/apps/{tenant.app_id}/events", json=[event_item("evt-1")],
                              headers={"Authorization": "Bearer not-a-token"})
    assert (unknown.status_code, unknown.json["error"]) == (401, "unauthorized")
    assert unknown.json == wrong_token.json


@pytest.mark.parametrize(("data", "content_type", "status", "code"), [
    ("{not json", "application/json", 400, "invalid_json"),
    ('"a string"', "application/json", 400, "invalid_body"),
    ("[]", "application/json", 400, "empty_batch"),
    ("event=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ("x" * (2 * 1024 * 1024 + 1), "application/json", 413, "payload_too_large"),
])
def test_malformed_requests_get_a_json_4xx(client, tenant, runtime, data, content_type, status, code):
    response = client.post(f"/v1/apps/{tenant.app_id}/events", data=data, headers={**tenant.auth, "Content-Type": content_type})
    assert response.status_code == status
    assert response.is_json and response.json["error"] == code and response.json["message"]
    assert outbox(runtime) == []


def test_more_than_1000_items_is_refused_whole(client, tenant, runtime):
    response = post(client, tenant, event_items(1001))
    assert (response.status_code, response.json["error"]) == (413, "too_many_items")
    assert outbox(runtime) == []


def test_the_reference_payloads_are_accepted(client, tenant, runtime):
    body = copy.deepcopy(json.loads((FIXTURES / "onesignal-events.json").read_text()))
    response = post(client, tenant, body)
    assert response.status_code == 202
    assert response.json["rejected"] == []
    assert response.json["accepted"] + response.json["skipped"] + response.json["ignored"] == len(body)


def test_unknown_routes_and_methods_answer_json(client):
    assert client.get("/nope").json["error"] == "not_found"
    assert client.get("/v1/apps/x/events").status_code == 405


def test_events_are_kept_and_acknowledged_when_the_queue_is_down(client, tenant, runtime, monkeypatch):
    def queue_down(*args):
        raise ConnectionError("redis is restarting")

    monkeypatch.setattr(runtime.runner, "enqueue_once", queue_down)
    response = post(client, tenant, [event_item("evt-1")])
    assert response.status_code == 202 and response.json["accepted"] == 1
    assert [r.state for r in outbox(runtime)] == ["pending"]  # the sweep delivers it later


def test_an_unreachable_database_is_a_503_with_retry_after(tenant, settings_env):
    from bridge.web import create_app

    broken = create_app({**settings_env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    response = broken.test_client().post(f"/v1/apps/{tenant.app_id}/events", json=[event_item("evt-1")], headers=tenant.auth)
    assert response.status_code == 503 and response.json["error"] == "database_unavailable"
    assert response.headers["Retry-After"] == "5"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("sqlstate", ["40P01", "40001"], ids=["deadlock", "serialization failure"])
def test_a_deadlock_or_serialization_failure_is_a_conflict_to_retry_not_an_unreachable_database(app, client,
                                                                                                   sqlstate):
    """PostgreSQL rolls a transaction back for a concurrent one's sake (SQLSTATE 40P01 or 40001): the
    database answered, and the same request again succeeds."""
    from sqlalchemy import text

    from bridge.request_scope import get_db

    def conflicting():
        get_db().execute(text(f"DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '{sqlstate}'; END $$"))
        return ""

    app.add_url_rule("/_conflict", "conflict", conflicting)
    response = client.get("/_conflict")
    assert (response.status_code, response.json, response.headers["Retry-After"]) == (503, {
        "error": "database_conflict", "message": "A concurrent change conflicted with this request; retry.",
        "details": {}}, "1")
