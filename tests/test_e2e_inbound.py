"""End to end, inbound: channel records imported from a OneSignal CSV and learned from the event
stream, Amplitude cohort batches (with a retry, an exit and a late stale batch) through the real web
app, Redis and a worker, and a report whose every number equals the truth computed here."""
from __future__ import annotations

import csv

import httpx
import pytest

from support.databases import libpq_url, truncate
from support.factories import cohort_batch, event_item
from support.processes import SECRET_KEY, bridge_cli, start_web, start_worker, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LEGACY_HEADER = ["id", "identifier", "session_count", "language", "timezone", "game_version", "device_os", "device_type",
                 "device_model", "ad_id", "tags", "last_active", "playtime", "amount_spent", "created_at",
                 "invalid_identifier", "badge_count", "external_user_id", "notification_types"]
USERS = 400


def channel_records() -> list[dict]:
    """User i owns i % 4 records: none; one push; push + an unsubscribed e-mail; push, e-mail and SMS.
    Plus 25 records with no External User ID."""
    records = []
    for i in range(USERS):
        owned = [("0", f"tok{i:040d}", "1"), ("11", f"u{i}@example.com", "-2"), ("14", f"+1555{i:07d}", "1")][: i % 4]
        if i % 4 == 3:
            owned[1] = ("11", f"u{i}@example.com", "1")
        for n, (device_type, identifier, notification_types) in enumerate(owned):
            records.append({"id": f"{i:08d}-0000-4000-8000-{n:012d}", "identifier": identifier, "device_type": device_type,
                            "external_user_id": f"user-{i:05d}", "notification_types": notification_types})
    for n in range(25):
        records.append({"id": f"ffffffff-0000-4000-8000-{n:012d}", "identifier": f"anon{n}@example.com",
                        "device_type": "11", "external_user_id": "", "notification_types": "1"})
    return records


def write_legacy_csv(path, records) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, LEGACY_HEADER)
        writer.writeheader()
        for r in records:
            writer.writerow({**{k: "" for k in LEGACY_HEADER}, "language": "en", "session_count": "1",
                             "last_active": "2025-11-20 10:11:12", "created_at": "2024-02-01 08:00:00",
                             "invalid_identifier": "f", "tags": "{}", **r})


def batch(message_id: str, users: range, in_cohort: bool, computed_time: int) -> dict:
    """A webhook body of users `user-{i:05d}` (the import's External User IDs) with their properties."""
    return cohort_batch([{"user_id": f"user-{i:05d}", "user_properties": {"plan": "pro"}} for i in users],
                        message_id=message_id, in_cohort=in_cohort, computed_time=computed_time,
                        cohort_name="Churn risk - 14 days inactive")


@pytest.fixture
def env(postgresql_url, redis_url):
    truncate(postgresql_url)
    return {"DATABASE_URL": libpq_url(postgresql_url), "REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY,
            "AMPLITUDE_BASE_URL": "http://127.0.0.1:9", "SWEEP_INTERVAL_SECONDS": "0.3", "LOG_LEVEL": "INFO"}


def test_cohort_report_equals_the_truth(env, tmp_path):
    app = bridge_cli(env, "apps", "create", "--name", "Inbound", "--amplitude-api-key", "amp-key")
    api = {"Authorization": f"Bearer {app['api_key']}"}
    hook = {"Authorization": f"Bearer {app['cohort_token']}"}
    base = f"/v1/apps/{app['app_id']}"
    csv_path = tmp_path / "players.csv"
    write_legacy_csv(csv_path, channel_records())
    summary = bridge_cli(env, "subscriptions", "import", "--app", app["app_id"], str(csv_path), "--quiet")
    assert (summary["added"], summary["rejected"]) == (sum(i % 4 for i in range(USERS)) + 25, 0)

    web, url = start_web(env, tmp_path / "web.log")
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        # A user with no record yet shows up in the event stream with a new push subscription.
        event = event_item("e2e-1", "message.push.received", "aaaaaaaa-0000-4000-8000-000000000001", "user-00032",
                           device_type="AndroidPush")
        assert httpx.post(f"{url}{base}/events", json=event, headers=api).status_code == 202

        first, second = batch("m::enter::0", range(0, 150), True, 1763856000), batch("m::enter::1", range(150, 300), True, 1763856000)
        first["users"] += [{"user_id": None}, {"amplitude_id": 551234}, {"user_id": "undefined"}]  # set aside
        exits = batch("m2::exit::0", range(0, 30), False, 1763942400)
        stale = batch("m0::enter::0", range(0, 10), True, 1763769600)  # computed a day before the exit
        for body in (first, second, second, exits, stale):  # `second` again: Amplitude retrying
            answer = httpx.post(f"{url}{base}/amplitude/cohorts", json=body, headers=hook, timeout=10)
            assert answer.status_code == 200, answer.text
        assert httpx.post(f"{url}{base}/amplitude/cohorts", json=first, headers=api).status_code == 401

        def applied():
            syncs = httpx.get(f"{url}{base}/cohorts/7b2k9xq/syncs", headers=api)
            return syncs.status_code == 200 and len(syncs.json()["items"]) == 4 and all(
                s["processed_at"] for s in syncs.json()["items"])

        wait_until(applied, 60, "the worker to apply the four batches")
        report = httpx.get(f"{url}{base}/cohorts/7b2k9xq", headers=api).json()
        unmatched = httpx.get(f"{url}{base}/cohorts/7b2k9xq/unmatched?limit=1000", headers=api).json()["items"]
        audience_csv = httpx.get(f"{url}{base}/cohorts/7b2k9xq/devices?format=csv&subscribed=true", headers=api).text
    finally:
        web.stop()
        worker.stop()

    members = [i for i in range(30, 300)]  # 0–29 left (the stale batch does not re-add 0–9)
    owned = {i: i % 4 + (1 if i == 32 else 0) for i in members}  # user 32 gained a push record from the stream
    subscribed = {i: {0: 0, 1: 1, 2: 1, 3: 3}[i % 4] for i in members}
    assert report["users"]["in_cohort"] == len(members)
    assert report["users"]["matched"] == sum(1 for i in members if owned[i])
    assert report["users"]["unmatched"] == sum(1 for i in members if not owned[i])
    assert report["users"]["with_multiple_devices"] == sum(1 for i in members if owned[i] > 1)
    assert report["devices"]["total"] == sum(owned.values())
    assert report["devices"]["subscribed"] == report["segment_size"] == sum(subscribed.values()) + 1  # user 32's push proved delivery
    assert report["devices"]["unsubscribed"] == sum(1 for i in members if i % 4 == 2)
    assert report["devices"]["unknown"] == 0  # every imported row gave notification_types; user 32's push proved delivery
    assert report["devices"]["by_channel"]["sms"] == {"total": sum(1 for i in members if i % 4 == 3),
                                                      "subscribed": sum(1 for i in members if i % 4 == 3),
                                                      "unsubscribed": 0, "unknown": 0}
    assert report["users"]["in_cohort"] + sum(e["delta"] for e in report["explanations"]) == report["segment_size"]
    assert (report["unusable_users"], report["unusable_reasons"]) == (3, {"missing_user_id": 2, "placeholder_user_id": 1})
    assert sorted(unmatched) == sorted(f"user-{i:05d}" for i in members if not owned[i])
    assert len(audience_csv.strip().splitlines()) == report["segment_size"] + 1  # header + one line per record
