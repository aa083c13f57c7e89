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
def scratch_database(name: str = "bridge_bench", template: str | None = None):
    """A freshly migrated PostgreSQL database (SQLAlchemy URL), dropped afterwards; with `template`,
    a copy of that database instead (how a filled outbox is reused across runs)."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    url = Settings.from_env({"DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"}).database_url
    if not template:
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

    def __init__(self, args: list[str], env: dict[str, str] | None = None, *, read_stdout: bool = False):
        """Start `args`. Its output is discarded unless `read_stdout` (then it must be read, or the
        child blocks once the pipe is full)."""
        self.popen = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})},
                                      stdout=subprocess.PIPE if read_stdout else subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, text=True)

    def peak_rss_mb(self) -> float:
        return _peak_rss_mb(self.popen.pid)

    def wait_rss_mb(self, timeout: float = 3600) -> float:
        """Wait for the process to exit by itself; returns its peak RSS in MB (from wait4)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
            if pid:
                self.popen.returncode = os.waitstatus_to_exitcode(status)
                if self.popen.returncode != 0:
                    raise RuntimeError(f"{self.popen.args} exited with {self.popen.returncode}")
                return usage.ru_maxrss / 1024
            time.sleep(0.05)
        raise TimeoutError(f"{self.popen.args} did not finish")

    def tree_peak_rss_mb(self) -> float:
        """The largest peak RSS among this process and its children (gunicorn's workers)."""
        pids = [self.popen.pid]
        try:
            pids += [int(p) for p in Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children").read_text().split()]
        except FileNotFoundError:
            pass
        return max(_peak_rss_mb(pid) for pid in pids)

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


def new_app(database_url: str):
    """Create an app in `database_url`; returns (app_id, its plaintext tokens)."""
    from bridge.apps.service import create_app_record
    from bridge.runtime import Runtime

    runtime = Runtime(Settings.from_env({"DATABASE_URL": database_url, "JOB_RUNNER": "manual"}))
    with runtime.session() as session:
        app, tokens = create_app_record(session, name="bench", amplitude_api_key="bench-key")
    runtime.close()
    return app.id, tokens


def start_web(env: dict[str, str]) -> tuple[Proc, str]:
    """gunicorn (2 processes x 4 threads) serving the bridge on a free port; returns it and its base URL."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = Proc([sys.executable, "-m", "gunicorn", "bridge.web:create_app()", "--bind", f"127.0.0.1:{port}",
                "--workers", "2", "--threads", "4", "--log-level", "warning"], env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return web, url
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise TimeoutError("gunicorn did not start") from None
            time.sleep(0.1)


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def analyze(database_url: str) -> None:
    """ANALYZE every table: what autovacuum does on a production server (it is off on this machine)."""
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("ANALYZE")


class Analyzer:
    """Runs ANALYZE every few seconds while a scenario grows tables, standing in for autovacuum."""

    def __init__(self, database_url: str, every: float = 2.0):
        import threading

        self.database_url, self.every = database_url, every
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stopping.wait(self.every):
            analyze(self.database_url)

    def __enter__(self) -> "Analyzer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()


def start_sink() -> tuple[Proc, str]:
    sink = Proc([sys.executable, "-m", "bridge.amplitude.sink", "--port", "0", "--no-record-events", "--track-arrivals"],
                read_stdout=True)
    url = sink.popen.stdout.readline().strip()
    return sink, url


def sink_stats(url: str) -> dict:
    return httpx.get(f"{url}/_sink/stats", timeout=10).json()


def wait_for_ingested(url: str, n: int, timeout: float = 600) -> float:
    """Wait until the sink has ingested `n` events; returns the delivery rate in events/s, from the
    sink's own arrival times: the events after the first request, over the time from the first
    request's arrival to the last event's (so process start-up is not counted)."""
    deadline = time.monotonic() + timeout
    while sink_stats(url)["events_ingested"] < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the sink did not receive {n} events in {timeout}s")
        time.sleep(0.05)
    arrivals = sorted(httpx.get(f"{url}/_sink/arrivals", timeout=60).json().values())
    first, last = arrivals[0], arrivals[-1]
    after_first = sum(1 for t in arrivals if t > first)
    if last == first or not after_first:
        raise RuntimeError("every event arrived in one request: use more events than one batch")
    return after_first / (last - first)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
