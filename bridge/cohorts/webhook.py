"""Receiving a cohort webhook: store the batch as it came, once per message_id, and nothing more.

The membership work happens later in `bridge.cohorts.jobs.process_batch`, so the request stays
within the 1–2 s Amplitude waits before it retries.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bridge.cohorts.jobs import batch_after_commit
from bridge.cohorts.models import RECEIVED, Cohort, CohortBatch, new_public_id
from bridge.db import dialect_insert, utcnow

batches = CohortBatch.__table__.c
cohorts = Cohort.__table__.c


@dataclass(frozen=True)
class StoredBatch:
    batch_id: int  # the surrogate key, for jobs
    public_id: str  # the batch_id API clients see
    duplicate: bool  # the message_id was already stored: this delivery is a retry and a no-op
    state: str
    retries: int


def store_batch(session: Session, app_id: str, body: dict) -> StoredBatch:
    """Store one validated webhook body (`CohortWebhookSchema`, `users` loaded as `BatchUsers`) as a
    `received` batch: its usable user ids as a JSON array in `user_ids`, its unusable entries counted
    per reason with their examples. Make sure its cohort row exists.

    A message_id the app already sent is not stored again: its batch's `retries` goes up by one and
    the stored batch is returned with `duplicate` set.

    Flushes, and asks for the batch's job while the batch waits to be applied (`received`), sent when
    the caller commits (a no-op if its job is already waiting then).
    """
    now = utcnow()
    users = body["users"]
    inserted = session.execute(
        dialect_insert(session, CohortBatch.__table__)
        .values(
            app_id=app_id,
            public_id=new_public_id(),
            cohort_id=body["cohort_id"],
            cohort_name=body["cohort_name"],
            message_id=body["message_id"],
            in_cohort=body["in_cohort"],
            computed_time=body["computed_time"],
            user_count=users.sent,
            user_ids=orjson.dumps(users.user_ids).decode(),
            unusable_users=users.unusable,
            unusable_reasons=users.unusable_reasons,
            unusable_examples=users.unusable_examples,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["app_id", "message_id"])
        .returning(batches.id, batches.public_id, batches.state, batches.retries)
    ).first()
    if inserted is None:
        known = session.execute(
            update(CohortBatch.__table__)
            .where(batches.app_id == app_id, batches.message_id == body["message_id"])
            .values(retries=batches.retries + 1)
            .returning(batches.id, batches.public_id, batches.state, batches.retries)
        ).one()
        return _queued(session, StoredBatch(known.id, known.public_id, True, known.state, known.retries))
    # Insert the cohort only when it is missing: even ON CONFLICT DO NOTHING would wait for the row
    # lock a running batch of this cohort holds (the job keeps the name current).
    known = select(cohorts.cohort_id).where(cohorts.app_id == app_id, cohorts.cohort_id == body["cohort_id"])
    if session.scalar(known) is None:
        session.execute(
            dialect_insert(session, Cohort.__table__)
            .values(app_id=app_id, cohort_id=body["cohort_id"], name=body["cohort_name"],
                    created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=["app_id", "cohort_id"])
        )
    return _queued(session, StoredBatch(inserted.id, inserted.public_id, False, inserted.state, inserted.retries))


def _queued(session: Session, stored: StoredBatch) -> StoredBatch:
    if stored.state == RECEIVED:
        batch_after_commit(session, stored.batch_id)
    return stored
