"""End to end: `bridge web` (gunicorn, 2 processes) and `bridge worker` on PostgreSQL and Redis, sharing one
PROMETHEUS_MULTIPROC_DIR, deliver to the local Amplitude server; one scrape of /metrics adds up what every
process counted, and keeps the counts of a web process that died."""
from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from support.databases import libpq_url, truncate
from support.factories import event_items
from support.metrics import SCRAPE_HEADERS, TOKEN, Samples, parse, value
from support.processes import (SECRET_KEY, bridge_cli, run_bridge, start_web, start_worker, wait_until,
                               wait_until_answering)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

AMPLITUDE_KEY = "amp-metrics-key"


def scrape(url: str) -> Samples:
    """A scrape of the real web server, read by prometheus_client's parser."""
    response = httpx.get(f"{url}/metrics", headers=SCRAPE_HEADERS, timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (gunicorn's master: its web processes)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def counted_by(directory: Path, pid: int, name: str, **labels: str) -> float:
    """What the process `pid` alone wrote for one sample, read from its own file."""
    path = directory / f"counter_{pid}.db"
    if not path.exists():
        return 0.0
    return sum(s.value for metric in MultiProcessCollector.merge([str(path)]) for s in metric.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_one_scrape_adds_up_every_web_process_and_the_worker(postgresql_url, redis_url, sink, tmp_path):
    truncate(postgresql_url)
    directory = tmp_path / "metrics"
    env = {"DATABASE_URL": libpq_url(postgresql_url), "REDIS_URL": redis_url, "AMPLITUDE_BASE_URL": sink.url,
           "SECRET_KEY": SECRET_KEY, "METRICS_TOKEN": TOKEN, "PROMETHEUS_MULTIPROC_DIR": str(directory),
           "WEB_CONCURRENCY": "2", "LOG_LEVEL": "INFO", "SWEEP_INTERVAL_SECONDS": "0.5"}
    created = bridge_cli(env, "apps", "create", "--name", "Metrics", "--amplitude-api-key", AMPLITUDE_KEY)
    app, auth = created["app_id"], {"Authorization": f"Bearer {created['api_key']}"}
    web, url = start_web(env, tmp_path / "web.log")
    worker = start_worker(env, tmp_path / "worker.log")
    posted = 0
    try:
        web_processes = wait_until(lambda: len(found := children(web.popen.pid)) == 2 and found, 30,
                                   "gunicorn's 2 web processes")

        def post_one(index: int) -> int:
            # A connection of its own per request, so gunicorn's processes share them.
            answer = httpx.post(f"{url}/v1/apps/{app}/events", json=event_items(1, start=index), headers=auth, timeout=30)
            assert answer.status_code == 202, answer.text
            return 1

        def both_web_processes_counted() -> bool:
            nonlocal posted
            with ThreadPoolExecutor(8) as pool:
                posted += sum(pool.map(post_one, range(posted, posted + 16)))
            return all(counted_by(directory, pid, "bridge_intake_requests_total", app=app) for pid in web_processes)

        wait_until(both_web_processes_counted, 60, "both web processes to count intake requests")
        wait_until(lambda: value(scrape(url), "bridge_outbox_pending_events", app=app) == 0 and
                   len(sink.events(AMPLITUDE_KEY)) == posted, 60, "the worker to deliver every event")

        samples = scrape(url)
        by_web = [counted_by(directory, pid, "bridge_intake_requests_total", app=app, outcome="accepted")
                  for pid in web_processes]
        assert all(by_web) and sum(by_web) == posted
        assert value(samples, "bridge_intake_requests_total", app=app, outcome="accepted") == posted
        assert value(samples, "bridge_intake_events_total", app=app, outcome="accepted") == posted
        # the worker's counts, in the web's scrape
        assert counted_by(directory, worker.popen.pid, "bridge_delivery_events_total", app=app) == posted
        assert value(samples, "bridge_delivery_events_total", app=app, outcome="delivered") == posted
        assert value(samples, "bridge_amplitude_requests_total", app=app, answer="200") >= 1

        # A web process dies: gunicorn starts another, and what the dead one counted stays in the sum.
        victim = min(web_processes)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(children(web.popen.pid) - {victim}) == 2, 30, "gunicorn to replace the process")
        wait_until_answering(web, f"{url}/healthz", "the web server")
        after = scrape(url)
        assert value(after, "bridge_intake_requests_total", app=app, outcome="accepted") == posted
        assert value(after, "bridge_delivery_events_total", app=app, outcome="delivered") == posted
    finally:
        web.stop()
        worker.stop()
    for process in (web, worker):
        assert TOKEN not in process.output()


def test_embedded_bridge_web_counts_in_a_directory_of_its_own(tmp_path, sink):
    """SQLite, no Redis, no PROMETHEUS_MULTIPROC_DIR: `bridge web` makes the directory, its one process and
    the delivery thread count into it, and it is gone once the server stops."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}", "REDIS_URL": "", "AMPLITUDE_BASE_URL": sink.url,
           "METRICS_TOKEN": TOKEN, "PROMETHEUS_MULTIPROC_DIR": "", "LOG_LEVEL": "INFO"}
    upgraded = run_bridge(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    created = bridge_cli(env, "apps", "create", "--name", "Laptop", "--amplitude-api-key", AMPLITUDE_KEY)
    app, auth = created["app_id"], {"Authorization": f"Bearer {created['api_key']}"}
    web, url = start_web(env, tmp_path / "web.log")
    try:
        environ = Path(f"/proc/{web.popen.pid}/environ").read_bytes().split(b"\0")
        made = Path(next(v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")).split(b"=", 1)[1].decode())
        assert made.name.startswith("bridge-metrics-") and made.is_dir()
        answer = httpx.post(f"{url}/v1/apps/{app}/events", json=event_items(3), headers=auth, timeout=30)
        assert answer.status_code == 202, answer.text
        wait_until(lambda: value(scrape(url), "bridge_delivery_events_total", app=app, outcome="delivered") == 3,
                   30, "the delivery thread's count")
        samples = scrape(url)
        assert value(samples, "bridge_intake_events_total", app=app, outcome="accepted") == 3
        assert value(samples, "bridge_outbox_pending_events", app=app) == 0
    finally:
        web.stop()
    assert not made.exists()
    assert TOKEN not in web.output()
