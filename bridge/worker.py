"""`bridge worker`: an RQ worker for the bridge's queue, plus the periodic sweep on a side thread.

SIGTERM (Heroku's deploys and restarts): the batch in hand is finished, the rest of the drain is
handed back, and the process exits — well within Heroku's 30 s. SIGKILL loses nothing either: leases
expire and the sweep schedules the events again.
"""
from __future__ import annotations

import logging
import threading

from redis import Redis
from rq import Queue, SimpleWorker

from bridge.delivery.pusher import shutdown_requested
from bridge.maintenance import sweep
from bridge.runtime import Runtime

log = logging.getLogger(__name__)


class BridgeWorker(SimpleWorker):
    """Runs jobs in-process (no fork per job: connections and the HTTP pool are reused) and tells
    running drains to stop between batches on a warm shutdown."""

    def request_stop(self, signum, frame):
        shutdown_requested.set()
        super().request_stop(signum, frame)


def _sweep_loop(runtime: Runtime, redis: Redis, stop: threading.Event) -> None:
    interval = runtime.settings.sweep_interval_seconds
    while not stop.is_set():
        try:
            # One sweep per interval across every worker process.
            if redis.set("bridge:sweep-lock", 1, nx=True, px=max(1, int(interval * 900))):
                sweep(runtime)
        except Exception:  # noqa: BLE001 - Redis or the database may be restarting: try next interval
            log.exception("sweep failed; retrying in %.1fs", interval)
        stop.wait(interval)


def run(runtime: Runtime, *, burst: bool = False) -> None:
    """Work the queue until stopped (or, with `burst`, until it is empty)."""
    settings = runtime.settings
    redis = Redis.from_url(settings.redis_url)
    stop = threading.Event()
    if burst:
        sweep(runtime)
    else:
        threading.Thread(target=_sweep_loop, args=(runtime, redis, stop), name="bridge-sweep", daemon=True).start()
    worker = BridgeWorker([Queue(settings.queue_name, connection=redis)], connection=redis)
    try:
        worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False)
    finally:
        stop.set()
