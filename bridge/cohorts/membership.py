"""Applying one batch to a cohort's membership, set-based, in chunks.

Each user's row keeps the state and the `computed_time` of the newest batch that spoke about them,
so batches may be applied in any order and end in the same state: a batch older than what is known
for a user does not undo the newer state.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, String, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from bridge.cohorts.models import CohortMember
from bridge.db import dialect_insert, is_postgresql, utcnow

members = CohortMember.__table__.c
# Users looked up and written per statement: a batch holds at most COHORT_MAX_USERS_PER_BATCH users.
CHUNK_SIZE = 5000


@dataclass
class BatchCounts:
    """What one batch did. `entered - left` is the change in the cohort's size."""

    entered: int = 0  # users this batch put into the cohort
    left: int = 0  # users this batch took out of it
    already_known: int = 0  # users already in the state the batch gives them (including unknown users leaving)
    stale: int = 0  # users with a newer, different state that this older batch left untouched
    duplicate_users: int = 0  # repeats of a user_id within the batch, ignored


def apply_batch(
    session: Session, app_id: str, cohort_id: str, in_cohort: bool, computed_time: int, batch_user_ids: list[str],
    changed: list[tuple[str, bool, int]] | None = None,
) -> BatchCounts:
    """Give every user of the batch the state `in_cohort` as of `computed_time`, unless a newer batch
    already gave them another state. Writes without committing; returns what changed, and appends to
    `changed` each user who entered or left, as (user_id, in_cohort, computed_time).

    The caller must hold the cohort exclusively (see `jobs.process_batch`), so no other batch of the
    same cohort is applied concurrently.
    """
    user_ids = list(dict.fromkeys(batch_user_ids))
    counts = BatchCounts(duplicate_users=len(batch_user_ids) - len(user_ids))
    now = utcnow()
    for start in range(0, len(user_ids), CHUNK_SIZE):
        chunk = user_ids[start:start + CHUNK_SIZE]
        known = {row.user_id: row for row in session.execute(known_members(session, app_id, cohort_id, chunk))}
        writes = []
        for user_id in chunk:
            row = known.get(user_id)
            if (row.in_cohort if row is not None else False) == in_cohort:
                counts.already_known += 1
                if row is not None and row.computed_time >= computed_time:
                    continue  # nothing newer to record
            elif row is not None and row.computed_time > computed_time:
                counts.stale += 1
                continue
            elif in_cohort:
                counts.entered += 1
                if changed is not None:
                    changed.append((user_id, in_cohort, computed_time))
            else:
                counts.left += 1
                if changed is not None:
                    changed.append((user_id, in_cohort, computed_time))
            writes.append({"app_id": app_id, "cohort_id": cohort_id, "user_id": user_id,
                           "in_cohort": in_cohort, "computed_time": computed_time, "updated_at": now})
        if writes:
            _upsert(session, writes)
    return counts


def known_members(session: Session, app_id: str, cohort_id: str, user_ids: list[str]) -> Select:
    """The stored state (user_id, in_cohort, computed_time) of those of `user_ids` the cohort has a row for.

    On PostgreSQL the ids are one array parameter (`user_id = ANY(:user_ids)`): one statement text
    whatever their number, planned as an index lookup per id on the primary key, instead of an `IN`
    list of thousands of parameters to parse and plan. SQLite has no arrays and keeps `IN`."""
    if is_postgresql(session):
        wanted = members.user_id == any_(bindparam("user_ids", user_ids, type_=ARRAY(String)))
    else:
        wanted = members.user_id.in_(user_ids)
    return select(members.user_id, members.in_cohort, members.computed_time).where(
        members.app_id == app_id, members.cohort_id == cohort_id, wanted)


def _upsert(session: Session, rows: list[dict]) -> None:
    stmt = dialect_insert(session, CohortMember.__table__)
    stmt = stmt.on_conflict_do_update(
        index_elements=["app_id", "cohort_id", "user_id"],
        set_={"in_cohort": stmt.excluded.in_cohort, "computed_time": stmt.excluded.computed_time,
              "updated_at": stmt.excluded.updated_at},
    )
    session.execute(stmt, rows)
