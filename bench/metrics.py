"""Metrics: how long a scrape of /metrics takes through `bridge web` when the database is big, since the
scrape reads the outbox, the dead letters, the cohort batches and the platform tags at that moment."""
from __future__ import annotations

import time

import httpx
import psycopg

from bench.common import BENCH_METRICS_TOKEN, BENCH_SECRET_KEY, analyze, median, new_app, scratch_database, start_bridge_web

APPS = 5

# Rows made by the database itself (generate_series), spread over the apps; `created_at` a millisecond apart.
_FILL = """
INSERT INTO outbox_events (app_id, source_event_id, kind, state, reason, insert_id, user_id, device_id,
                           amplitude_event, attempts, next_attempt_at, created_at)
SELECT (%(apps)s::text[])[1 + i %% %(n)s], 'e' || i, 'message.push.sent', 'pending', NULL, 'i' || i, 'u' || (i %% 5000),
       'd' || i, '{"event_type":"Push Sent","user_id":"u1","insert_id":"x","time":1}', 0,
       now() - i * interval '1 ms', now() - i * interval '1 ms'
FROM generate_series(1, %(pending)s) AS i
UNION ALL
SELECT (%(apps)s::text[])[1 + i %% %(n)s], 'x' || i, 'message.push.sent', 'dead',
       (ARRAY['amplitude_400', 'retry_window_exceeded'])[1 + i %% 2], 'xi' || i, 'u1', 'd1', NULL, 1, now(), now()
FROM generate_series(1, %(dead)s) AS i
"""
_FILL_TAGS = """
INSERT INTO platform_tags (app_id, external_id, tag_key, cohort_id, value, computed_time, state, updated_at)
SELECT (%(apps)s::text[])[1 + i %% %(n)s], 'u' || i, 'amplitude_cohort_c1', 'c1', '1', 1700000000,
       (ARRAY['pending', 'synced'])[1 + i %% 2], now()
FROM generate_series(1, %(tags)s) AS i
"""


def measure(pending: int, tags: int, repeat: int) -> float:
    """Median milliseconds of a scrape of /metrics (`bridge web`, PostgreSQL) over a database holding
    `pending` pending events, `pending` / 100 dead letters and `tags` platform tags of APPS apps."""
    with scratch_database("bridge_bench_metrics") as database_url:
        apps = [new_app(database_url)[0] for _ in range(APPS)]
        with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
            sizes = {"apps": apps, "n": APPS, "pending": pending, "dead": pending // 100, "tags": tags}
            conn.execute(_FILL, sizes)
            conn.execute(_FILL_TAGS, sizes)
        analyze(database_url)
        web, url = start_bridge_web({"DATABASE_URL": database_url, "JOB_RUNNER": "manual", "METRICS_TOKEN": BENCH_METRICS_TOKEN,
                                     "SECRET_KEY": BENCH_SECRET_KEY, "LOG_LEVEL": "WARNING"})
        try:
            headers = {"Authorization": f"Bearer {BENCH_METRICS_TOKEN}"}
            times = []
            with httpx.Client(timeout=30) as client:
                for _ in range(2 + 3 * repeat):  # the first two warm the process's connections and caches
                    started = time.perf_counter()
                    answer = client.get(f"{url}/metrics", headers=headers)
                    times.append((time.perf_counter() - started) * 1000)
                    if answer.status_code != 200 or "bridge_metrics_database_up 1.0" not in answer.text:
                        raise RuntimeError(f"the scrape failed: {answer.status_code} {answer.text[-500:]}")
        finally:
            web.stop()
        return median(times[2:])


def run(pending: int, tags: int, repeat: int) -> list[tuple[str, str, str]]:
    quiet = measure(1000, 10_000, repeat)
    big = measure(pending, tags, repeat)
    return [
        ("scrape of /metrics, small database (ms)", f"{quiet:.0f}",
         f"1,000 pending events, 10 dead letters, 10,000 platform tags, {APPS} apps"),
        ("scrape of /metrics, big database (ms)", f"{big:.0f}",
         f"{pending:,} pending events, {pending // 100:,} dead letters, {tags:,} platform tags, {APPS} apps"),
    ]
