"""Cohorts: webhook acknowledgement time for 10,000-user batches (gunicorn, Redis, one worker applying
them), and the report for a 1,000,000-user cohort over 3,000,000 channel records next to one
hand-written SQL aggregate on the same tables; then, with the cohort applied to the platform (a tag per
user), the job that recomputes the report's snapshot, and the dashboard's pages of that cohort (which
shows the snapshot) and its app."""
from __future__ import annotations

import re
import sys
import time

import httpx
import orjson
import psycopg

from bench.common import BENCH_SECRET_KEY, REDIS_URL, Proc, analyze, flush_redis, median, new_app, scratch_database, start_web
from bridge.cohorts import report, snapshots
from bridge.cohorts.models import Cohort
from bridge.runtime import Runtime
from bridge.settings import Settings


def add_members(conn, app_id: str, users: int) -> None:
    """Cohort 'big' of app `app_id`, with `users` members `user-00000000`, ... (one statement each)."""
    conn.execute("INSERT INTO cohorts (app_id, cohort_id, name, created_at, updated_at) "
                 "VALUES (%s, 'big', 'Churn risk - 14 days inactive', now(), now())", (app_id,))
    conn.execute("""
        INSERT INTO cohort_members (app_id, cohort_id, user_id, in_cohort, computed_time, updated_at)
        SELECT %s, 'big', 'user-' || lpad(g::text, 8, '0'), true, 1763856000, now()
        FROM generate_series(0, %s - 1) g""", (app_id, users))


def fill(database_url: str, app_id: str, users: int, records: int) -> None:
    """`users` cohort members; `records` channel records spread over 1.1 × users External User IDs
    (so some members have none and some records belong to non-members), 10% of them without an
    External User ID, one in seven unsubscribed, channels push / email / sms in turn."""
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        add_members(conn, app_id, users)
        conn.execute("""
            INSERT INTO subscriptions (app_id, subscription_id, channel, type, identifier, external_id,
                                       notification_types, invalid_identifier, subscribed, created_at, updated_at)
            SELECT %(app)s, md5(g::text)::uuid::text,
                   (ARRAY['push','email','sms'])[g %% 3 + 1], (ARRAY['AndroidPush','Email','SMS'])[g %% 3 + 1],
                   'id-' || g,
                   CASE WHEN g %% 10 = 0 THEN NULL ELSE 'user-' || lpad(((g::bigint * 7919) %% %(span)s)::text, 8, '0') END,
                   CASE WHEN g %% 7 = 0 THEN -2 ELSE 1 END, false, g %% 7 <> 0, now(), now()
            FROM generate_series(1, %(records)s) g""", {"app": app_id, "span": int(users * 1.1), "records": records})
    analyze(database_url)


def add_tags(database_url: str, app_id: str) -> None:
    """Cohort 'big' applied to the platform: a tag per member, 90% synced, 10% pending, about 1% of users
    the platform does not know and a few failed."""
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("INSERT INTO cohort_platform_syncs (app_id, cohort_id, enabled, tag_key, enabled_at, updated_at) "
                     "VALUES (%s, 'big', true, 'amplitude_cohort_big', now(), now())", (app_id,))
        conn.execute("""
            INSERT INTO platform_tags (app_id, external_id, tag_key, cohort_id, value, computed_time, state, reason,
                                       last_error, attempts, synced_value, synced_at, updated_at)
            SELECT %s, user_id, 'amplitude_cohort_big', 'big', '1', 1763856000,
                   CASE WHEN g %% 10 = 0 THEN 'pending' WHEN g %% 97 = 0 THEN 'not_on_platform'
                        WHEN g %% 501 = 0 THEN 'failed' ELSE 'synced' END,
                   CASE WHEN g %% 10 <> 0 AND g %% 97 <> 0 AND g %% 501 = 0 THEN 'rejected' END,
                   CASE WHEN g %% 501 = 0 THEN 'rejected by the platform' END, 0, '1', now(), now()
            FROM (SELECT user_id, row_number() OVER (ORDER BY user_id) AS g FROM cohort_members
                  WHERE app_id = %s AND cohort_id = 'big') AS m""", (app_id, app_id))
    analyze(database_url)


def refresh_time(database_url: str, app_id: str, repeat: int) -> float:
    """Median seconds of the job that recomputes the cohort's report snapshot (it leaves one in place)."""
    runtime = Runtime(Settings.from_env({"DATABASE_URL": database_url, "JOB_RUNNER": "manual"}))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        snapshots.refresh_report(app_id, "big", runtime=runtime)
        times.append(time.perf_counter() - start)
    runtime.close()
    return median(times)


def report_times(database_url: str, app_id: str, repeat: int) -> tuple[float, float]:
    """Median seconds of the bridge's report and of the hand-written aggregate."""
    runtime = Runtime(Settings.from_env({"DATABASE_URL": database_url, "JOB_RUNNER": "manual"}))
    ours, theirs = [], []
    with runtime.session() as session, psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        cohort = session.get(Cohort, (app_id, "big"))
        for _ in range(repeat):
            start = time.perf_counter()
            report.cohort_report(session, cohort)
            ours.append(time.perf_counter() - start)
            session.rollback()
            start = time.perf_counter()
            conn.execute(report.EQUIVALENT_SQL, {"app_id": app_id, "cohort_id": "big"}).fetchone()
            theirs.append(time.perf_counter() - start)
    runtime.close()
    return median(ours), median(theirs)


def dashboard_times(database_url: str, app_id: str, repeat: int) -> tuple[float, float]:
    """Median seconds of the dashboard's cohort page (showing the snapshot `refresh_time` left) and app
    page (the Flask app in process, logged in), each answered 200."""
    from bridge.web import create_app

    token = "bench-admin-token-" + "0" * 32
    client = create_app({"DATABASE_URL": database_url, "JOB_RUNNER": "manual", "ADMIN_TOKEN": token,
                         "SECRET_KEY": BENCH_SECRET_KEY, "LOG_LEVEL": "WARNING"}).test_client()
    client.environ_base["wsgi.url_scheme"] = "https"  # the cookie is Secure
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/dashboard/login").text).group(1)
    assert client.post("/dashboard/login", data={"token": token, "csrf_token": csrf}).status_code == 303
    times: dict[str, list[float]] = {"cohort": [], "app": []}
    for _ in range(repeat):
        for page, path in (("cohort", f"/dashboard/apps/{app_id}/cohorts/big"), ("app", f"/dashboard/apps/{app_id}")):
            start = time.perf_counter()
            response = client.get(path)
            times[page].append(time.perf_counter() - start)
            assert response.status_code == 200, (path, response.status_code)
            assert page == "app" or 'data-state="current"' in response.text, "the cohort page shows no current snapshot"
    return median(times["cohort"]), median(times["app"])


def ack_times(database_url: str, app_id: str, token: str, batches: int) -> dict[str, float]:
    """Post `batches` 10,000-user webhook batches; returns ack p50/p99 (ms) and process peak RSS."""
    flush_redis()
    env = {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "SECRET_KEY": BENCH_SECRET_KEY, "LOG_LEVEL": "WARNING"}
    worker = Proc([sys.executable, "-m", "bridge", "worker"], env)  # booting while gunicorn starts
    web, base = start_web(env)
    url = f"{base}/v1/apps/{app_id}/amplitude/cohorts"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies = []
    with httpx.Client(timeout=30) as http:
        for n in range(batches):
            body = orjson.dumps({
                "cohort_name": "Weekly buyers", "cohort_id": "acks", "in_cohort": n % 4 != 3,
                "computed_time": str(1763856000 + n), "message_id": f"bench::{n}",
                "users": [{"user_id": f"user-{(n * 10_000 + i) % 300_000:08d}",
                           "user_properties": {"plan": "pro", "country": "DE"}} for i in range(10_000)]})
            start = time.perf_counter()
            response = http.post(url, content=body, headers=headers)
            latencies.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise RuntimeError(response.text[:300])
    deadline = time.monotonic() + 300
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        while conn.execute("SELECT count(*) FROM cohort_batches WHERE state = 'received'").fetchone()[0]:
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not apply the batches")
            time.sleep(0.2)
            conn.rollback()
    rss = {"web": web.tree_peak_rss_mb(), "worker": worker.peak_rss_mb()}
    web.stop()
    worker.stop()
    latencies.sort()
    return {"p50": latencies[len(latencies) // 2] * 1000, "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000, **rss}


def run(users: int, records: int, batches: int, repeat: int) -> list[tuple[str, str, str]]:
    with scratch_database("bridge_bench_cohorts") as database_url:
        app_id, tokens = new_app(database_url)
        acks = ack_times(database_url, app_id, tokens.cohort_token, batches)
        fill(database_url, app_id, users, records)
        ours, theirs = report_times(database_url, app_id, repeat)
        add_tags(database_url, app_id)
        refresh = refresh_time(database_url, app_id, repeat)
        cohort_page, app_page = dashboard_times(database_url, app_id, repeat)
    return [
        ("cohort webhook ack, 10,000-user batch: p50 / p99 (ms)", f"{acks['p50']:.0f} / {acks['p99']:.0f}",
         f"{batches} batches over HTTP, worker applying them meanwhile"),
        ("cohort report (s)", f"{ours:.2f}", f"{users:,} users, {records:,} channel records"),
        ("hand-written SQL aggregate (s)", f"{theirs:.2f}", "report.EQUIVALENT_SQL, same tables"),
        ("report / aggregate", f"{ours / theirs:.2f}x", "target ≤ 2x"),
        ("cohort report snapshot: refresh job (s)", f"{refresh:.2f}",
         f"the same cohort, with {users:,} platform tags; the job behind the dashboard's cohort page"),
        ("dashboard: cohort page / app page (s)", f"{cohort_page:.2f} / {app_page:.2f}",
         "the cohort page shows the snapshot; the app page counts the cohort among the app's cohorts"),
        ("web / worker peak RSS, cohorts (MB)", f"{acks['web']:.0f} / {acks['worker']:.0f}", ""),
    ]
