"""End to end, in a real browser: the operator dashboard of a real `bridge web` (gunicorn, PostgreSQL,
Redis) with a `bridge worker`, opened in headless Chromium.

An app's events are delivered, two of them dead-lettered by Amplitude; a cohort arrives through the
webhook. The operator logs in, opens the app and the cohort, recomputes the cohort's report with its
button and waits for the worker to compute it: every number the pages show equals what the JSON API
answers. The replay button brings the dead letters back, and they are delivered. In embedded mode (SQLite,
no Redis, `bridge web` alone) the job thread computes the cohort page's report. Screenshots
of both pages are kept in test-artifacts/ (support.browser.ARTIFACTS).
"""
from __future__ import annotations

import os
import re
import subprocess
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from redis import Redis

from bridge.platforms.server import PlatformServer
from support.browser import artifact, chromium
from support.databases import libpq_url, truncate
from support.factories import channel_record, cohort_batch, event_items
from support.platform import API_KEY, APP_ID
from support.processes import BRIDGE, SECRET_KEY, bridge_cli, start_web, start_worker, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ADMIN_TOKEN = "e2e-operator-token-0123456789abcdef0123456789"
NAME = "Shop <b>&</b> co"  # shown as text, never as markup


@pytest.fixture
def browser():
    """Headless Chromium, opened first: without one the test skips (fails in CI) before starting anything."""
    with chromium() as opened:
        yield opened


@pytest.fixture
def platform():
    with PlatformServer(api_keys={API_KEY}) as server:
        server.add_users(APP_ID, [f"user-{n:06d}" for n in range(5)])  # users 5 and 6 it does not know
        yield server


@pytest.fixture
def env(postgresql_url, redis_url, sink, platform):
    truncate(postgresql_url)
    return {"DATABASE_URL": libpq_url(postgresql_url), "REDIS_URL": redis_url, "AMPLITUDE_BASE_URL": sink.url,
            "PLATFORM_BASE_URL": platform.url, "SECRET_KEY": SECRET_KEY, "ADMIN_TOKEN": ADMIN_TOKEN, "SWEEP_INTERVAL_SECONDS": "0.3",
            "DELIVERY_LINGER_SECONDS": "0", "LOG_LEVEL": "INFO", "WEB_CONCURRENCY": "1"}


def shown(page, scope: str = "body") -> dict[str, int]:
    """The numbers a page shows in its `data-stat` cells, by name (thousands separators read away)."""
    cells = page.locator(f"{scope} [data-stat]")
    numbers = {}
    for i in range(cells.count()):
        text = cells.nth(i).inner_text().strip().replace(",", "").replace("−", "-")
        if re.fullmatch(r"[+-]?\d+", text):
            numbers[cells.nth(i).get_attribute("data-stat")] = int(text)
    return numbers


def test_the_operator_sees_the_apis_numbers_and_replays_dead_letters(browser, env, sink, tmp_path):
    app = bridge_cli(env, "apps", "create", "--name", NAME, "--amplitude-api-key", "amp-e2e-key")
    auth, hook = {"Authorization": f"Bearer {app['api_key']}"}, {"Authorization": f"Bearer {app['cohort_token']}"}
    base = f"/v1/apps/{app['app_id']}"
    bridge_cli(env, "apps", "update", app["app_id"], "--platform", "onesignal", "--platform-app-id", APP_ID,
               "--platform-api-key", API_KEY)
    sink.add_faults([{"status": 400, "body": {"code": 400, "error": "Invalid field values on some events",
                                             "events_with_invalid_fields": {"time": [1, 4]}}}])
    web, url = start_web(env, tmp_path / "web.log")
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        api = httpx.Client(base_url=url, timeout=10)
        assert api.post(f"{base}/events", json=event_items(12), headers=auth).status_code == 202
        records = [channel_record("sub-1", external_id="user-000000", notification_types=1),
                   channel_record("sub-2", external_id="user-000000", notification_types=1, type="Email"),
                   channel_record("sub-3", external_id="user-000001", notification_types=1),
                   channel_record("sub-4", external_id="user-000002", notification_types=-2)]
        assert api.post(f"{base}/subscriptions", json=records, headers=auth).status_code == 200
        assert api.put(f"{base}/cohorts/churn/platform-sync", json={"enabled": True}, headers=auth).status_code == 200
        webhook = cohort_batch(7, cohort_id="churn", cohort_name="Churn <script>alert(1)</script>")
        assert api.post(f"{base}/amplitude/cohorts", json=webhook, headers=hook).status_code == 200

        def stats():
            return api.get(f"{base}/deliveries/stats", headers=auth).json()

        wait_until(lambda: stats()["pending"] == 0 and stats()["dead"]["total"] == 2, 30, "delivery to settle")

        def synced():
            body = api.get(f"{base}/cohorts/churn", headers=auth).json()
            return body["users"]["in_cohort"] == 7 and body["platform_sync"]["pending"] == 0

        wait_until(synced, 30, "the cohort batch to be applied and its tags sent")
        # The sweep computes the cohort's first snapshot; then no refresh is waiting or running (the button's
        # press below is then the one that queues).
        redis = Redis.from_url(env["REDIS_URL"])
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as db:
            wait_until(lambda: db.execute("SELECT count(*) FROM cohort_report_snapshots").fetchone()[0] == 1
                       and not redis.exists(f"bridge:once:cohort-report:{app['app_id']}:churn"), 30,
                       "the sweep's refresh of the cohort's report")
        redis.close()
        delivery, report = stats(), api.get(f"{base}/cohorts/churn", headers=auth).json()

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("response", lambda response: problems.append(f"{response.status} {response.url}")
                if response.status >= 400 else None)

        page.goto(f"{url}/dashboard")
        assert page.url == f"{url}/dashboard/login"
        page.fill("#token", ADMIN_TOKEN)
        page.click("form.login button")
        page.wait_for_url(f"{url}/dashboard")

        page.get_by_role("link", name=NAME).click()
        page.wait_for_url(f"{url}/dashboard/apps/{app['app_id']}")
        assert page.locator("h1").inner_text().startswith(NAME)
        numbers = shown(page)
        assert numbers["pending"] == delivery["pending"] == 0
        assert numbers["delivered"] == delivery["delivered"] == 10
        assert numbers["delivered_last_hour"] == sum(delivery["delivered_last_hour"]["per_minute"]) == 10
        assert numbers["dead.total"] == delivery["dead"]["total"] == 2
        assert numbers["dead.reasons.amplitude_400"] == delivery["dead"]["reasons"]["amplitude_400"]
        assert delivery["last_error"]["message"] in page.locator('[data-stat="last_error"]').inner_text()
        assert page.evaluate("Chart.getChart(document.getElementById('minutes-chart')).data.datasets[0].data"
                             ".reduce((a, b) => a + b, 0)") == 10
        page.screenshot(path=artifact("dashboard-app.png"), full_page=True)

        page.get_by_role("link", name="churn").click()
        page.wait_for_url(f"{url}/dashboard/apps/{app['app_id']}/cohorts/churn")
        pressed = datetime.now(UTC)
        page.get_by_role("button", name="Recompute now").click()
        page.wait_for_url(f"{url}/dashboard/apps/{app['app_id']}/cohorts/churn")
        assert page.locator(".flash").inner_text().startswith("A recompute of this cohort's report is queued")

        def recomputed():
            page.reload()
            computed_at = datetime.fromisoformat(page.locator("#computed-at").get_attribute("datetime"))
            return computed_at >= pressed and page.locator("#report-state").get_attribute("data-state") == "current"

        wait_until(recomputed, 30, "the worker to recompute the report", interval=0.2)
        assert "As of" in page.locator("#report-state").inner_text()
        numbers = shown(page)
        assert numbers["users.in_cohort"] == report["users"]["in_cohort"] == 7
        assert numbers["segment_size"] == report["segment_size"] == 3
        assert {cause: numbers[f"explanations.{cause}"] for cause in (e["cause"] for e in report["explanations"])} \
            == {e["cause"]: e["delta"] for e in report["explanations"]}
        for key, value in report["users"].items():
            assert numbers[f"users.{key}"] == value, key
        for channel, counts in report["devices"]["by_channel"].items():
            for key, value in counts.items():
                assert numbers[f"devices.by_channel.{channel}.{key}"] == value, (channel, key)
        assert page.locator('[data-stat="arithmetic"]').inner_text() == report["arithmetic"]
        sync = report["platform_sync"]
        assert (sync["tagged"], sync["not_on_platform"], sync["failed"]["total"]) == (5, 2, 0)
        for key in ("tagged", "untagged", "pending", "not_on_platform"):
            assert numbers[f"platform_sync.{key}"] == sync[key], key
        assert numbers["platform_sync.failed.total"] == sync["failed"]["total"]
        assert page.locator('[data-stat="platform_sync.enabled"]').inner_text() == "on"
        assert page.locator("#sync-history tbody tr").count() == len(report["recent_syncs"]) == 1
        bars = page.evaluate("Chart.getChart(document.getElementById('waterfall-chart')).data.datasets[0].data")
        assert bars[0] == [0, 7] and bars[-1] == [0, 3] and len(bars) == len(report["explanations"]) + 2
        assert "Churn <script>alert(1)</script>" in page.locator("h1").inner_text()  # text, not a script
        page.screenshot(path=artifact("dashboard-cohort.png"), full_page=True)

        page.get_by_role("link", name=NAME).click()  # the crumb back to the app
        page.wait_for_url(f"{url}/dashboard/apps/{app['app_id']}")
        page.locator("#dead-letters form", has=page.locator('input[value="amplitude_400"]')).locator("button").click()
        page.wait_for_url(f"{url}/dashboard/apps/{app['app_id']}")
        assert page.locator(".flash").inner_text() == "2 event(s) re-queued for delivery."
        wait_until(lambda: stats()["delivered"] == 12, 30, "the replayed events to be delivered")
        page.reload()
        assert shown(page)["dead.total"] == stats()["dead"]["total"] == 0
        assert shown(page)["delivered"] == 12
        assert problems == []  # no script error, nothing the Content-Security-Policy refused
    finally:
        worker.stop()
        web.stop()


def test_in_embedded_mode_the_job_thread_computes_the_cohort_pages_report(tmp_path):
    """SQLite, no Redis, `bridge web` on its own: the sweep and the refresh run on its job thread."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}", "REDIS_URL": "", "ADMIN_TOKEN": ADMIN_TOKEN,
           "DASHBOARD_COOKIE_SECURE": "false", "SWEEP_INTERVAL_SECONDS": "0.3", "LOG_LEVEL": "INFO"}
    upgraded = subprocess.run([BRIDGE, "db", "upgrade"], env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=60)
    assert upgraded.returncode == 0, upgraded.stderr
    app = bridge_cli(env, "apps", "create", "--name", "Laptop", "--amplitude-api-key", "amp-e2e-key")
    web, url = start_web(env, tmp_path / "web.log")
    try:
        api = httpx.Client(base_url=url, timeout=10)
        base = f"/v1/apps/{app['app_id']}"
        webhook = cohort_batch(4, cohort_id="churn")
        assert api.post(f"{base}/amplitude/cohorts", json=webhook,
                        headers={"Authorization": f"Bearer {app['cohort_token']}"}).status_code == 200
        operator = httpx.Client(base_url=url, timeout=10)
        login = operator.get("/dashboard/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)
        assert operator.post("/dashboard/login", data={"token": ADMIN_TOKEN, "csrf_token": csrf}).status_code == 303

        def current_page():
            page = operator.get(f"/dashboard/apps/{app['app_id']}/cohorts/churn").text
            return page if 'data-state="current"' in page else None

        page = wait_until(current_page, 30, "the job thread to compute the cohort's report", interval=0.2)
        report = api.get(f"{base}/cohorts/churn", headers={"Authorization": f"Bearer {app['api_key']}"}).json()
        assert re.search(r'data-stat="users.in_cohort">(\d+)<', page).group(1) == str(report["users"]["in_cohort"]) == "4"
        assert "cohort report of" in web.output() and "computed in" in web.output()
    finally:
        web.stop()
