"""Shared benchmark plumbing: a scratch PostgreSQL database, subprocesses, and peak RSS."""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg

from bridge.migrate import upgrade
from bridge.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("BRIDGE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BRIDGE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


@contextmanager
def scratch_database(name: str = "bridge_bench"):
    """A freshly migrated PostgreSQL database (SQLAlchemy URL), dropped afterwards."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = Settings.from_env({"DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"}).database_url
    upgrade(url)
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_redis() -> None:
    from redis import Redis

    Redis.from_url(REDIS_URL).flushdb()


class Proc:
    """A child process whose peak RSS can be read before it is stopped."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.popen = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})},
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def peak_rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except FileNotFoundError:
            pass
        return float("nan")

    def stop(self) -> float:
        """Stop (SIGTERM, then SIGKILL) and return the peak RSS in MB."""
        peak = self.peak_rss_mb()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return peak


def start_sink() -> tuple[Proc, str]:
    sink = Proc([sys.executable, "-m", "bridge.amplitude.sink", "--port", "0", "--no-record-events"])
    url = sink.popen.stdout.readline().strip()
    return sink, url


def sink_stats(url: str) -> dict:
    return httpx.get(f"{url}/_sink/stats", timeout=10).json()


def wait_for_ingested(url: str, n: int, timeout: float = 600) -> tuple[float, float]:
    """Poll the sink until it has ingested `n` events; returns (time of the first event, time of the last)."""
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = sink_stats(url)["events_ingested"]
        now = time.perf_counter()
        if got and first is None:
            first = now
        if got >= n:
            return first or now, now
        time.sleep(0.01)
    raise TimeoutError(f"the sink did not receive {n} events in {timeout}s")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
