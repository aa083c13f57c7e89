"""Inputs as the platforms really send them (made-up data): nothing valid is lost, no number lies.

Each test is one kind of input that used to refuse valid data or send a wrong value, tried at every
door it can come through: the event stream, the registry API, the CSV import.
"""
from __future__ import annotations

import json
from functools import partial

import orjson
import pytest
from freezegun import freeze_time
from sqlalchemy import select

from bridge import times
from bridge.cli import main
from bridge.delivery.replay import replay
from bridge.delivery.models import OutboxEvent
from bridge.registry.importer import import_subscriptions
from bridge.registry.service import find_record
from support.factories import OMIT, T0, cohort_batch, event_item



# This file's events: clicks on an iOS device, with a message that has only its id.
clicked = partial(event_item, kind="message.push.clicked", device_type="iOS")


def post_events(client, tenant, body):
    return client.post(f"/v1/apps/{tenant.app_id}/events", json=body, headers=tenant.auth)


def post_raw(client, tenant, path: str, data: bytes, headers):
    return client.post(f"/v1/apps/{tenant.app_id}/{path}", data=data,
                       headers={**headers, "Content-Type": "application/json"})


def sent(runtime) -> dict[str, dict]:
    """The Amplitude events the outbox holds, by source event id."""
    with runtime.session() as session:
        rows = session.scalars(select(OutboxEvent).where(OutboxEvent.state == "pending")).all()
        return {row.source_event_id: orjson.loads(row.amplitude_event) for row in rows}


def errors_of(response) -> dict[int, dict[str, str]]:
    return {r["index"]: r["errors"] for r in response.json["rejected"]}


# -- blank message metadata (OneSignal keeps a message's data for 30 days) ------------------------------


@pytest.mark.parametrize("message", [
    {"id": "m-1", "name": ""}, {"id": "m-1", "name": None}, {"id": "m-1"}, {"id": "m-1", "name": "   "},
    {"id": "m-1", "name": "", "title": "", "contents": {"en": ""}}, {"id": "m-1", "title": None, "contents": {}},
], ids=["empty", "null", "missing", "spaces", "all-empty", "all-null"])
def test_an_event_of_an_expired_message_is_sent_with_what_it_still_has(client, tenant, runtime, message):
    response = post_events(client, tenant, [clicked("e1", message=message)])
    assert (response.status_code, response.json["accepted"], response.json["rejected"]) == (202, 1, [])
    assert sent(runtime)["e1"]["event_properties"] == {"message_type": "push", "delivery_id": "m-1"}


def test_an_in_app_event_may_come_without_any_message(client, tenant, runtime):
    response = post_events(client, tenant, [clicked("e1", kind="message.iam.displayed", message=OMIT),
                                            clicked("e2", kind="message.push.received", message={"id": ""}),
                                            clicked("e3", kind="message.push.received", message=OMIT)])
    assert response.json["accepted"] == 1
    assert sent(runtime)["e1"]["event_properties"] == {"message_type": "in-app"}
    errors = errors_of(response)
    assert errors[1] == errors[2] == {"message.id": "Required for this event kind (it becomes delivery_id)."}


# -- a long campaign name is cut like every other string ----------------------------------------------


def test_a_long_campaign_name_is_cut_to_amplitudes_limit(client, tenant, runtime):
    name = "Black Friday " + "x" * 3000
    response = post_events(client, tenant, [clicked("e1", message={"id": "m-1", "name": name, "title": "t" * 5000})])
    assert response.json["accepted"] == 1
    properties = sent(runtime)["e1"]["event_properties"]
    assert properties["message_name"] == name[:1024]
    assert properties["message"] == "t" * 1024


# -- ids sent as JSON numbers ---------------------------------------------------------------------------


def test_a_numeric_external_user_id_is_its_decimal_string_everywhere(client, tenant, runtime):
    response = post_events(client, tenant, [
        {"event": {"id": 9001, "kind": "message.push.clicked", "timestamp": T0, "subscription_id": 77,
                   "subscription_device_type": "iOS", "external_id": 40521}, "message": {"id": 123456}},
        clicked("e2", external_id=True), clicked("e3", external_id=40521.5),
    ])
    assert response.json["accepted"] == 1
    event = sent(runtime)["9001"]
    assert (event["user_id"], event["device_id"], event["event_properties"]["delivery_id"]) == ("40521", "77", "123456")
    assert errors_of(response) == {1: {"event.external_id": "Must be a string (or a whole number)."},
                                   2: {"event.external_id": "Must be a string (or a whole number)."}}
    with runtime.session() as session:
        assert find_record(session, tenant.app_id, "77").external_id == "40521"
    # The subscriptions API reads the same number the same way.
    response = client.post(f"/v1/apps/{tenant.app_id}/subscriptions", headers=tenant.auth,
                           json=[{"subscription_id": 78, "type": "iOSPush", "external_id": 40521}])
    assert response.json["added"] == 1
    with runtime.session() as session:
        assert find_record(session, tenant.app_id, "78").external_id == "40521"


# -- times outside a plausible window ------------------------------------------------------------------


@pytest.mark.parametrize(("value", "message"), [
    (0, "0 as epoch seconds is 1970-01-01T00:00:00Z, outside the accepted window (2000-01-01 to one day "
        "after the bridge's clock)."),
    (99999999999, "99999999999 as epoch seconds is 5138-11-16T09:46:39Z, outside the accepted window "
                  "(2000-01-01 to one day after the bridge's clock)."),
    (T0 * 1_000_000, "1763856000000000 looks like microseconds (2025-11-23T00:00:00Z); send epoch seconds (or milliseconds)."),
    (T0 * 1_000_000_000, "1763856000000000000 looks like nanoseconds (2025-11-23T00:00:00Z); send epoch seconds (or milliseconds)."),
    (-T0, "-1763856000 as epoch seconds is 1914-02-09T00:00:00Z, outside the accepted window (2000-01-01 to one day "
          "after the bridge's clock)."),
    ("soon", "Must be epoch seconds (or milliseconds) as a number."),
])
def test_an_implausible_timestamp_is_refused_alone_with_one_message_naming_it(client, tenant, runtime, value, message):
    response = post_events(client, tenant, [clicked("e1", timestamp=value), clicked("e2")])
    assert response.json["accepted"] == 1
    assert errors_of(response) == {0: {"event.timestamp": message}}


def test_the_window_ends_one_day_after_the_bridges_clock(client, tenant, runtime):
    with freeze_time("2025-11-23 00:00:00"):
        day = 86_400
        response = post_events(client, tenant, [clicked("e1", timestamp=T0 + day),
                                                clicked("e2", timestamp=(T0 + day) * 1000),
                                                clicked("e3", timestamp=T0 + day + 1),
                                                clicked("e4", timestamp=OMIT)])  # no time at all
    assert response.json["accepted"] == 2
    errors = errors_of(response)
    assert list(errors[2]) == ["event.timestamp"] and "2025-11-24T00:00:01Z" in errors[2]["event.timestamp"]
    assert errors[3] == {"event.timestamp": "One of event.timestamp (epoch seconds) or event.datetime (ISO 8601) "
                                            "is required."}
    assert sent(runtime)["e2"]["time"] == (T0 + day) * 1000


def test_milliseconds_are_read_as_milliseconds(client, tenant, runtime):
    post_events(client, tenant, [clicked("e1", timestamp=T0 * 1000 + 123)])
    assert sent(runtime)["e1"]["time"] == T0 * 1000 + 123


@pytest.mark.parametrize("field", ["last_active", "created_at"])
def test_the_registry_api_refuses_the_same_implausible_times_per_record(client, tenant, runtime, field):
    response = client.post(f"/v1/apps/{tenant.app_id}/subscriptions", headers=tenant.auth, json=[
        {"subscription_id": "a", "type": "iOSPush", field: 0},
        {"subscription_id": "b", "type": "iOSPush", field: T0 * 1_000_000},
        {"subscription_id": "c", "type": "iOSPush", field: "1999-12-31T23:59:59Z"},
        {"subscription_id": "d", "type": "iOSPush", field: T0},
    ])
    assert response.json["added"] == 1
    assert errors_of(response) == {
        0: {field: "0 as epoch seconds is 1970-01-01T00:00:00Z, outside the accepted window (2000-01-01 to one day "
                   "after the bridge's clock)."},
        1: {field: "1763856000000000 looks like microseconds (2025-11-23T00:00:00Z); send epoch seconds (or milliseconds)."},
        2: {field: "1999-12-31T23:59:59+00:00 is outside the accepted window (2000-01-01 to one day after the "
                   "bridge's clock)."},
    }


def test_the_csv_import_rejects_the_row_with_an_implausible_time(runtime, tenant, tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("id,identifier,device_type,notification_types,last_active\n"
                    "s1,tok1,0,1,2025-11-20 10:11:12\n"
                    "s2,tok2,0,1,0\n"
                    f"s3,tok3,0,1,{T0 * 1_000_000}\n")
    with runtime.session() as session:
        summary = import_subscriptions(session, tenant.app_id, path)
    assert (summary.added, summary.rejected) == (1, 2)
    assert [e["reason"] for e in summary.errors] == [
        "last_active: 0 as epoch seconds is 1970-01-01T00:00:00Z, outside the accepted window (2000-01-01 to one "
        "day after the bridge's clock)",
        "last_active: 1763856000000000 looks like microseconds (2025-11-23T00:00:00Z); send epoch seconds (or milliseconds)",
    ]


# -- one date parser -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["2026-11-20T08:15:00", "2026-11-20 08:15:00 UTC", "2026-11-20T08:15:00Z",
                                  "2026-11-20T09:15:00+01:00", "2026-11-20 08:15:00"])
def test_one_date_time_rule_for_the_stream_the_api_and_the_import(client, tenant, runtime, tmp_path, text):
    expected = times.parse_datetime("2026-11-20T08:15:00Z")
    raw = clicked("e1", timestamp=OMIT)
    raw["event"]["datetime"] = text
    response = post_events(client, tenant, [raw])
    assert response.json["accepted"] == 1, response.json
    assert sent(runtime)["e1"]["time"] == int(expected.timestamp() * 1000)
    client.post(f"/v1/apps/{tenant.app_id}/subscriptions", headers=tenant.auth,
                json=[{"subscription_id": "api", "type": "iOSPush", "last_active": text}])
    path = tmp_path / "export.csv"
    path.write_text(f"id,identifier,device_type,notification_types,last_active\ncsv,tok,0,1,{text}\n")
    with runtime.session() as session:
        import_subscriptions(session, tenant.app_id, path)
        assert find_record(session, tenant.app_id, "api").last_active_at == expected
        assert find_record(session, tenant.app_id, "csv").last_active_at == expected


def test_timestamp_wins_when_it_and_datetime_disagree(client, tenant, runtime):
    raw = clicked("e1", timestamp=T0)
    raw["event"]["datetime"] = "2025-11-20T00:00:00Z"
    post_events(client, tenant, [raw])
    assert sent(runtime)["e1"]["time"] == T0 * 1000


def test_a_datetime_outside_the_window_is_refused(client, tenant):
    raw = clicked("e1", timestamp=OMIT)
    raw["event"]["datetime"] = "1970-01-01T00:00:00Z"
    response = post_events(client, tenant, [raw, clicked("e2")])
    assert errors_of(response) == {0: {"event.datetime": "1970-01-01T00:00:00+00:00 is outside the accepted window "
                                                         "(2000-01-01 to one day after the bridge's clock)."}}


# -- one broken character --------------------------------------------------------------------------------


def test_a_lone_surrogate_in_one_item_is_repaired_and_the_other_items_accepted(client, tenant, runtime):
    items = [orjson.dumps(clicked(f"e{i}", message={"id": "m", "title": "Sale"})).decode() for i in range(500)]
    items[137] = items[137].replace('"title":"Sale"', '"title":"Sale \\ud83c"')
    items[138] = items[138].replace('"title":"Sale"', '"title":"Sale \\ud83d\\ude00"')  # a valid pair stays
    response = post_raw(client, tenant, "events", f"[{','.join(items)}]".encode(), tenant.auth)
    assert (response.status_code, response.json["accepted"], response.json["rejected"]) == (202, 500, [])
    events = sent(runtime)
    assert events["e137"]["event_properties"]["message"] == "Sale \ufffd"
    assert events["e138"]["event_properties"]["message"] == "Sale \U0001f600"


def test_bytes_that_are_not_utf8_are_repaired_too(client, tenant, runtime):
    body = orjson.dumps([clicked("e1", message={"id": "m", "name": "Caf_"})]).replace(b"Caf_", b"Caf\xe9")
    response = post_raw(client, tenant, "events", body, tenant.auth)
    assert response.json["accepted"] == 1
    assert sent(runtime)["e1"]["event_properties"]["message_name"] == "Caf\ufffd"


def test_the_registry_api_repairs_broken_text_the_same_way(client, tenant, runtime):
    body = b'[{"subscription_id": "s1", "type": "iOSPush", "device_model": "Pixel \\udc00"},' \
           b' {"subscription_id": "s2", "type": "iOSPush"}]'
    response = post_raw(client, tenant, "subscriptions", body, tenant.auth)
    assert (response.status_code, response.json["added"]) == (200, 2)
    with runtime.session() as session:
        assert find_record(session, tenant.app_id, "s1").device_model == "Pixel \ufffd"


@pytest.mark.parametrize("body", [b"[NaN]", b'[{"a": Infinity}]', b'{"title": "\\ud83c"', b"[" * 2000 + b"]" * 2000])
def test_a_body_that_is_not_json_is_still_refused(client, tenant, body):
    response = post_raw(client, tenant, "events", body, tenant.auth)
    assert response.status_code == 400
    assert response.json["error"] in ("invalid_json", "too_deeply_nested")


# -- a shared device -------------------------------------------------------------------------------------


def test_an_event_without_a_user_is_credited_to_the_newest_earlier_user_by_time(client, tenant, runtime):
    body = [clicked("ana", subscription_id="shared", external_id="u-ana", timestamp=T0 + 500),
            clicked("ben", subscription_id="shared", external_id="u-ben", timestamp=T0 + 200),
            clicked("click", subscription_id="shared", external_id=None, timestamp=T0 + 650),
            clicked("early", subscription_id="shared", external_id=None, timestamp=T0 + 300),
            clicked("first", subscription_id="shared", external_id=None, timestamp=T0 + 100)]
    response = post_events(client, tenant, body)
    assert (response.json["accepted"], response.json["skipped"]) == (4, 1)
    events = sent(runtime)
    assert (events["click"]["user_id"], events["early"]["user_id"]) == ("u-ana", "u-ben")
    with runtime.session() as session:
        assert find_record(session, tenant.app_id, "shared").external_id == "u-ana"


def test_a_replay_resolves_a_skipped_event_by_what_the_registry_recorded(client, tenant, runtime):
    post_events(client, tenant, [clicked("first", subscription_id="shared", external_id=None, timestamp=T0 + 100)])
    post_events(client, tenant, [clicked("ana", subscription_id="shared", external_id="u-ana", timestamp=T0 + 500),
                                 clicked("ben", subscription_id="shared", external_id="u-ben", timestamp=T0 + 200)])
    with runtime.session() as session:
        result = replay(session, app_id=tenant.app_id, reason="unresolved_user")
        session.commit()
    assert result.requeued == 1
    assert sent(runtime)["first"]["user_id"] == "u-ana"


@pytest.mark.parametrize(("since", "requeued"), [
    ("2025-11-23T00:00:00", 1), ("2025-11-23 00:00:00 UTC", 1), ("2025-11-23T01:00:00+01:00", 1), ("1763856000", 1),
    ("2100-01-01T00:00:00", None), ("0", None),
])
def test_the_replay_command_reads_since_by_the_same_rule(client, tenant, cli, since, requeued):
    with freeze_time("2025-11-23 00:00:05"):
        post_events(client, tenant, [clicked("first", subscription_id="shared", external_id=None)])
        post_events(client, tenant, [clicked("ana", subscription_id="shared", external_id="u-ana")])
        result = cli.invoke(main, ["deliveries", "replay", "--reason", "unresolved_user", "--since", since])
    if requeued is None:
        assert result.exit_code == 2 and "outside the accepted window" in result.output
    else:
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["requeued"] == requeued


# -- digits and dates that are not what they look like ---------------------------------------------------


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_a_date_past_what_utc_can_hold_is_a_field_error_not_a_500(client, tenant, value):
    raw = clicked("e1", timestamp=OMIT)
    raw["event"]["datetime"] = value
    response = post_events(client, tenant, [raw, clicked("e2")])
    assert response.status_code == 202
    assert errors_of(response) == {0: {"event.datetime": f"{value!r} is outside the accepted window (2000-01-01 "
                                                         "to one day after the bridge's clock)."}}
    response = client.post(f"/v1/apps/{tenant.app_id}/subscriptions", headers=tenant.auth,
                           json=[{"subscription_id": "a", "type": "iOSPush", "last_active": value}])
    assert response.status_code == 400 and "outside the accepted window" in response.json["details"]["rejected"][0]["errors"]["last_active"]


@pytest.mark.parametrize("digits", ["¹", "١٧٦٣٨٥٦٠٠٠"])
def test_digits_other_than_ascii_are_refused_as_numbers(client, tenant, runtime, tmp_path, digits):
    response = post_events(client, tenant, [clicked("e1", timestamp=digits), clicked("e2")])
    assert errors_of(response) == {0: {"event.timestamp": "Must be epoch seconds (or milliseconds) as a number."}}
    path = tmp_path / "export.csv"
    path.write_text(f"id,identifier,device_type,notification_types\ns1,tok1,{digits[0]},{digits}\n")
    with runtime.session() as session:
        summary = import_subscriptions(session, tenant.app_id, path)
    assert summary.rejected == 1 and "device_type" in summary.errors[0]["reason"] and "notification_types" in summary.errors[0]["reason"]
    client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", headers=tenant.cohort_auth,
                json=cohort_batch(["u1"], cohort_id="c1"))
    response = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1/syncs?limit={digits}", headers=tenant.auth)
    assert (response.status_code, response.json["error"]) == (400, "invalid_parameter")
