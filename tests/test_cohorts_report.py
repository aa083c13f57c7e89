"""The cohort report, the unmatched users and the resolved audience, against hand-computed numbers."""
from __future__ import annotations

import csv
import io
import json
import uuid

import psycopg
import pytest
from sqlalchemy import insert, update

from bridge.cohorts import report
from bridge.cohorts.jobs import process_batch
from bridge.registry.importer import import_subscriptions
from bridge.registry.models import Subscription
from support import FIXTURES
from support.factories import COHORT_ID as COHORT
from support.factories import cohort_batch, new_tenant, store_cohort_batch

BASE = "/v1/apps/{}/cohorts"


def sync(runtime, app_id: str, message_id: str, in_cohort: bool, computed_time: int, user_ids, cohort=COHORT):
    """Store one batch of `cohort` and apply it."""
    process_batch(store_cohort_batch(runtime, app_id, message_id, user_ids, in_cohort=in_cohort,
                                     computed_time=computed_time, cohort_id=cohort), runtime=runtime)


def add_records(runtime, app_id: str, *records: tuple[str | None, str, bool | None]):
    """Channel records as (external_id, channel, subscribed); subscribed None is an unknown state."""
    types = {"push": "iOSPush", "email": "Email", "sms": "SMS"}
    rows = []
    for external_id, channel, subscribed in records:
        sid = uuid.uuid4().hex
        rows.append({"app_id": app_id, "subscription_id": sid, "channel": channel, "type": types[channel],
                     "identifier": f"{channel}-{sid[:8]}", "external_id": external_id, "subscribed": subscribed})
    with runtime.session() as session:
        session.execute(insert(Subscription), rows)
        session.commit()


@pytest.fixture
def other_app(runtime):
    return new_tenant(runtime, "Other")


@pytest.fixture
def dataset(runtime, tenant, other_app):
    """u1 one subscribed push; u2 push + email subscribed, sms unsubscribed; u3 only an unsubscribed push;
    u4 no record; u5 a record in another app only; u6 two subscribed e-mails; u7 left the cohort.
    Plus two records of this app without External User ID."""
    sync(runtime, tenant.app_id, "enter", True, 100, ["u1", "u2", "u3", "u4", "u5", "u6", "u7"])
    sync(runtime, tenant.app_id, "exit", False, 200, ["u7"])
    add_records(runtime, tenant.app_id,
                ("u1", "push", True),
                ("u2", "push", True), ("u2", "email", True), ("u2", "sms", False),
                ("u3", "push", False),
                ("u6", "email", True), ("u6", "email", True),
                ("u7", "push", True),
                (None, "push", True), ("", "email", True))
    add_records(runtime, other_app.app_id, ("u1", "push", True), ("u5", "push", True), ("u4", "sms", True))


def get(client, tenant, path="", **params):
    return client.get(BASE.format(tenant.app_id) + path, headers=tenant.auth, query_string=params)


def test_report_counts_every_number(client, tenant, dataset):
    body = get(client, tenant, f"/{COHORT}").get_json()

    assert body["cohort_id"] == COHORT and body["cohort_name"] == "Churn risk"
    assert body["users"] == {"in_cohort": 6, "matched": 4, "unmatched": 2, "with_multiple_devices": 2,
                             "with_no_subscribed_record": 1, "with_only_unsubscribed_records": 1,
                             "with_unknown_state_and_no_subscribed_record": 0}
    assert body["devices"] == {
        "total": 7, "subscribed": 5, "unsubscribed": 2, "unknown": 0, "extra_from_multiple_devices": 3,
        "by_channel": {"push": {"total": 3, "subscribed": 2, "unsubscribed": 1, "unknown": 0},
                       "email": {"total": 3, "subscribed": 3, "unsubscribed": 0, "unknown": 0},
                       "sms": {"total": 1, "subscribed": 0, "unsubscribed": 1, "unknown": 0}},
    }
    assert body["segment_size"] == 5 and body["segment_size_range"] == {"min": 5, "max": 5}


def test_explanations_name_each_cause_and_add_up(client, tenant, dataset):
    body = get(client, tenant, f"/{COHORT}").get_json()

    assert body["explanations"] == [
        {"cause": "users_without_channel_record", "delta": -2,
         "text": "2 users have no channel record with a matching External User ID"},
        {"cause": "users_with_multiple_devices", "delta": 3, "text": "2 users have more than one device (+3 records)"},
        {"cause": "unsubscribed_records", "delta": -2, "text": "2 records are unsubscribed and not in the segment"},
    ]
    assert body["users"]["in_cohort"] + sum(e["delta"] for e in body["explanations"]) == body["segment_size"]
    assert body["arithmetic"] == "6 - 2 + 3 - 2 = 5"
    assert body["summary"] == (
        "Amplitude counts 6 users; a messaging segment would count 5 subscribed channel records because "
        "2 users have no channel record with a matching External User ID, 2 users have more than one device "
        "(+3 records) and 2 records are unsubscribed and not in the segment.")
    assert body["context"] == [
        "1 matched user has only unsubscribed records, so no message would reach them.",
        "2 channel records of this app have no External User ID and can never match a cohort user.",
    ]


def test_the_report_follows_the_channel_records_without_a_new_sync(client, runtime, tenant, dataset):
    add_records(runtime, tenant.app_id, ("u4", "email", True))
    with runtime.session() as session:
        session.execute(update(Subscription).where(Subscription.external_id == "u1", Subscription.app_id == tenant.app_id)
                        .values(subscribed=False))
        session.commit()

    body = get(client, tenant, f"/{COHORT}").get_json()

    assert body["users"] | {"matched": 5, "unmatched": 1, "with_no_subscribed_record": 2} == body["users"]
    assert (body["devices"]["total"], body["devices"]["subscribed"], body["segment_size"]) == (8, 5, 5)
    assert body["arithmetic"] == "6 - 1 + 3 - 3 = 5"


@pytest.fixture
def unknown_states(runtime, tenant):
    """u1 one subscribed push; u2 a push of unknown state and an unsubscribed e-mail; u3 only an
    unsubscribed SMS; u4 two pushes of unknown state; u5 a subscribed e-mail and an SMS of unknown state."""
    sync(runtime, tenant.app_id, "enter", True, 100, ["u1", "u2", "u3", "u4", "u5"])
    add_records(runtime, tenant.app_id,
                ("u1", "push", True),
                ("u2", "push", None), ("u2", "email", False),
                ("u3", "sms", False),
                ("u4", "push", None), ("u4", "push", None),
                ("u5", "email", True), ("u5", "sms", None))


def test_records_of_unknown_state_are_counted_apart_and_bound_the_segment(client, tenant, unknown_states):
    body = get(client, tenant, f"/{COHORT}").get_json()

    assert body["users"] == {"in_cohort": 5, "matched": 5, "unmatched": 0, "with_multiple_devices": 3,
                             "with_no_subscribed_record": 3, "with_only_unsubscribed_records": 1,
                             "with_unknown_state_and_no_subscribed_record": 2}
    assert body["devices"] == {
        "total": 8, "subscribed": 2, "unsubscribed": 2, "unknown": 4, "extra_from_multiple_devices": 3,
        "by_channel": {"push": {"total": 4, "subscribed": 1, "unsubscribed": 0, "unknown": 3},
                       "email": {"total": 2, "subscribed": 1, "unsubscribed": 1, "unknown": 0},
                       "sms": {"total": 2, "subscribed": 0, "unsubscribed": 1, "unknown": 1}},
    }
    assert body["segment_size"] == 2 and body["segment_size_range"] == {"min": 2, "max": 6}


def test_records_of_unknown_state_are_explained_and_never_called_unsubscribed(client, runtime, tenant, unknown_states):
    body = get(client, tenant, f"/{COHORT}").get_json()

    assert body["explanations"] == [
        {"cause": "users_with_multiple_devices", "delta": 3, "text": "3 users have more than one device (+3 records)"},
        {"cause": "unsubscribed_records", "delta": -2, "text": "2 records are unsubscribed and not in the segment"},
        {"cause": "records_with_unknown_subscription_state", "delta": -4,
         "text": "4 records have an unknown subscription state (no source said whether they are subscribed) and are "
                 "not in the segment, which could be up to 6"},
    ]
    assert body["arithmetic"] == "5 + 3 - 2 - 4 = 2"
    assert body["users"]["in_cohort"] + sum(e["delta"] for e in body["explanations"]) == body["segment_size"]
    assert body["context"] == [
        "1 matched user has only unsubscribed records, so no message would reach them.",
        "2 matched users have no subscribed record but at least one of unknown state: "
        "whether a message would reach them is unknown.",
    ]

    with runtime.session() as session:  # the state of all but u5's SMS becomes known
        session.execute(update(Subscription).where(Subscription.app_id == tenant.app_id, Subscription.channel == "push",
                                                   Subscription.subscribed.is_(None)).values(subscribed=False))
        session.commit()
    body = get(client, tenant, f"/{COHORT}").get_json()
    assert body["explanations"][-1]["text"] == ("1 record has an unknown subscription state (no source said whether "
                                                "it is subscribed) and is not in the segment, which could be up to 3")
    assert body["arithmetic"] == "5 + 3 - 5 - 1 = 2"
    assert body["context"] == ["3 matched users have only unsubscribed records, so no message would reach them."]


def test_the_audience_lists_unknown_states_as_null_and_filters_them_apart(client, tenant, unknown_states):
    states = [(r["external_id"], r["channel"], r["subscribed"]) for r in walk(client, tenant, f"/{COHORT}/devices")]
    assert states == [("u1", "push", True), ("u2", "push", None), ("u2", "email", False), ("u3", "sms", False),
                      ("u4", "push", None), ("u4", "push", None), ("u5", "email", True), ("u5", "sms", None)]
    unsubscribed = walk(client, tenant, f"/{COHORT}/devices", subscribed="false")
    assert [(r["external_id"], r["channel"]) for r in unsubscribed] == [("u2", "email"), ("u3", "sms")]
    unknown = walk(client, tenant, f"/{COHORT}/devices", subscribed="unknown", limit=2)
    assert [(r["external_id"], r["channel"]) for r in unknown] == [("u2", "push"), ("u4", "push"), ("u4", "push"),
                                                                   ("u5", "sms")]

    response = get(client, tenant, f"/{COHORT}/devices", format="csv")
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [(r["external_id"], r["subscribed"]) for r in rows] == [
        ("u1", "true"), ("u2", ""), ("u2", "false"), ("u3", "false"), ("u4", ""), ("u4", ""), ("u5", "true"), ("u5", "")]


def test_an_export_without_notification_types_is_reported_as_unknown_not_unsubscribed(client, runtime, tenant):
    with runtime.session() as session:
        import_subscriptions(session, tenant.app_id, FIXTURES / "subscriptions-legacy-no-notification-types.csv")
        session.commit()
    body = json.loads((FIXTURES / "cohort-initial-sync.json").read_text())
    sync(runtime, tenant.app_id, body["message_id"], True, 100, [u["user_id"] for u in body["users"]])

    report = get(client, tenant, f"/{COHORT}").get_json()

    assert report["users"] | {"in_cohort": 5, "matched": 3, "with_no_subscribed_record": 3,
                              "with_only_unsubscribed_records": 0,
                              "with_unknown_state_and_no_subscribed_record": 3} == report["users"]
    assert (report["devices"]["total"], report["devices"]["subscribed"], report["devices"]["unsubscribed"],
            report["devices"]["unknown"]) == (5, 0, 1, 4)
    assert report["segment_size"] == 0 and report["segment_size_range"] == {"min": 0, "max": 4}
    assert report["arithmetic"] == "5 - 2 + 2 - 1 - 4 = 0"
    assert report["explanations"][-1]["text"] == (
        "4 records have an unknown subscription state (no source said whether they are subscribed) and are not in "
        "the segment, which could be up to 4")
    assert report["context"][0] == ("3 matched users have no subscribed record but at least one of unknown state: "
                                    "whether a message would reach them is unknown.")
    assert not any("only unsubscribed" in note or "no message would reach" in note for note in report["context"])


def test_numbers_are_written_with_thousands_separators(client, runtime, tenant):
    sync(runtime, tenant.app_id, "big", True, 100, [f"user-{i:05d}" for i in range(1500)])
    add_records(runtime, tenant.app_id, *[("user-00000", "push", True)] * 1201)

    body = get(client, tenant, f"/{COHORT}").get_json()

    assert body["arithmetic"] == "1,500 - 1,499 + 1,200 = 1,201"
    assert body["explanations"][0]["text"] == "1,499 users have no channel record with a matching External User ID"
    assert body["explanations"][1]["text"] == "1 user has more than one device (+1,200 records)"


def test_a_cohort_where_every_user_has_one_subscribed_record_needs_no_explanation(client, runtime, tenant):
    sync(runtime, tenant.app_id, "enter", True, 100, ["u1", "u2"])
    add_records(runtime, tenant.app_id, ("u1", "push", True), ("u2", "sms", True))

    body = get(client, tenant, f"/{COHORT}").get_json()

    assert body["explanations"] == [] and body["arithmetic"] == "2 = 2" and body["context"] == []
    assert (body["unusable_users"], body["unusable_reasons"]) == (0, {})
    assert body["summary"] == ("Amplitude counts 2 users; a messaging segment would count 2 subscribed channel records: "
                               "every user has exactly one channel record, and it is subscribed.")


def webhook(client, tenant, message_id: str, in_cohort: bool, users: list) -> None:
    """Post one batch to the cohort webhook, as Amplitude does."""
    body = cohort_batch(users, message_id=message_id, in_cohort=in_cohort, computed_time=1764201600)
    response = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=body, headers=tenant.cohort_auth)
    assert response.status_code == 200, response.get_json()


def test_entries_without_a_usable_user_id_are_counted_apart_from_the_arithmetic(client, runtime, tenant, dataset):
    webhook(client, tenant, "enter-2", True, [{"user_id": None}, {"user_id": "u1"}, {"user_id": "null"}])
    webhook(client, tenant, "exit-2", False, [{"user_id": " "}])
    before = get(client, tenant, f"/{COHORT}").get_json()
    runtime.runner.run_pending()

    body = get(client, tenant, f"/{COHORT}").get_json()

    assert before["unusable_users"] == 3  # counted when the batches arrive
    assert (body["unusable_users"], body["unusable_reasons"]) == (
        3, {"blank_user_id": 1, "missing_user_id": 1, "placeholder_user_id": 1})
    assert body["users"]["in_cohort"] == 6 and body["arithmetic"] == "6 - 2 + 3 - 2 = 5"
    assert body["context"][-1] == (
        "3 entries Amplitude sent for this cohort had no usable user_id (1 blank_user_id, 1 missing_user_id, "
        "1 placeholder_user_id) and were not applied, so they are not in in_cohort (Amplitude's own count may "
        "include them); each sync lists its own.")
    assert [s["unusable_users"] for s in body["recent_syncs"]] == [1, 2, 0, 0]


def test_the_hand_written_aggregate_agrees_with_the_report(runtime, tenant, dataset, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("the yardstick query is PostgreSQL SQL")
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        flat = conn.execute(report.EQUIVALENT_SQL, {"app_id": tenant.app_id, "cohort_id": COHORT}).fetchone()
    assert flat == (6, 4, 7, 5)


def test_cohorts_are_listed_with_their_size(client, runtime, tenant, dataset):
    sync(runtime, tenant.app_id, "other-cohort", True, 100, ["u1"], cohort="aaa111")

    body = get(client, tenant).get_json()

    assert [(c["cohort_id"], c["users_in_cohort"]) for c in body["items"]] == [("7b2k9xq", 6), ("aaa111", 1)]
    assert body["next"] is None
    first = get(client, tenant, limit=1).get_json()
    assert [c["cohort_id"] for c in first["items"]] == ["7b2k9xq"]
    assert [c["cohort_id"] for c in get(client, tenant, limit=1, after=first["next"]).get_json()["items"]] == ["aaa111"]


def test_the_sync_history_lists_each_batch_newest_first(client, runtime, tenant, dataset):
    sync(runtime, tenant.app_id, "exit", False, 200, ["u7"])  # Amplitude retried

    syncs = get(client, tenant, f"/{COHORT}/syncs").get_json()
    recent = get(client, tenant, f"/{COHORT}").get_json()["recent_syncs"]

    assert recent == syncs["items"] and syncs["next"] is None
    exit_batch, enter_batch = syncs["items"]
    assert {k: exit_batch[k] for k in ("message_id", "in_cohort", "user_count", "state", "left", "retries")} == \
        {"message_id": "exit", "in_cohort": False, "user_count": 1, "state": "processed", "left": 1, "retries": 1}
    assert (enter_batch["entered"], enter_batch["already_known"], enter_batch["stale"]) == (7, 0, 0)
    assert enter_batch["received_at"] and enter_batch["processed_at"]
    older = get(client, tenant, f"/{COHORT}/syncs", limit=1).get_json()
    assert get(client, tenant, f"/{COHORT}/syncs", after=older["next"]).get_json()["items"] == [enter_batch]


def walk(client, tenant, path, **params) -> list:
    """Every item of a paged listing, following `next` to the end."""
    items, after = [], None
    while True:
        body = get(client, tenant, path, **params, **({"after": after} if after else {})).get_json()
        items += body["items"]
        if body["next"] is None:
            return items
        after = body["next"]


def test_unmatched_users_are_paged_exactly_once(client, runtime, tenant, dataset):
    sync(runtime, tenant.app_id, "more", True, 300, [f"x{i}" for i in range(5)])

    assert walk(client, tenant, f"/{COHORT}/unmatched", limit=2) == ["u4", "u5", "x0", "x1", "x2", "x3", "x4"]


def test_devices_are_paged_exactly_once_and_filtered(client, tenant, dataset):
    records = walk(client, tenant, f"/{COHORT}/devices", limit=2)

    assert [(r["external_id"], r["channel"], r["subscribed"]) for r in records] == [
        ("u1", "push", True), ("u2", "push", True), ("u2", "email", True), ("u2", "sms", False),
        ("u3", "push", False), ("u6", "email", True), ("u6", "email", True)]
    assert len({r["subscription_id"] for r in records}) == 7
    assert set(records[0]) == set(report.AUDIENCE_COLUMNS)
    email = walk(client, tenant, f"/{COHORT}/devices", channel="email", limit=1)
    assert [r["external_id"] for r in email] == ["u2", "u6", "u6"]
    unsubscribed = walk(client, tenant, f"/{COHORT}/devices", subscribed="false")
    assert [(r["external_id"], r["channel"]) for r in unsubscribed] == [("u2", "sms"), ("u3", "push")]


@pytest.mark.parametrize("how", [{"query": {"format": "csv"}}, {"headers": {"Accept": "text/csv"}}])
def test_devices_as_csv(client, tenant, dataset, how):
    response = client.get(BASE.format(tenant.app_id) + f"/{COHORT}/devices",
                          headers=tenant.auth | how.get("headers", {}),
                          query_string={"subscribed": "true"} | how.get("query", {}))

    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert list(rows[0]) == list(report.AUDIENCE_COLUMNS)
    assert [(r["external_id"], r["channel"], r["subscribed"]) for r in rows] == [
        ("u1", "push", "true"), ("u2", "push", "true"), ("u2", "email", "true"),
        ("u6", "email", "true"), ("u6", "email", "true")]
    assert all(r["type"] and r["identifier"] and r["subscription_id"] for r in rows)


@pytest.mark.parametrize("path", ["", "/syncs", "/unmatched", "/devices"])
def test_unknown_cohort_is_404(client, tenant, path):
    response = get(client, tenant, f"/nope{path}")
    assert response.status_code == 404
    assert response.get_json()["error"] == "cohort_not_found"


def test_an_apps_key_does_not_read_another_apps_cohorts(client, runtime, tenant, other_app):
    other_id = other_app.app_id
    sync(runtime, other_id, "enter", True, 100, ["u1"])

    assert client.get(BASE.format(other_id) + f"/{COHORT}", headers=tenant.auth).status_code == 401
    assert client.get(BASE.format(other_id), headers=tenant.auth).status_code == 401
    assert get(client, tenant, f"/{COHORT}").status_code == 404
    assert client.get(BASE.format(other_id) + f"/{COHORT}",
                      headers=other_app.auth).status_code == 200


def test_the_cohort_token_does_not_read(client, tenant, dataset):
    assert client.get(BASE.format(tenant.app_id), headers=tenant.cohort_auth).status_code == 401


@pytest.mark.parametrize("params", [
    {"limit": "0"}, {"limit": "1001"}, {"limit": "ten"}, {"after": "garbage"}, {"after": "WzEsMl0"},
    {"channel": "fax"}, {"subscribed": "maybe"}, {"format": "xml"},
])
def test_bad_parameters_are_400(client, tenant, dataset, params):
    response = get(client, tenant, f"/{COHORT}/devices", **params)
    assert response.status_code == 400
    assert response.get_json()["error"] in ("invalid_parameter", "invalid_cursor")
