"""The benchmark suite still runs (tiny sizes, one run each): it measures, so this checks only that
every scenario completes and prints its figures."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support import ROOT


# The fairness figure's command as the README shows it (tests/test_readme_commands.py checks it is shown).
README_FAIRNESS = "bin/bench --only fairness"

pytestmark = pytest.mark.slow


@pytest.mark.usefixtures("postgresql_url")
def test_the_benchmark_suite_runs_on_tiny_sizes(redis_url):
    done = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "BRIDGE_BENCH_REDIS_URL": redis_url})
    assert done.returncode == 0, done.stderr[-3000:]
    for figure in ("intake, durable", "delivery, 2 workers", "official SDK, defaults", "end to end at 2,000 events/s",
                   "single event, recurring subscriptions", "single event p50 / p90 / p99", "web CPU per single-event request",
                   "embedded, single event", "100 new subscriptions per request", "100 new subscriptions at 10,000 events/s",
                   "trickle at 1,000 events/s",
                   "trickle: p50 / p99 from 202 to sink", "trickle: achieved send rate",
                   "5 + 5 slow connections: /healthz answered", "cohort webhook ack", "report / aggregate",
                   "dashboard: cohort page / app page", "CSV import",
                   "fairness, with A's cohort sync: app B p50 / p95 / p99 / max", "fairness, cohort sync off: app A delivered",
                   "idle worker: from 202 to sink after a quiet spell", "idle worker: ERROR lines in its log per run",
                   "scrape of /metrics, big database"):
        assert figure in done.stdout


@pytest.mark.usefixtures("postgresql_url")
def test_the_readme_fairness_command_runs_as_written(redis_url):
    """`bin/bench` itself (it installs the bench extras first), on tiny sizes (BRIDGE_BENCH_QUICK=1)."""
    done = subprocess.run(README_FAIRNESS.split(), cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "BRIDGE_BENCH_QUICK": "1", "BRIDGE_BENCH_REDIS_URL": redis_url})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| fairness")]
    assert len(rows) == 4, done.stdout[-3000:]
    assert "1 run(s)" in done.stdout
