"""Prometheus metrics: what the processes that do the work count, and the text a scrape of `/metrics` reads.

The counters and histograms below are prometheus_client's. In a process started with the environment
variable `PROMETHEUS_MULTIPROC_DIR` (prometheus_client reads it when it is first imported), each process
writes its values to files of its own in that directory, and a scrape sums every process's files: the
gunicorn processes of `bridge web`, and a `bridge worker` on the same host pointed at the same directory.
Without it, values live in the process's memory (embedded mode: one process, jobs on a thread).

What lives in the database (pending events, dead letters held, cohort batches and platform tags by state)
is not counted here but read at scrape time (`bridge.scrape`), so it is right across every process and
machine.

Labels come from closed sets only: an `app` label is the id of an app that authenticated or that owns
the work (UNAUTHENTICATED otherwise), never a value of the request; no label holds a user's id or a token.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from bridge.settings import ConfigurationError

# The environment variable prometheus_client reads (`bridge web` sets it for gunicorn's processes).
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Set by `bridge web` to the directory it made itself (PROMETHEUS_MULTIPROC_DIR unset), which gunicorn
# removes when it stops.
MADE_DIR_VARIABLE = "BRIDGE_WEB_MADE_METRICS_DIR"
# Prometheus' text format 0.0.4, which every Prometheus reads (generate_latest writes it for these names).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The `app` label of a request no app authenticated (a wrong token, an app id nobody owns).
UNAUTHENTICATED = "unauthenticated"

_registry = CollectorRegistry(auto_describe=True)  # this process's own values (single-process mode)


def _make_configured_directory() -> None:
    """Create PROMETHEUS_MULTIPROC_DIR if it is set and missing, so that any process started with it (a
    worker, a one-off command, the demo) writes its counts there instead of failing a request on the first
    one. One that cannot be made is left to `bridge web` and `bridge worker`, which refuse to start on it
    with one line naming it (`ensure_directory`)."""
    path = os.environ.get(MULTIPROC_DIR_VARIABLE)
    if path:
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError:
            pass



_make_configured_directory()  # before any metric is made: prometheus_client opens its files then

INTAKE_REQUESTS = Counter(
    "bridge_intake_requests", "Event-stream requests (POST /v1/apps/<app_id>/events), by app and outcome: "
    "`accepted` (202), else the error code answered (`invalid_events`, `unauthorized`, `backlog_full`, "
    "`overloaded`, ...).", ["app", "outcome"], registry=_registry)
INTAKE_EVENTS = Counter(
    "bridge_intake_events", "Event-stream items, by app and the bucket the intake answered them in: "
    "accepted, skipped, duplicates, ignored, rejected. Counted once stored (nothing of a 429 or 503).",
    ["app", "outcome"], registry=_registry)
HTTP_REQUEST_DURATION = Histogram(
    "bridge_http_request_duration_seconds", "Time the web app took to answer a request (the request already "
    "read whole), by route (Flask's URL rule, `unmatched` for none), method and status class (2xx, 4xx, ...).",
    ["route", "method", "status"], registry=_registry)
AMPLITUDE_REQUESTS = Counter(
    "bridge_amplitude_requests", "Requests to Amplitude's HTTP V2 API, by app and answer: 200, 400, 413, 429, "
    "4xx (another client error), 5xx, network (a timeout or no answer), other.", ["app", "answer"],
    registry=_registry)
DELIVERY_EVENTS = Counter(
    "bridge_delivery_events", "Outbox events by what a delivery attempt recorded for them: delivered, retrying "
    "(failed, tried again after a backoff), throttled (a 429 named their user or device), dead (dead-lettered).",
    ["app", "outcome"], registry=_registry)
DEAD_LETTERS = Counter(
    "bridge_dead_letters", "Events dead-lettered, by app and reason (amplitude_400, daily_quota_exceeded, "
    "payload_too_large, retry_window_exceeded).", ["app", "reason"], registry=_registry)
COHORT_BATCH_RUNS = Counter(
    "bridge_cohort_batch_runs", "Runs of the cohort batch job, by outcome: processed (applied to its cohort), "
    "failed (an error, recorded on the batch; retried up to its limit), skipped (nothing to do: applied "
    "already, failed for good, or held by another run).", ["outcome"], registry=_registry)
PLATFORM_TAG_REQUESTS = Counter(
    "bridge_platform_tag_requests", "Tag requests to the messaging platform (one user's tags each), by app and "
    "outcome (bridge.platforms.base: applied, not_on_platform, conflict, throttled, retry, rejected).",
    ["app", "outcome"], registry=_registry)

# Methods a route can answer; any other a client sends is counted as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """`method` when it is a standard HTTP method, else "other" (the client chooses it)."""
    return method if method in _METHODS else "other"


def status_class(status: int) -> str:
    """An HTTP status as its class: 204 → "2xx", 503 → "5xx"."""
    return f"{status // 100}xx"


def amplitude_answer(status: int | None) -> str:
    """The `answer` label of one Amplitude request: its status (None: no answer came) as one of 200, 400,
    413, 429 (each handled its own way, README "What each Amplitude answer does"), 4xx, 5xx, network, other."""
    if status is None:
        return "network"
    if status in (200, 400, 413, 429):
        return str(status)
    if 400 <= status < 600:
        return status_class(status)
    return "other"


def multiprocess_dir() -> str | None:
    """The directory this process's metrics are written to, or None (single-process mode)."""
    return os.environ.get(MULTIPROC_DIR_VARIABLE) or None


def prepare_for_web_server(configured: str | None) -> str:
    """Make the metrics directory of a `bridge web` about to start gunicorn, and put it in this process's
    environment (PROMETHEUS_MULTIPROC_DIR), which gunicorn's processes inherit: `configured`, or a new
    directory under the system's temporary directory when None (named in MADE_DIR_VARIABLE too, so that
    gunicorn removes it when it stops: bridge.gunicorn_config). Returns the directory."""
    if configured is None:
        configured = os.environ[MADE_DIR_VARIABLE] = tempfile.mkdtemp(prefix="bridge-metrics-")
    prepare_directory(configured)
    os.environ[MULTIPROC_DIR_VARIABLE] = configured
    return configured


def prepare_directory(path: str) -> None:
    """Make `path` ready for a web server that is starting: create it, and delete the files of processes
    that are no longer running (a `bridge web` before this one, a worker that exited). The files of a
    process still running, a `bridge worker` on this host, are kept, so its counts stay in the scrape.
    prometheus_client names each file `<type>_<pid>.db`."""
    directory = ensure_directory(path)
    for file in directory.glob("*.db"):
        pid = file.stem.rpartition("_")[2]
        if not pid.isdigit() or not _running(int(pid)):
            file.unlink(missing_ok=True)


def ensure_directory(path: str) -> Path:
    """The directory `path`, created if missing. Raises ConfigurationError, naming PROMETHEUS_MULTIPROC_DIR,
    when it cannot be (a file on the way, no permission)."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"{MULTIPROC_DIR_VARIABLE} must be a directory this process can create and "
                                 f"write, got {path!r} ({exc.strerror})") from None
    return directory


def _running(pid: int) -> bool:
    """Whether a process `pid` runs (one of another user's included: signalling it is not permitted)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class _Collected:
    """What generate_latest reads: the families of several collectors, in order."""

    def __init__(self, collectors: Iterable):
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


def exposition(*extra_collectors) -> tuple[bytes, str]:
    """The body and Content-Type of a scrape, in Prometheus' text format 0.0.4: the counters of every
    process writing to PROMETHEUS_MULTIPROC_DIR (or of this process alone, without it), then what
    `extra_collectors` yield (objects with a `collect()` returning metric families)."""
    path = multiprocess_dir()
    own = MultiProcessCollector(None, path=path) if path else _registry
    return generate_latest(_Collected([own, *extra_collectors])), CONTENT_TYPE  # type: ignore[arg-type]
