"""A first sync of a big cohort to the messaging platform: `bridge worker` (RQ on Redis, PostgreSQL) sends
every member's tag to `bridge platform-server` (its own process, enforcing the platform's limits: a
request over 1,000/s for the app, or within 1 s of the user's last, is answered 429).

Measured from the platform server's request log: the sustained rate (requests over the time from the
first to the last, and the slowest 10-second window), the fewest seconds between two requests for one
user, and the worker's memory (its process tree's RSS when 10% and when 100% of the users were tagged).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import psycopg

from bench.cohorts import add_members
from bench.common import (BENCH_SECRET_KEY, REDIS_URL, Proc, analyze, flush_redis, free_port, new_app,
                          scratch_database, start_bridge)

APP_ID = "5eb5a37e-b458-11e3-ac11-000c2940e62c"
API_KEY = "bench-platform-key"
WINDOW = 10.0  # seconds: the sustained rate is the slowest such window's


def fill(database_url: str, app_id: str, users: int) -> None:
    """`users` members of cohort 'big', all known to the platform."""
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        add_members(conn, app_id, users)
    analyze(database_url)


def tree_rss_mb(pid: int) -> float:
    """The current RSS of `pid` and its children (RQ's work horse), in MB."""
    total = 0.0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        pass
    for one in pids:
        try:
            status = Path(f"/proc/{one}/status").read_text()
        except FileNotFoundError:
            continue
        total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024
    return total


def run(users: int, repeat: int) -> list[tuple[str, str, str]]:
    rates, windows, spacings, memory = [], [], [], []
    for _ in range(repeat):
        rate, window, spacing, rss = _once(users)
        rates.append(rate)
        windows.append(window)
        spacings.append(spacing)
        memory.append(rss)
    middle = sorted(range(repeat), key=lambda i: rates[i])[repeat // 2]
    start_mb, end_mb = memory[middle]
    return [
        (f"platform sync, first sync of {users:,} users (requests/s)", f"{rates[middle]:,.0f}",
         f"slowest {WINDOW:.0f} s window {windows[middle]:,.0f}/s; 1 worker, app rate 900/s"),
        ("platform sync: fewest seconds between two requests for one user",
         f"{min(s for s in spacings if s is not None):.2f}" if any(s is not None for s in spacings) else "-",
         "'-': no user needed a second request; the platform server counts any gap under 1 s as a violation "
         "(0 in every run)"),
        ("platform sync: worker RSS at 10% / 100% of the users (MB)", f"{start_mb:,.0f} / {end_mb:,.0f}",
         "the worker's process tree"),
    ]


def _once(users: int) -> tuple[float, float, float | None, tuple[float, float]]:
    with scratch_database("bridge_bench_platform") as database_url:
        flush_redis()
        app_id, _ = new_app(database_url)
        fill(database_url, app_id, users)
        port = free_port()
        server = Proc([sys.executable, "-m", "bridge", "platform-server", "--port", str(port), "--api-key", API_KEY,
                       "--enforce-limits"])
        platform_url = f"http://127.0.0.1:{port}"
        _wait_up(platform_url)
        with httpx.Client(base_url=platform_url, timeout=60) as control:
            ids = [f"user-{n:08d}" for n in range(users)]
            for start in range(0, users, 50_000):
                control.post("/_platform/users", json={"app_id": APP_ID, "external_ids": ids[start:start + 50_000]})
            env = {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "SECRET_KEY": BENCH_SECRET_KEY,
                   "PLATFORM_BASE_URL": platform_url, "LOG_LEVEL": "WARNING"}
            worker = start_bridge(["worker"], env)
            try:
                _enable(env, app_id)  # no ANALYZE after: the tables are as fresh as in a real first sync
                rss_at_10 = None
                deadline = time.monotonic() + users / 100 + 120
                while time.monotonic() < deadline:
                    done = _answered(control.get("/_platform/stats").json())
                    if rss_at_10 is None and done >= users // 10:
                        rss_at_10 = tree_rss_mb(worker.popen.pid)
                    if done >= users:
                        break
                    time.sleep(0.5)
                else:
                    raise TimeoutError("the first sync did not finish")
                rss_at_end = tree_rss_mb(worker.popen.pid)
                log = control.get("/_platform/requests").json()
                stats = control.get("/_platform/stats").json()
            finally:
                worker.stop()
                server.stop()
        times = sorted(entry["monotonic"] for entry in log if entry["status"] and 200 <= entry["status"] < 300)
        rate = (len(times) - 1) / (times[-1] - times[0])
        starts = _window_starts(times)
        slowest = min(_count_between(times, t, t + WINDOW) for t in starts) / WINDOW if starts else rate
        if stats["over_app_rate"] or stats["user_spacing_violations"]:
            raise AssertionError(f"the platform's limits were broken: {stats}")
        return rate, slowest, stats["min_user_spacing"], (rss_at_10 or 0.0, rss_at_end)


def _answered(stats: dict) -> int:
    """Requests the platform applied (2xx)."""
    return sum(n for status, n in stats["requests"].items() if status.isdigit() and 200 <= int(status) < 300)


def _window_starts(times: list[float]) -> list[float]:
    """Starts of the full windows from the first request to the last."""
    first, last = times[0], times[-1]
    starts = []
    t = first
    while t + WINDOW <= last:
        starts.append(t)
        t += WINDOW / 2
    return starts


def _count_between(times: list[float], start: float, end: float) -> int:
    import bisect

    return bisect.bisect_left(times, end) - bisect.bisect_left(times, start)


def _enable(env: dict[str, str], app_id: str) -> None:
    """Connect the app and turn the cohort's sync on, as `bridge apps update` and the API do: the commit
    queues the tagger on Redis, where the worker takes it."""
    from bridge.apps.models import App
    from bridge.apps.service import connect_platform
    from bridge.cohorts.tagger import tag_after_commit
    from bridge.cohorts.tagging import set_platform_sync
    from bridge.runtime import Runtime
    from bridge.settings import Settings

    runtime = Runtime(Settings.from_env(env))
    try:
        with runtime.session() as session:
            connect_platform(session, session.get(App, app_id), platform="onesignal", platform_app_id=APP_ID,
                             platform_api_key=API_KEY)
            set_platform_sync(session, app_id, "big", enabled=True)
            tag_after_commit(session, app_id)
            session.commit()
    finally:
        runtime.close()


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/_platform/stats", timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
