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

Work that a transaction creates is queued by that transaction's commit, never before: code that writes
asks with `after_commit_once(session, ...)`, and the session's commit hands the job to the runner (a
rollback, or a session closed without commit, forgets it). So no job is ever queued for rows that were
not committed, and none is forgotten once they are.
"""
from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

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
# Set on SIGTERM by `bridge worker`: long jobs (drains, the tagger) stop between rounds and hand the rest back.
shutdown_requested = threading.Event()
# The periodic sweep the in-process thread runs between jobs (RQ workers run it on a thread of their own).
SWEEP = "bridge.maintenance.sweep"


def queue_name(settings: Settings, kind: str) -> str:
    """The Redis queue of `kind`: `RQ_QUEUE` itself for delivery (the queue every job used before the
    kinds existed, so jobs waiting there at an upgrade still run), `RQ_QUEUE-cohorts` for cohorts."""
    _check_queue(kind)
    return settings.rq_queue if kind == DELIVERY else f"{settings.rq_queue}-{kind}"


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

    def send(self, wishes: Iterable[Wish]) -> None:
        """Enqueue what a commit asked for (`after_commit_once`), now. Never raises: the rows are
        committed, so a job the queue did not take is queued again by the periodic sweep."""
        for wish in wishes:
            try:
                self.enqueue_once(wish.queue, wish.key, wish.ttl, wish.func, *wish.args)
            except Exception as exc:  # noqa: BLE001 - Redis down or restarting
                log.warning("could not queue %s (%s); the sweep will", wish.key, exc)

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


class Wish(NamedTuple):
    """A job a transaction asks for: `func(*args)` on the queue of kind `queue`, unless a job with `key`
    is already waiting (for at most `ttl` seconds), as `JobRunner.enqueue_once`."""

    queue: str
    key: str
    ttl: float
    func: Job
    args: tuple[object, ...]


class Sender(Protocol):
    def send(self, wishes: Iterable[Wish]) -> None: ...


_WISHES = "bridge.jobs:wishes"  # session.info: {key: Wish}, what the session's transaction asks for
_SENDER = "bridge.jobs:sender"  # session.info: the Sender its commits hand them to


def session_info(sender: Sender) -> dict[str, object]:
    """The `info` of a session factory whose sessions' commits hand their jobs to `sender` (a JobRunner,
    or a `BatchedSender`): bridge.db.make_session_factory(engine, session_info(runner))."""
    return {_SENDER: sender}


def after_commit_once(session: Session, queue: str, key: str, ttl: float, func: Job, *args: object) -> None:
    """Enqueue `func(*args)` as `JobRunner.enqueue_once` would, once the transaction of `session` now
    open (or next begun) commits; forgotten if it rolls back or the session closes without committing.
    Asked twice for `key` within one transaction, it is queued once.

    Only for work the database records (the periodic sweep queues it again if the queue is unreachable
    at the commit). Raises RuntimeError for a session that was not made by a Runtime's session factory,
    whose commit could not send it."""
    if _SENDER not in session.info:
        raise RuntimeError("this session cannot queue jobs: make it from Runtime.sessions")
    _check_queue(queue)
    if not session.in_transaction():
        session.begin()  # the wish belongs to a transaction: this one's rollback must forget it
    session.info.setdefault(_WISHES, {})[key] = Wish(queue, key, ttl, func, args)


@event.listens_for(Session, "after_commit")
def _send_on_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint: the jobs wait for the transaction's own commit
    wishes = session.info.pop(_WISHES, None)
    if not wishes:
        return
    try:
        session.info[_SENDER].send(wishes.values())
    except Exception:  # noqa: BLE001 - the commit stands; the sweep finds the work again
        log.exception("queueing the jobs of a commit failed; the sweep will")


@event.listens_for(Session, "after_transaction_end")
def _forget_on_rollback(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost transaction ended: what its commit did not send is forgotten
        session.info.pop(_WISHES, None)


class BatchedSender:
    """Sends the jobs of many commits to a remote runner (Redis) from a thread, at most one round per
    `interval` seconds whatever the number of commits, each key once per round: a stream of thousands of
    small commits costs Redis a few calls per second instead of one per commit, and no commit waits on
    Redis. The jobs wait at most `interval` longer for it. With an in-process runner (a list append) the
    jobs are sent at once. For long-lived processes (web): what is waiting dies with the process, for the
    sweep to find again."""

    def __init__(self, runner: JobRunner, interval: float = 0.05):
        self.runner = runner
        self.interval = interval
        self._wishes: dict[str, Wish] = {}
        self._sending = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, wishes: Iterable[Wish]) -> None:
        if not self.runner.remote:
            self.runner.send(wishes)
            return
        with self._lock:
            self._wishes.update((wish.key, wish) for wish in wishes)
            if self._thread is None or not self._thread.is_alive():  # started lazily: after gunicorn's fork
                self._thread = threading.Thread(target=self._loop, name="bridge-batched-sender", daemon=True)
                self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                wishes, self._wishes = self._wishes, {}
                self._sending = True
            self.runner.send(sorted(wishes.values(), key=lambda wish: wish.key))
            with self._lock:
                self._sending = False
            time.sleep(self.interval)

    def idle(self) -> bool:
        """True when every job handed over has been sent to the queue."""
        with self._lock:
            return not self._wishes and not self._sending


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
