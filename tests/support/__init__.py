"""Test support: what the tests share, declared once. Tests import from here, never from conftest.py,
which only registers the fixtures.

- `support.factories`: test data (event items, cohort batches, channel records, tenants).
- `support.databases`: the test PostgreSQL and Redis servers, emptying a database, skipping without them.
- `support.processes`: real `bridge` processes (gunicorn web, RQ worker, one-off commands) and their logs.
- `support.faults`: the fault suite's load, private Redis and end-of-scenario invariant.
- `support.metrics`: reading a scrape of /metrics with Prometheus' own parser.
- `support.platform`: the local messaging platform's app, key and a clock moved by hand.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository's checkout
FIXTURES = ROOT / "fixtures"  # sample files the tests post and import (real exports, webhook bodies)
