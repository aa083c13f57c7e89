"""The benchmark suite still runs (tiny sizes, one run each): it measures, so this checks only that
every scenario completes and prints its figures."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT_DIR


@pytest.mark.usefixtures("postgresql_url", "redis_url")
def test_the_benchmark_suite_runs_on_tiny_sizes():
    done = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=ROOT_DIR, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT_DIR)})
    assert done.returncode == 0, done.stderr[-3000:]
    for figure in ("intake, durable", "delivery, 2 workers", "official SDK, defaults", "end to end at 2,000 events/s",
                   "single event, recurring subscriptions", "single event p50 / p90 / p99", "web CPU per single-event request",
                   "embedded, single event", "100 new subscriptions per request", "100 new subscriptions at 10,000 events/s",
                   "trickle at 1,000 events/s",
                   "trickle: p50 / p99 from 202 to sink", "trickle: achieved send rate",
                   "5 + 5 slow connections: /healthz answered", "cohort webhook ack", "report / aggregate", "CSV import"):
        assert figure in done.stdout
