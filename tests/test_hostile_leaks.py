"""Leaks and traces: what a hostile value can do to the bridge's logs and records, and what the bridge's
own answers and records give away (personal data, other tenants' volumes). Issue 10, items 6 and 8;
each test failed before its fix."""
from __future__ import annotations

import io
import logging

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job

from bridge import logs
from bridge.worker import BridgeWorker

pytestmark = pytest.mark.hostile

FORGED = "\n2026-11-29 12:00:00,000 INFO bridge.auth [req=admin] token OK\x1b[2J\u202e"
PRIVATE = "private-user-4711@example.com"


def leaky_job(user_id: str) -> None:
    """A job failing with an exception whose message quotes its input, as database and parsing errors do."""
    raise ValueError(f"no channel record for {user_id}{FORGED}")


@pytest.fixture
def log_lines():
    """Every log line written through the bridge's formatter while the test runs (as web, worker and CLI
    processes install it, `bridge.logs.configure`)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.SafeFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lambda: stream.getvalue().splitlines()
    finally:
        root.removeHandler(handler)


def _forged(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("2026-11-29") or "\x1b" in line or "\u202e" in line]


def test_an_exception_message_cannot_forge_a_log_line_or_rewrite_the_terminal(log_lines):
    log = logging.getLogger("bridge.test_hostile_leaks")
    try:
        try:
            leaky_job("u1")
        except ValueError as exc:
            raise KeyError(f"second{FORGED}") from exc
    except KeyError:
        log.exception("failed", stack_info=True)
    lines = log_lines()
    assert _forged(lines) == []
    assert any(line.startswith("ValueError: no channel record for u1\\x0a2026-11-29") and "\\x1b[2J\\u202e" in line
               for line in lines)
    assert "Traceback (most recent call last):" in lines and any(line.startswith("  File ") for line in lines)
    assert "The above exception was the direct cause of the following exception:" in lines
    assert any(line.startswith("Stack (most recent call last):") for line in lines)


def test_a_traceback_another_handler_formatted_first_is_escaped_too(log_lines):
    plain = logging.StreamHandler(io.StringIO())  # e.g. a library's own handler, formatting the record first
    plain.setFormatter(logging.Formatter())
    log = logging.getLogger("bridge.test_hostile_leaks.plain")
    log.addHandler(plain)
    try:
        try:
            leaky_job("u1")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(plain)
    assert _forged(log_lines()) == []


def test_a_failed_job_is_recorded_without_its_message_and_logged_escaped(redis_url, log_lines):
    redis = Redis.from_url(redis_url)
    queue = Queue("bridge-hostile-leaks", connection=redis)
    job = queue.enqueue(leaky_job, PRIVATE)
    BridgeWorker([queue], connection=redis).work(burst=True)

    job = Job.fetch(job.id, connection=redis)
    assert job.id in queue.failed_job_registry.get_job_ids()
    recorded = job.latest_result().exc_string
    assert PRIVATE not in recorded and "private-user" not in recorded
    assert "ValueError: (message withheld)" in recorded and "in leaky_job" in recorded  # what failed, and where
    lines = log_lines()
    assert _forged(lines) == []
    assert any(PRIVATE in line for line in lines)  # the operator's log keeps the message, escaped
