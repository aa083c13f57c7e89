"""End to end: cohorts applied to the messaging platform as tags, through real processes — gunicorn's web
app, PostgreSQL, RQ workers on Redis, and the local platform server enforcing the platform's limits.

Amplitude syncs two cohorts (entries, exits, a retried batch, an older batch arriving late); some users
are unknown to the platform; the platform answers a storm of 429s and some 503s; a worker is SIGKILLed in
the middle of the sync. The platform's tags must end equal to the truth computed here from the batches,
with no user ever sent two requests less than a second apart.
"""
from __future__ import annotations

import signal

import httpx
import pytest

from bridge.platforms.server import PlatformServer
from support.databases import libpq_url, truncate
from support.factories import T0, cohort_batch
from support.platform import API_KEY, APP_ID
from support.processes import SECRET_KEY, bridge_cli, start_web, start_worker, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KNOWN = [f"user-{n:04d}" for n in range(600)]
GHOSTS = [f"ghost-{n:02d}" for n in range(20)]  # in the cohort, unknown to the platform


@pytest.fixture
def platform():
    with PlatformServer(api_keys={API_KEY}, enforce_limits=True) as server:
        server.add_users(APP_ID, KNOWN)
        yield server


@pytest.fixture
def env(postgresql_url, redis_url, sink, platform):
    truncate(postgresql_url)
    return {
        "DATABASE_URL": libpq_url(postgresql_url), "REDIS_URL": redis_url, "AMPLITUDE_BASE_URL": sink.url,
        "PLATFORM_BASE_URL": platform.url, "SECRET_KEY": SECRET_KEY, "SWEEP_INTERVAL_SECONDS": "0.3",
        "PLATFORM_TIMEOUT_SECONDS": "2", "PLATFORM_BACKOFF_BASE_SECONDS": "0.2", "PLATFORM_BACKOFF_CAP_SECONDS": "1",
        "PLATFORM_DRAIN_BUDGET_SECONDS": "2", "COHORT_RESCHEDULE_SECONDS": "2", "LOG_LEVEL": "INFO",
    }


def test_cohort_tags_reach_the_platform_exactly_as_the_cohorts_say(env, platform, tmp_path):
    app = bridge_cli(env, "apps", "create", "--name", "E2E", "--amplitude-api-key", "amp-e2e-key")
    bridge_cli(env, "apps", "update", app["app_id"], "--platform", "onesignal", "--platform-app-id", APP_ID,
               "--platform-api-key", API_KEY, "--platform-rate", "400")
    auth, hook = {"Authorization": f"Bearer {app['api_key']}"}, {"Authorization": f"Bearer {app['cohort_token']}"}
    base = f"/v1/apps/{app['app_id']}"
    churn, vip = KNOWN[:400] + GHOSTS, KNOWN[300:]
    batches = [
        cohort_batch(churn, cohort_id="churn", computed_time=T0, message_id="churn-1"),
        cohort_batch(vip, cohort_id="vip", computed_time=T0, message_id="vip-1"),
        cohort_batch(KNOWN[:100], cohort_id="churn", in_cohort=False, computed_time=T0 + 600, message_id="churn-2"),
        cohort_batch(KNOWN[:100], cohort_id="churn", in_cohort=False, computed_time=T0 + 600, message_id="churn-2"),
        cohort_batch(KNOWN[50:150], cohort_id="churn", computed_time=T0 + 300, message_id="churn-late"),  # older
        cohort_batch(KNOWN[550:], cohort_id="vip", in_cohort=False, computed_time=T0 + 600, message_id="vip-2"),
    ]
    # The truth, from the batches alone: per cohort, the newest computed_time decides each user's state.
    newest: dict[tuple[str, str], tuple[int, bool]] = {}
    for body in batches:
        for entry in body["users"]:
            key, when = (body["cohort_id"], entry["user_id"]), int(body["computed_time"])
            if key not in newest or newest[key][0] < when:
                newest[key] = (when, body["in_cohort"])
    truth: dict[str, dict[str, str]] = {}
    for (cohort_id, user), (_, inside) in newest.items():
        if inside and user in KNOWN:
            truth.setdefault(user, {})[f"amplitude_cohort_{cohort_id}"] = "1"

    platform.add_faults([{"status": 429, "retry_after": "1", "times": 40}, {"status": 503, "times": 30},
                         {"reset": True, "apply": True, "times": 5}])
    web, url = start_web(env, tmp_path / "web.log")
    workers = [start_worker(env, tmp_path / "worker-1.log")]
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for body in batches[:2]:
                assert client.post(f"{base}/amplitude/cohorts", json=body, headers=hook).status_code == 200
            for cohort_id in ("churn", "vip"):
                answer = client.put(f"{base}/cohorts/{cohort_id}/platform-sync", json={"enabled": True}, headers=auth)
                assert answer.status_code == 200, answer.text
            wait_until(lambda: len(platform.requests()) > 150, 60, "the first tags to reach the platform")
            workers[0].signal(signal.SIGKILL)  # in the middle of the sync
            for body in batches[2:]:
                assert client.post(f"{base}/amplitude/cohorts", json=body, headers=hook).status_code == 200
            workers.append(start_worker(env, tmp_path / "worker-2.log"))
            wait_until(lambda: platform.all_tags(APP_ID) == truth and _settled(client, base, auth), 120,
                       "the platform's tags to equal the cohorts")
            report = client.get(f"{base}/cohorts/churn", headers=auth).json()
    finally:
        for process in [web, *workers]:
            process.stop()

    stats = platform.stats()
    assert stats["user_spacing_violations"] == 0 and stats["min_user_spacing"] >= 1.0
    assert stats["over_app_rate"] == 0
    assert stats["requests"].get(429, 0) == 40  # the storm, and no 429 of the platform's own limits
    sync = report["platform_sync"]
    assert sync["not_on_platform"] == len(GHOSTS) and sync["pending"] == 0 and sync["failed"]["total"] == 0
    assert sync["tagged"] == sum(1 for tags in truth.values() if "amplitude_cohort_churn" in tags)
    assert any(f"the platform does not know {len(GHOSTS)} users" in line for line in report["context"])


def _settled(client: httpx.Client, base: str, auth: dict) -> bool:
    return all(client.get(f"{base}/cohorts/{cohort_id}", headers=auth).json()["platform_sync"]["pending"] == 0
               for cohort_id in ("churn", "vip"))
