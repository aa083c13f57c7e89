"""Fairness between apps: one app's backlog (and its cohort sync) must not hold up another app's small
stream. Run the way the Procfile runs the bridge, on PostgreSQL and Redis:

- the release (`bridge db upgrade`), two apps made with `bridge apps create`, `bridge web`
  (WEB_CONCURRENCY=2 processes x 8 threads) and WORKERS `bridge worker` processes, delivering to the
  local Amplitude-compatible sink (`bridge.amplitude.sink`, keeping each insert_id's arrival time);
- app A: a backlog of `backlog` pending events written straight into its outbox by one SQL statement
  before the processes start (what the intake would have stored, minus the wait: the setup is not what
  is measured), and, with `cohort_users`, a cohort sync posted to its webhook as Amplitude sends one:
  batches of COHORT_BATCH users, one after the other, each as soon as the last was answered;
- app B: a trickle of `rate` single events/s for `seconds`, posted through the real intake by the
  open-loop client (bench.trickle_client), once A's delivery is under way.

Figures: the time from each of B's 202s to its event's arrival at the sink (p50 / p95 / p99 / max), A's
delivery rate meanwhile (A's events arrived at the sink over the trickle's span), and how many cohort
batches were applied by the end of the trickle. The server runs from SERVER_TREE.
"""
from __future__ import annotations

import threading
import time

import httpx
import orjson
import psycopg

from bench.common import (BENCH_SECRET_KEY, REDIS_URL, Proc, analyze, flush_redis, median, percentile, run_bridge,
                          scratch_database, server_upgrade, sink_stats, start_bridge, start_bridge_web, start_sink)
from bench.delivery import source_events
from bench.stream import Bridge, open_loop

WORKERS = 2
COHORT_BATCH = 10_000  # users per webhook batch, as Amplitude batches a cohort sync
BACKLOG_PREFIX = "backlog-"  # A's insert_ids; B's are source_events' ids ("bench-…")


def fill_backlog(database_url: str, app_id: str, n: int) -> None:
    """`n` pending Amplitude events of `app_id` in its outbox (insert_ids BACKLOG_PREFIX + number), due now."""
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("""
            INSERT INTO outbox_events (app_id, source_event_id, kind, state, insert_id, user_id, device_id,
                                       subscription_device_type, amplitude_event, attempts, next_attempt_at, created_at)
            SELECT %(app)s, 'backlog-' || lpad(g::text, 9, '0'), 'message.push.sent', 'pending',
                   'backlog-' || lpad(g::text, 9, '0'), 'user-' || lpad((g %% 50000)::text, 6, '0'),
                   'device-' || lpad((g %% 100000)::text, 6, '0'), 'AndroidPush',
                   json_build_object('event_type', 'Push Pending Delivery',
                                     'user_id', 'user-' || lpad((g %% 50000)::text, 6, '0'),
                                     'device_id', 'device-' || lpad((g %% 100000)::text, 6, '0'),
                                     'time', 1763856000000 + g, 'insert_id', 'backlog-' || lpad(g::text, 9, '0'),
                                     'platform', 'Android',
                                     'event_properties', json_build_object(
                                         'message_type', 'push', 'delivery_id', '3f1c2b9e-8d7a-4b6c-9e5f-000000000001',
                                         'message_name', 'Spring sale reminder', 'message', '50%% off today'))::text,
                   0, now() - interval '1 minute', now() - interval '1 minute'
            FROM generate_series(1, %(n)s) g""", {"app": app_id, "n": n})
    analyze(database_url)


def new_server_app(database_url: str, name: str) -> dict:
    """`bridge apps create` from SERVER_TREE; returns what it printed (app_id, api_key, cohort_token, …)."""
    return orjson.loads(run_bridge(["apps", "create", "--name", name, "--amplitude-api-key", f"{name}-key"],
                                   {"DATABASE_URL": database_url, "JOB_RUNNER": "manual"}))


def cohort_sync(url: str, token: str, users: int, done: threading.Event) -> dict:
    """Post a sync of `users` users to the cohort webhook at `url` in COHORT_BATCH-user batches, one
    after the other; stops early when `done` is set. Returns the batches answered 200 and the others."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    answered = {"ok": 0, "other": 0}
    with httpx.Client(timeout=60) as http:
        for n, start in enumerate(range(0, users, COHORT_BATCH)):
            if done.is_set():
                break
            body = orjson.dumps({
                "cohort_name": "Churn risk - 14 days inactive", "cohort_id": "big", "in_cohort": True,
                "computed_time": str(1763856000), "message_id": f"fairness::{n}",
                "users": [{"user_id": f"user-{i:08d}", "user_properties": {"plan": "pro"}}
                          for i in range(start, min(users, start + COHORT_BATCH))]})
            response = http.post(url, content=body, headers=headers)
            answered["ok" if response.status_code == 200 else "other"] += 1
    return answered


def arrivals_of(sink_url: str) -> dict[str, float]:
    return httpx.get(f"{sink_url}/_sink/arrivals", timeout=120).json()


def wait_for(sink_url: str, event_ids: list[str], timeout: float) -> dict[str, float]:
    """The sink's arrivals once every one of `event_ids` arrived, or after `timeout` (with a warning)."""
    deadline = time.monotonic() + timeout
    while True:
        arrivals = arrivals_of(sink_url)
        missing = sum(1 for event_id in event_ids if event_id not in arrivals)
        if not missing:
            return arrivals
        if time.monotonic() > deadline:
            print(f"  WARNING: {missing:,} of app B's {len(event_ids):,} events answered 202 had not reached "
                  f"the sink after {timeout:.0f} s", flush=True)
            return arrivals
        time.sleep(1)


def measure(backlog: int, cohort_users: int, rate: int, seconds: int, workers: int = WORKERS) -> dict[str, float]:
    """One run (see the module docstring); latencies in ms, A's rate in events/s."""
    items = source_events(rate * seconds)
    with scratch_database("bridge_bench_fairness", migrate=server_upgrade) as database_url:
        flush_redis()
        big, small = new_server_app(database_url, "big"), new_server_app(database_url, "small")
        fill_backlog(database_url, big["app_id"], backlog)
        sink, sink_url = start_sink()
        env = {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "SECRET_KEY": BENCH_SECRET_KEY, "AMPLITUDE_BASE_URL": sink_url,
               "WEB_CONCURRENCY": "2", "LOG_LEVEL": "WARNING"}
        procs: list[Proc] = [sink]
        try:
            procs += [start_bridge(["worker"], env) for _ in range(workers)]
            web, base = start_bridge_web(env)
            procs.append(web)
            deadline = time.monotonic() + 60
            while sink_stats(sink_url)["events_ingested"] == 0:  # A's delivery under way (the sweep found it)
                if time.monotonic() > deadline:
                    raise TimeoutError("app A's backlog did not start to drain")
                time.sleep(0.1)
            stop_cohort = threading.Event()
            cohort: dict = {}
            poster = threading.Thread(target=lambda: cohort.update(cohort_sync(
                f"{base}/v1/apps/{big['app_id']}/amplitude/cohorts", big["cohort_token"], cohort_users, stop_cohort)))
            poster.start()
            client = open_loop(Bridge(base, small["app_id"], small["api_key"], database_url, web, sink_url),
                               [orjson.dumps(item) for item in items], rate, seconds)
            stop_cohort.set()
            poster.join()
            applied = _applied_batches(database_url)
            acked = {item["event"]["id"]: at for item, at in zip(items, client["acked"]) if at is not None}
            arrivals = wait_for(sink_url, list(acked), timeout=max(120.0, seconds * 2.0))
        finally:
            for proc in reversed(procs):
                proc.stop()
    latencies = sorted(arrivals[event_id] - at for event_id, at in acked.items() if event_id in arrivals)
    lost = len(acked) - len(latencies)
    start, end = client["first_sent"], max(acked.values())
    a_arrivals = [at for key, at in arrivals.items() if key.startswith(BACKLOG_PREFIX) and start <= at <= end]
    backlog_end = max(a_arrivals, default=start)  # A's backlog may run out before B's trickle ends
    a_span = backlog_end - start
    contended = [arrivals[event_id] - at for event_id, at in acked.items() if event_id in arrivals and at <= backlog_end]
    non2xx = sum(n for status, n in client["statuses"].items() if not status.startswith("2"))
    return {"p50": percentile(latencies, 50) * 1000, "p95": percentile(latencies, 95) * 1000,
            "p99": percentile(latencies, 99) * 1000, "max": (latencies[-1] if latencies else float("nan")) * 1000,
            "late": lost, "a_seconds": a_span, "contended": len(contended),
            "contended_max": max(contended, default=float("nan")) * 1000, "a_rate": len(a_arrivals) / max(a_span, 1e-9), "non2xx": non2xx,
            "cohort_posted": cohort.get("ok", 0), "cohort_refused": cohort.get("other", 0), "cohort_applied": applied}


def _applied_batches(database_url: str) -> int:
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        return conn.execute("SELECT count(*) FROM cohort_batches WHERE state <> 'received'").fetchone()[0]


def run(backlog: int, cohort_users: int, rate: int, seconds: int, repeat: int) -> list[tuple[str, str, str]]:
    """Rows (figure, value, note): B's latency and A's rate with A's cohort sync in flight, then without it."""
    rows = []
    for users, label in ((cohort_users, "with A's cohort sync"), (0, "cohort sync off")):
        runs = [measure(backlog, users, rate, seconds) for _ in range(repeat)]
        late = sum(r["late"] for r in runs)
        rows.append((f"fairness, {label}: app B p50 / p95 / p99 / max from 202 to sink (ms)",
                     " / ".join(f"{median([r[k] for r in runs]):,.0f}" for k in ("p50", "p95", "p99", "max")),
                     f"B: {rate} single events/s for {seconds} s, open loop; A: {backlog:,}-event backlog"
                     + (f" and a {users:,}-user cohort sync ({COHORT_BATCH:,}-user batches; "
                        f"posted / applied by the trickle's end: {median([r['cohort_posted'] for r in runs]):,.0f} / "
                        f"{median([r['cohort_applied'] for r in runs]):,.0f}"
                        + (f", {sum(r['cohort_refused'] for r in runs)} refused" if any(r['cohort_refused'] for r in runs) else "")
                        + ")" if users else "")
                     + f"; {WORKERS} workers, bridge web 2 x 8"
                     + (f"; {late:,} of B's events had not arrived at the end" if late else "")
                     + (f"; {sum(r['non2xx'] for r in runs)} non-2xx" if any(r["non2xx"] for r in runs) else "")))
        rows.append((f"fairness, {label}: app A delivered meanwhile (events/s)",
                     f"{median([r['a_rate'] for r in runs]):,.0f}",
                     f"A's events at the sink from B's first event to A's last in B's trickle "
                     f"({median([r['a_seconds'] for r in runs]):,.0f} s); B's events answered in that span: "
                     f"{median([r['contended'] for r in runs]):,.0f}, the slowest {median([r['contended_max'] for r in runs]):,.0f} ms"))
    return rows
