"""`bridge worker`: an RQ worker for the bridge's queues, plus the periodic sweep on a side thread.

By default a worker serves every queue, so one worker runs a whole deployment; `--queues` dedicates one
to some of them. A worker serving both takes turns (RQ's round-robin dequeue strategy: after a job of
one queue, the other queue comes first): a drain waits behind at most one cohort batch, and a cohort
batch behind at most one drain, however busy the other queue is.

SIGTERM (Heroku's deploys and restarts): the batch in hand is finished, the rest of the drain is
handed back, and the process exits — well within Heroku's 30 s. SIGKILL loses nothing either: on
PostgreSQL a claim is the row locks of the killed connection's transaction, which the server releases
at once; on SQLite a claim is a lease, which expires (DELIVERY_LEASE_SECONDS). The sweep then queues
the events again (bridge.delivery.pusher).
"""
from __future__ import annotations

import logging
import sys
import threading

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker
from rq.worker import DequeueStrategy
from rq.exceptions import StopRequested

from bridge import failures
from bridge.jobs import shutdown_requested
from bridge.jobs import QUEUES, queue_name
from bridge.maintenance import sweep
from bridge.runtime import Runtime
from bridge.settings import Settings

log = logging.getLogger(__name__)

RESTART_PAUSE_SECONDS = 1.0
# An idle RQ worker blocks in BLPOP for `worker_ttl - 15` seconds, then writes its heartbeat (the key
# that lists it as alive, kept `worker_ttl + 60` seconds) and blocks again. 60 s, not RQ's 420: a
# worker killed without a goodbye drops out of RQ's worker registry (and /healthz's count) within
# two minutes.
WORKER_TTL_SECONDS = 60
# The worker's Redis socket must wait longer than that BLPOP. redis-py 8 reads with a 5 s timeout by
# default (earlier versions waited forever); RQ lengthens it only for connections made after the
# worker starts, and the pool's first connection (made by the sweep) kept 5 s: an idle worker met
# "Timeout reading from socket" every few seconds, logged it as an ERROR and backed off for up to a
# minute while events waited.
WORKER_SOCKET_TIMEOUT_SECONDS = WORKER_TTL_SECONDS - 15 + 10
# RQ backs off up to 60 s between attempts while Redis is unreachable; 5 s bounds how long a worker
# sleeps after Redis is back (a restart, a failover).
MAX_CONNECTION_WAIT_SECONDS = 5.0
REDIS_CONNECT_TIMEOUT_SECONDS = 5


class BridgeWorker(SimpleWorker):
    """Runs jobs in-process (no fork per job: connections and the HTTP pool are reused), tells
    running drains to stop between batches on a warm shutdown, and keeps personal data out of RQ's
    failed-job records."""

    max_connection_wait_time = MAX_CONNECTION_WAIT_SECONDS

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", **kwargs):
        """Record a failed job with its traceback's frames and exception types only (`failures.trace`):
        RQ keeps the record in Redis for a year by default, and an exception's message may quote the
        user ids or addresses the job was working on. The worker's log keeps the whole traceback."""
        exc = sys.exc_info()[1]  # RQ calls this while handling the job's exception
        if exc is not None:
            exc_string = failures.trace(exc)
        super().handle_job_failure(job, queue, started_job_registry, exc_string=exc_string, **kwargs)

    def request_stop(self, signum, frame):
        shutdown_requested.set()
        super().request_stop(signum, frame)


def connections(settings: Settings) -> tuple[Redis, Redis]:
    """The worker's two Redis clients, on separate connection pools: RQ's, whose reads wait out a
    BLPOP of `WORKER_TTL_SECONDS - 15` s, and the sweep's, whose commands answer in seconds or fail
    (a 10 s read timeout). Both give up connecting after 5 s."""
    blocking = Redis.from_url(settings.redis_url, socket_timeout=WORKER_SOCKET_TIMEOUT_SECONDS,
                              socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS)
    sweeping = Redis.from_url(settings.redis_url, socket_timeout=10,
                              socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS)
    return blocking, sweeping


def _sweep_loop(runtime: Runtime, redis: Redis, stop: threading.Event) -> None:
    interval = runtime.settings.sweep_interval_seconds
    while not stop.is_set():
        try:
            # One sweep per interval across every worker process.
            if redis.set("bridge:sweep-lock", 1, nx=True, px=max(1, int(interval * 900))):
                sweep(runtime)
        except (RedisConnectionError, RedisTimeoutError) as exc:  # Redis restarting: one line, not a traceback
            log.warning("sweep skipped, Redis unreachable (%s); retrying in %.1fs", exc, interval)
        except Exception:  # noqa: BLE001 - e.g. the database restarting: try next interval
            log.exception("sweep failed; retrying in %.1fs", interval)
        stop.wait(interval)


def run(runtime: Runtime, *, burst: bool = False, queues: tuple[str, ...] = QUEUES) -> None:
    """Work the queues of the kinds `queues` (jobs.QUEUES by default; taking turns, delivery first)
    until stopped, or with `burst` until they are empty.

    Losing Redis does not end the process: RQ's loop quits when Redis vanishes while a job is running,
    so it is started again here (a process manager's restart could be minutes away)."""
    settings = runtime.settings
    names = [queue_name(settings, kind) for kind in QUEUES if kind in queues]
    redis, sweep_redis = connections(settings)
    stop = threading.Event()
    if burst:
        sweep(runtime)
    else:
        threading.Thread(target=_sweep_loop, args=(runtime, sweep_redis, stop), name="bridge-sweep", daemon=True).start()
    try:
        while True:
            try:
                worker = BridgeWorker([Queue(name, connection=redis) for name in names], connection=redis,
                                      worker_ttl=WORKER_TTL_SECONDS)
                worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False,
                            dequeue_strategy=DequeueStrategy.ROUND_ROBIN)
            except (RedisConnectionError, RedisTimeoutError) as exc:  # RQ's start-up or teardown
                if burst:
                    raise
                log.warning("Redis unreachable: %s", exc)
            if burst or shutdown_requested.is_set():
                return
            log.warning("the RQ worker stopped without a stop request (Redis restarting?); "
                        "starting it again in %.0f s", RESTART_PAUSE_SECONDS)
            shutdown_requested.wait(RESTART_PAUSE_SECONDS)
    except StopRequested:  # SIGTERM between two runs of RQ's loop
        return
    finally:
        stop.set()
        redis.close()
        sweep_redis.close()
