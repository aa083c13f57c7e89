"""The periodic sweep: re-discovers due work from the database, so nothing depends on the queue alone.

It runs every SWEEP_INTERVAL_SECONDS in the embedded job thread, and in RQ mode on a thread of every
`bridge worker` (a Redis lock lets one of them run it per interval).
"""
from __future__ import annotations

import logging

from bridge.cohorts.jobs import schedule_unprocessed
from bridge.delivery.scheduling import schedule_due
from bridge.runtime import Runtime, current

log = logging.getLogger(__name__)


def sweep(runtime: Runtime | None = None) -> dict[str, int]:
    """Queue every piece of due work the database holds; returns how much was queued, by kind."""
    runtime = runtime or current()
    queued = {"drains": schedule_due(runtime), "cohort_batches": schedule_unprocessed(runtime)}
    if any(queued.values()):
        log.info("sweep queued %s", queued)
    return queued
