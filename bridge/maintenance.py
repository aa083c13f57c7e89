"""Housekeeping: the periodic sweep, and pruning what is kept only for a while.

The sweep re-discovers due work from the database, so nothing depends on the queue alone.

It runs every SWEEP_INTERVAL_SECONDS in the embedded job thread, and in RQ mode on a thread of every
`bridge worker` (a Redis lock lets one of them run it per interval).
"""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, select, tuple_, update

from bridge.catalog.service import prune_catalog
from bridge.cohorts.jobs import schedule_unprocessed
from bridge.cohorts.models import PROCESSED, CohortBatch
from bridge.cohorts.snapshots import schedule_stale_reports
from bridge.cohorts.tagger import schedule_due_tagging
from bridge.db import utcnow
from bridge.delivery.models import EventReceipt
from bridge.delivery.scheduling import schedule_due
from bridge.delivery.throughput import prune_minutes
from bridge.runtime import Runtime, current

log = logging.getLogger(__name__)


def sweep(runtime: Runtime | None = None) -> dict[str, int]:
    """Queue every piece of due work the database holds; returns how much was queued, by kind."""
    runtime = runtime or current()
    queued = {"drains": schedule_due(runtime), "cohort_batches": schedule_unprocessed(runtime),
              "taggers": schedule_due_tagging(runtime), "cohort_reports": schedule_stale_reports(runtime)}
    if any(queued.values()):
        log.info("sweep queued %s", queued)
    return queued


def prune(runtime: Runtime, older_than_days: int, batch: int = 10_000) -> dict[str, int]:
    """Forget what is kept only for a while, in bounded transactions (`batch` rows each); returns how
    many of each were pruned: `{"event_receipts", "cohort_batch_user_lists", "message_catalog", "delivered_minutes"}`.

    Older than `older_than_days` (ValueError under 7):
    - event receipts: a re-post of an event older than this is accepted again (Amplitude itself
      drops a repeated insert_id only within 7 days, so keep at least that);
    - the user-id lists of applied cohort batches (their counts stay in the sync history).

    Not seen for MESSAGE_CATALOG_RETENTION_DAYS (the setting, not `older_than_days`): the message
    catalog's entries no event named for that long; a late event of such a message is sent without
    its details, and counted as unseen.

    Older than a day, whatever `older_than_days`: the per-minute counts of delivered events (the stats
    read the last hour)."""
    if older_than_days < 7:
        raise ValueError("keep at least 7 days: Amplitude deduplicates insert_ids over 7 days")
    cutoff = utcnow() - timedelta(days=older_than_days)
    receipts = EventReceipt.__table__.c
    batches = CohortBatch.__table__.c
    pruned = {"event_receipts": 0, "cohort_batch_user_lists": 0, "message_catalog": 0, "delivered_minutes": 0}
    with runtime.session() as session:
        while True:
            stale = select(receipts.app_id, receipts.source_event_id).where(receipts.created_at < cutoff).limit(batch)
            done = session.execute(delete(EventReceipt.__table__).where(
                tuple_(receipts.app_id, receipts.source_event_id).in_(stale)))
            session.commit()
            if not done.rowcount:
                break
            pruned["event_receipts"] += done.rowcount
        done = session.execute(update(CohortBatch.__table__).where(
            batches.state == PROCESSED, batches.received_at < cutoff, batches.user_ids != "[]").values(user_ids="[]"))
        pruned["cohort_batch_user_lists"] = done.rowcount or 0
        session.commit()
        unseen_since = utcnow() - timedelta(days=runtime.settings.message_catalog_retention_days)
        pruned["message_catalog"] = prune_catalog(session, unseen_since, batch=batch, checkpoint=session.commit)
        pruned["delivered_minutes"] = prune_minutes(session)
        session.commit()
    log.info("pruned %s", pruned)
    return pruned
