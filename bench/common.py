"""Shared benchmark plumbing: a scratch PostgreSQL database, subprocesses, peak RSS and CPU time, and the
server under test (this checkout, or the one BRIDGE_BENCH_SERVER_TREE names)."""
from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import psycopg

from bridge.migrate import upgrade
from bridge.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("BRIDGE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BRIDGE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
BENCH_SECRET_KEY = "bench-secret-key-0123456789abcdef0123456789"  # production mode (REDIS_URL) needs one
BENCH_METRICS_TOKEN = "bench-metrics-token-0123456789abcdef0123456789"  # /metrics on, as production runs it
# The checkout whose `bridge` package the stream scenarios run as `bridge web` / `bridge worker`, with
# PYTHONPATH and cwd set to it (an older commit, say, to compare side by side); the harness itself and
# the sink always come from ROOT.
SERVER_TREE = Path(os.environ.get("BRIDGE_BENCH_SERVER_TREE") or ROOT).resolve()


@contextmanager
def scratch_database(name: str = "bridge_bench", template: str | None = None,
                     migrate: Callable[[str], None] = upgrade):
    """A freshly migrated PostgreSQL database (SQLAlchemy URL), dropped afterwards; with `template`,
    a copy of that database instead (how a filled outbox is reused across runs). `migrate` brings
    the new database to the latest revision (default: this checkout's migrations, in process)."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    url = Settings.from_env({"DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"}).database_url
    if not template:
        migrate(url)
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

    def __init__(self, args: list[str], env: dict[str, str] | None = None, *, read_stdout: bool = False,
                 cwd: Path = ROOT, log: Path | None = None):
        """Start `args` in `cwd`. Its output is discarded unless `read_stdout` (then it must be read, or
        the child blocks once the pipe is full) or `log` (stdout and stderr appended to that file)."""
        if log is not None:
            with log.open("ab") as out:
                self.popen = subprocess.Popen(args, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out,
                                              stderr=subprocess.STDOUT)
            return
        self.popen = subprocess.Popen(args, cwd=cwd, env={**os.environ, **(env or {})},
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
        return max(_peak_rss_mb(pid) for pid in self._tree())

    def tree_cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by this process and its live children (gunicorn's workers)."""
        return sum(_cpu_seconds(pid) for pid in self._tree())

    def _tree(self) -> list[int]:
        pids = [self.popen.pid]
        try:
            pids += [int(p) for p in Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children").read_text().split()]
        except FileNotFoundError:
            pass
        return pids

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
        session.commit()
    runtime.close()
    return app.id, tokens


def start_web(env: dict[str, str]) -> tuple[Proc, str]:
    """gunicorn (2 processes x 4 threads) serving the bridge on a free port; returns it and its base URL."""
    port = free_port()
    web = Proc([sys.executable, "-m", "gunicorn", "bridge.web:create_app()", "--bind", f"127.0.0.1:{port}",
                "--workers", "2", "--threads", "4", "--log-level", "warning", "--no-control-socket"], env)
    return web, wait_until_up(f"http://127.0.0.1:{port}", web)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExitedEarly(RuntimeError):
    """A server process exited before it answered."""


def wait_until_up(url: str, proc: Proc | None = None, timeout: float = 30) -> str:
    """Wait until the bridge at `url` answers /healthz; returns `url`. ExitedEarly if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return url
        except httpx.HTTPError:
            if proc is not None and proc.popen.poll() is not None:
                raise ExitedEarly(f"`{' '.join(proc.popen.args[1:])}` exited with {proc.popen.returncode} "
                                  "before answering") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bridge at {url} did not start") from None
            time.sleep(0.1)


def start_server(args: list[str], env: dict[str, str], log: Path | None = None) -> Proc:
    """`python <args>` from SERVER_TREE, importing its `bridge` package (the output discarded, or
    appended to `log`)."""
    return Proc([sys.executable, *args], _server_env(env), cwd=SERVER_TREE, log=log)


def start_bridge(args: list[str], env: dict[str, str], log: Path | None = None) -> Proc:
    """`bridge <args>` from SERVER_TREE, as the Procfile runs it (the output discarded, or appended to
    `log`)."""
    return start_server(["-m", "bridge", *args], env, log)


def run_bridge(args: list[str], env: dict[str, str]) -> str:
    """Run `bridge <args>` from SERVER_TREE to completion; returns its stdout."""
    done = subprocess.run([sys.executable, "-m", "bridge", *args], cwd=SERVER_TREE, capture_output=True, text=True,
                          env={**os.environ, **_server_env(env)})
    if done.returncode != 0:
        raise RuntimeError(f"bridge {' '.join(args)} exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def start_bridge_web(env: dict[str, str], gunicorn_workers: int | None = None) -> tuple[Proc, str]:
    """`bridge web` from SERVER_TREE (gunicorn, WEB_CONCURRENCY processes x 8 threads, as the Procfile
    runs it) on a free port; returns it and its base URL. With `gunicorn_workers`, the gunicorn command
    `bridge web` runs instead, with that many processes."""
    port = free_port()
    if gunicorn_workers is None:
        web = start_bridge(["web", "--host", "127.0.0.1"], {**env, "PORT": str(port)})
    else:
        web = start_server(["-m", "gunicorn", "bridge.web:create_app()", "--bind", f"127.0.0.1:{port}", "--workers",
                            str(gunicorn_workers), "--threads", "8", "--access-logfile", "-", "--graceful-timeout", "25",
                            "--no-control-socket"], env)
    try:
        return web, wait_until_up(f"http://127.0.0.1:{port}", web)
    except BaseException:
        web.stop()
        raise


def server_upgrade(database_url: str) -> None:
    """Migrate `database_url` with SERVER_TREE's migrations (`bridge db upgrade`, the release phase)."""
    run_bridge(["db", "upgrade"], {"DATABASE_URL": database_url})


def server_app(database_url: str) -> tuple[str, str]:
    """Create an app with SERVER_TREE's `bridge apps create`; returns (app_id, api_key)."""
    created = orjson.loads(run_bridge(["apps", "create", "--name", "bench", "--amplitude-api-key", "bench-key"],
                                      {"DATABASE_URL": database_url, "JOB_RUNNER": "manual"}))
    return created["app_id"], created["api_key"]


def _server_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with SERVER_TREE alone on PYTHONPATH: its `bridge` wins over the one installed in the venv."""
    return {**env, "PYTHONPATH": str(SERVER_TREE)}


def ensure_wrk() -> str:
    """The path of wrk (the HTTP load generator), installed with apt-get first if it is missing."""
    if not shutil.which("wrk"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)  # if it fails, the install says why
        done = subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True, text=True, env=env)
        if done.returncode != 0 or not shutil.which("wrk"):
            raise RuntimeError(f"wrk is missing and `apt-get install wrk` exited with {done.returncode}: {done.stderr[-2000:]}")
    return shutil.which("wrk")


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (0 once it is gone), from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def percentile(ordered: list[float], p: float) -> float:
    """The `p`th percentile (0-100) of `ordered`, a sorted list (nearest rank)."""
    return ordered[max(0, math.ceil(len(ordered) * p / 100) - 1)] if ordered else float("nan")
