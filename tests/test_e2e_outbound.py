"""End to end: real gunicorn web app, PostgreSQL, RQ workers on Redis, an Amplitude-compatible server.

The platform posts realistic events (with duplicates, events without External User IDs and invalid
items); Amplitude has a bad stretch (503s, a 413, throttling); a worker is SIGKILLed while Amplitude
is still answering a batch it has already ingested. Every trackable event must arrive exactly once
by insert_id, with the mapped name and properties, and everything else must be accounted for.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess

import httpx
import psycopg
import pytest

from bridge import mapping
from support import FIXTURES
from support.databases import libpq_url, truncate
from support.factories import event_items
from support.processes import BRIDGE, SECRET_KEY, bridge_cli, start_web, start_worker, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

AMPLITUDE_KEY = "amp-e2e-key"  # the apps' key: the sink's events are read under it, so a wrong key shows


@pytest.fixture
def env(postgresql_url, redis_url, sink):
    truncate(postgresql_url)
    return {
        "DATABASE_URL": libpq_url(postgresql_url), "REDIS_URL": redis_url, "AMPLITUDE_BASE_URL": sink.url,
        "SECRET_KEY": SECRET_KEY,
        "DELIVERY_LEASE_SECONDS": "2", "SWEEP_INTERVAL_SECONDS": "0.3", "DELIVERY_BACKOFF_BASE_SECONDS": "0.2",
        "DELIVERY_BACKOFF_CAP_SECONDS": "1", "DELIVERY_THROTTLE_PAUSE_SECONDS": "1", "LOG_LEVEL": "INFO",
    }


def pending_and_held(database_url: str) -> tuple[int, int]:
    """Pending events, and how many of them a worker holds right now (row-locked by its open claim)."""
    with psycopg.connect(libpq_url(database_url)) as conn:
        pending = conn.execute("SELECT count(*) FROM outbox_events WHERE state = 'pending'").fetchone()[0]
        free = conn.execute("SELECT count(*) FROM (SELECT id FROM outbox_events WHERE state = 'pending' "
                            "FOR UPDATE SKIP LOCKED) AS f").fetchone()[0]
        conn.rollback()
        return pending, pending - free


def generated(n: int) -> list[dict]:
    """`n` events of every kind the default profile sends, from 300 users on 300 Android devices."""
    return event_items(n, prefix="gen", users=300, subscriptions=300, kinds=sorted(mapping.DEFAULT_VOCABULARY.sent),
                       device_type="AndroidPush", data={"target_id": "cta"})


def test_every_trackable_event_reaches_amplitude_exactly_once(env, sink, tmp_path, postgresql_url):
    app = bridge_cli(env, "apps", "create", "--name", "E2E", "--amplitude-api-key", AMPLITUDE_KEY)
    auth = {"Authorization": f"Bearer {app['api_key']}"}
    fixture = json.loads((FIXTURES / "onesignal-events.json").read_text())
    invalid = [{"event": {"id": "bad-1", "kind": "message.push.sent"}, "message": {"name": "x"}}]
    batches = [fixture + invalid] + [generated(3000)[i:i + 1000] for i in range(0, 3000, 1000)] + [fixture]

    # Amplitude ingests the first batch but answers slowly (the worker dies meanwhile), then has a bad stretch.
    sink.add_faults([{"status": 503, "ingest": True, "delay": 4}, {"status": 503, "times": 3}, {"status": 413},
                     {"status": 429, "body": {"code": 429, "error": "Too many requests for some devices and users",
                                              "eps_threshold": 30, "throttled_users": {"user-7": 31}}}])
    web, url = start_web(env, tmp_path / "web.log")
    workers = [start_worker(env, tmp_path / "worker-1.log")]
    try:
        answers = [httpx.post(f"{url}/v1/apps/{app['app_id']}/events", json=b, headers=auth, timeout=30) for b in batches]
        assert [a.status_code for a in answers] == [202] * len(batches)
        totals = {k: sum(a.json()[k] for a in answers) for k in ("accepted", "skipped", "duplicates", "ignored")}
        assert totals["duplicates"] == len(fixture) - 2  # the re-post: everything but the 2 ignored kinds
        assert answers[0].json()["rejected"] == [{"index": len(fixture), "errors": {
            "event.subscription_id": "Missing data for required field.", "event.timestamp":
            "One of event.timestamp (epoch seconds) or event.datetime (ISO 8601) is required."}}]

        wait_until(lambda: pending_and_held(postgresql_url)[1] > 0, 30, "a worker to hold a batch")
        workers[0].signal(signal.SIGKILL)
        workers.append(start_worker(env, tmp_path / "worker-2.log"))
        workers.append(start_worker(env, tmp_path / "worker-3.log"))
        wait_until(lambda: pending_and_held(postgresql_url) == (0, 0), 90, "the outbox to drain")

        stats = httpx.get(f"{url}/v1/apps/{app['app_id']}/deliveries/stats", headers=auth).json()
    finally:
        for process in [web, *workers]:
            process.stop()

    trackable = {item["event"]["id"]: item for item in fixture + generated(3000)
                 if mapping.DEFAULT_VOCABULARY.sends(item["event"]["kind"])}
    unresolved = {i for i, item in trackable.items() if not _resolvable(item, fixture)}
    received = {e["insert_id"]: e for e in sink.events(AMPLITUDE_KEY)}
    assert set(received) == set(trackable) - unresolved
    assert sink.stats()["duplicates"] >= 1  # the batch ingested before the SIGKILL was sent again...
    assert sink.stats()["unique_insert_ids"] == len(received)  # ...and Amplitude counted it once
    for insert_id, event in received.items():
        kind = trackable[insert_id]["event"]["kind"]
        assert event["event_type"] == mapping.DEFAULT_VOCABULARY.sent[kind]
        assert event["event_properties"]["message_type"] == mapping.MESSAGE_TYPES[kind.split(".")[1]]
    assert stats["delivered"] == len(received) and stats["pending"] == 0 and stats["dead"]["total"] == 0
    assert stats["skipped"] == {"total": len(unresolved), "reasons": {"unresolved_user": len(unresolved)}}


def _resolvable(item: dict, fixture: list[dict]) -> bool:
    """Whether the bridge can know the event's user: on the event, or on another event of its subscription."""
    sub = item["event"]["subscription_id"]
    return bool(mapping.non_placeholder_id(item["event"].get("external_id"))) or any(
        mapping.non_placeholder_id(other["event"].get("external_id")) and other["event"]["subscription_id"] == sub
        for other in fixture)


def test_embedded_mode_bridge_web_alone_delivers(tmp_path, sink):
    """The laptop default: SQLite, no Redis, `bridge web` on its own (one process with the delivery thread)."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}", "REDIS_URL": "", "AMPLITUDE_BASE_URL": sink.url,
           "LOG_LEVEL": "INFO"}
    upgraded = subprocess.run([BRIDGE, "db", "upgrade"], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert upgraded.returncode == 0, upgraded.stderr
    app = bridge_cli(env, "apps", "create", "--name", "Laptop", "--amplitude-api-key", AMPLITUDE_KEY)
    web, url = start_web(env, tmp_path / "web.log")
    try:
        items = generated(30)
        answer = httpx.post(f"{url}/v1/apps/{app['app_id']}/events", json=items,
                            headers={"Authorization": f"Bearer {app['api_key']}"}, timeout=10)
        assert answer.status_code == 202 and answer.json()["accepted"] == 30
        # A token sent as the HTTP Basic user by mistake is refused, and never written to the access log.
        basic = httpx.get(f"{url}/v1/apps/{app['app_id']}/deliveries/stats", auth=(app["api_key"], ""), timeout=10)
        assert basic.status_code == 401
        wait_until(lambda: len(sink.events()) == 30, 30, "the embedded delivery thread to send every event")
        assert sorted(e["insert_id"] for e in sink.events(AMPLITUDE_KEY)) == sorted(i["event"]["id"] for i in items)
        assert "embedded mode: one web process" in web.output()
        assert "/deliveries/stats" in web.output() and app["api_key"] not in web.output()
    finally:
        web.stop()
