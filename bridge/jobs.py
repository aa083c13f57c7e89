"""Background jobs, three ways, one interface.

- `rq`: jobs go to Redis and run in `bridge worker` processes (production, REDIS_URL set).
- `thread`: jobs run on a background thread of this process (the embedded default, no Redis).
- `manual`: jobs wait in a list until `run_pending()` (tests: deterministic, nothing runs behind their back).

Jobs are module-level functions that take ids and an optional `runtime`; they must be idempotent,
because the database, not the queue, is the record of what is left to do. A job is given to a runner
as the function, or as its dotted path (`"bridge.delivery.pusher.drain_app"`, as RQ stores it), so that a
module can queue a job without importing the module that holds it. The runners know nothing of the
Runtime but that they pass it to every job as `runtime`.

Every job goes to one of two queues, named by kind: `delivery` (outbox drains) and `cohorts` (cohort
batches), so that a heavy cohort batch never waits in front of a drain. With RQ they are two Redis
queues, and a worker serving both takes turns between them (delivery first when it starts), so
neither kind can starve the other; the in-process runners keep one order.
"""
from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.settings import Settings

log = logging.getLogger(__name__)
# A job: the function, or its dotted path.
Job = Callable[..., object] | str

DELIVERY, COHORTS = "delivery", "cohorts"
# The queue kinds. A worker serving several starts with the first and then takes turns (RQ's round robin).
QUEUES = (DELIVERY, COHORTS)
# RQ stops a job that runs longer than this; a cohort batch's claim lasts a minute longer (cohorts.jobs).
JOB_TIMEOUT_SECONDS = 600
# The periodic sweep the in-process thread runs between jobs (RQ workers run it on a thread of their own).
SWEEP = "bridge.maintenance.sweep"


def queue_name(settings: Settings, kind: str) -> str:
    """The Redis queue of `kind`: `RQ_QUEUE` itself for delivery (the queue every job used before the
    kinds existed, so jobs waiting there at an upgrade still run), `RQ_QUEUE-cohorts` for cohorts."""
    _check_queue(kind)
    return settings.queue_name if kind == DELIVERY else f"{settings.queue_name}-{kind}"


class JobRunner:
    remote = False  # True when enqueueing is a network call (Redis), worth coalescing

    def enqueue(self, queue: str, func: Job, *args: object) -> None:
        """Run `func(*args)` later, from the queue of kind `queue` (one of QUEUES)."""
        raise NotImplementedError

    def enqueue_once(self, queue: str, key: str, ttl: float, func: Job, *args: object) -> bool:
        """Enqueue unless a job with `key` is already waiting (for at most `ttl` seconds). True if enqueued."""
        raise NotImplementedError

    def forget(self, key: str) -> None:
        """Called by a job as it starts: a later `enqueue_once(key)` schedules a fresh run."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class RQRunner(JobRunner):
    remote = True

    def __init__(self, settings: Settings):
        # Imported here: the embedded mode (no REDIS_URL) never loads RQ or redis-py.
        from redis import Redis
        from rq import Queue

        self.redis = Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.queues = {kind: Queue(queue_name(settings, kind), connection=self.redis) for kind in QUEUES}

    def enqueue(self, queue: str, func: Job, *args: object) -> None:
        self.queues[queue].enqueue(func, *args, job_timeout=JOB_TIMEOUT_SECONDS, result_ttl=0,
                                   failure_ttl=7 * 24 * 3600)

    def enqueue_once(self, queue: str, key: str, ttl: float, func: Job, *args: object) -> bool:
        if not self.redis.set(f"bridge:once:{key}", 1, nx=True, px=max(1, int(ttl * 1000))):
            return False
        self.enqueue(queue, func, *args)
        return True

    def forget(self, key: str) -> None:
        self.redis.delete(f"bridge:once:{key}")

    def close(self) -> None:
        self.redis.close()


class ManualRunner(JobRunner):
    """Jobs of every queue wait in one list, in the order they were enqueued. `runtime` is passed to each."""

    def __init__(self, runtime: object):
        self.runtime = runtime
        self.pending: list[tuple[Job, tuple[object, ...]]] = []
        self.waiting_keys: set[str] = set()

    def enqueue(self, queue: str, func: Job, *args: object) -> None:
        _check_queue(queue)
        self.pending.append((func, args))

    def enqueue_once(self, queue: str, key: str, ttl: float, func: Job, *args: object) -> bool:
        if key in self.waiting_keys:
            return False
        self.waiting_keys.add(key)
        self.enqueue(queue, func, *args)
        return True

    def forget(self, key: str) -> None:
        self.waiting_keys.discard(key)

    def run_pending(self, limit: int = 1000) -> int:
        """Run queued jobs (and the jobs they enqueue) in order; returns how many ran."""
        ran = 0
        while self.pending and ran < limit:
            func, args = self.pending.pop(0)
            resolve(func)(*args, runtime=self.runtime)
            ran += 1
        return ran


class ThreadRunner(JobRunner):
    """One daemon thread runs jobs of every queue in order and, between them, the periodic sweep every
    `sweep_interval` seconds (embedded mode: one web process, light loads). `runtime` is passed to each."""

    def __init__(self, runtime: object, sweep_interval: float):
        self.runtime = runtime
        self.sweep_interval = sweep_interval
        self.jobs: queue.Queue[tuple[Job, tuple[object, ...]] | None] = queue.Queue()
        self.waiting_keys: set[str] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def _ensure_started(self) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="bridge-jobs", daemon=True)
                self.thread.start()

    def enqueue(self, queue: str, func: Job, *args: object) -> None:
        _check_queue(queue)
        self._ensure_started()
        self.jobs.put((func, args))

    def enqueue_once(self, queue: str, key: str, ttl: float, func: Job, *args: object) -> bool:
        with self.lock:
            if key in self.waiting_keys:
                return False
            self.waiting_keys.add(key)
        self.enqueue(queue, func, *args)
        return True

    def forget(self, key: str) -> None:
        with self.lock:
            self.waiting_keys.discard(key)

    def start(self) -> None:
        """Start the thread now (so the periodic sweep runs even before the first job)."""
        self._ensure_started()

    def _loop(self) -> None:
        next_sweep = time.monotonic()
        while not self.stopping.is_set():
            if time.monotonic() >= next_sweep:
                self._run(SWEEP, ())
                next_sweep = time.monotonic() + self.sweep_interval
            try:
                item = self.jobs.get(timeout=max(0.01, next_sweep - time.monotonic()))
            except queue.Empty:
                continue
            if item is None:
                break
            self._run(*item)

    def _run(self, func: Job, args: tuple[object, ...]) -> None:
        try:
            resolve(func)(*args, runtime=self.runtime)
        except Exception:  # noqa: BLE001 - a failed job is logged; the sweep retries its work
            log.exception("job %s%r failed", getattr(func, "__name__", func), args)

    def close(self) -> None:
        self.stopping.set()
        self.jobs.put(None)
        if self.thread is not None:
            self.thread.join(timeout=30)


def _check_queue(queue: str) -> None:
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; the queues are {', '.join(QUEUES)}")


def resolve(job: Job) -> Callable[..., object]:
    """The function of `job`: itself, or the function its dotted path names (ImportError or
    AttributeError when there is none)."""
    if not isinstance(job, str):
        return job
    module, _, name = job.rpartition(".")
    return getattr(importlib.import_module(module), name)


def make_runner(settings: Settings, runtime: object) -> JobRunner:
    """The runner JOB_RUNNER names, passing `runtime` (the process's Runtime) to the jobs it runs in-process."""
    kind = settings.job_runner
    if kind == "rq":
        return RQRunner(settings)
    if kind == "manual":
        return ManualRunner(runtime)
    return ThreadRunner(runtime, settings.sweep_interval_seconds)
