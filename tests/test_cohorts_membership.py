"""Applying batches to membership: enter, exit, stale batches, repeats, and the per-batch counts."""
from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from bridge.cohorts import membership
from bridge.cohorts.jobs import process_batch
from bridge.cohorts.models import Cohort, CohortBatch, CohortMember
from bridge.cohorts.schemas import BatchUsers
from bridge.cohorts.webhook import store_batch

COHORT = "7b2k9xq"


def store(runtime, tenant, message_id: str, in_cohort: bool, computed_time: int, user_ids: list[str],
          name: str = "Churn risk") -> int:
    body = {"cohort_id": COHORT, "cohort_name": name, "message_id": message_id, "in_cohort": in_cohort,
            "computed_time": computed_time, "users": BatchUsers(user_ids)}
    with runtime.session() as session:
        batch_id = store_batch(session, tenant.app_id, body).batch_id
        session.commit()
    return batch_id


def apply(runtime, tenant, message_id, in_cohort, computed_time, user_ids) -> CohortBatch:
    """Store and apply one batch; returns the batch as recorded."""
    batch_id = store(runtime, tenant, message_id, in_cohort, computed_time, user_ids)
    process_batch(batch_id, runtime=runtime)
    with runtime.session() as session:
        return session.get(CohortBatch, batch_id)


def state(runtime) -> dict[str, tuple[bool, int]]:
    with runtime.session() as session:
        return {m.user_id: (m.in_cohort, m.computed_time) for m in session.scalars(select(CohortMember))}


def counts(batch: CohortBatch) -> dict[str, int]:
    return {k: getattr(batch, k) for k in ("entered", "left", "already_known", "stale", "duplicate_users")}


def test_enter_then_exit(runtime, tenant):
    entered = apply(runtime, tenant, "m1", True, 100, ["a", "b", "c"])
    left = apply(runtime, tenant, "m2", False, 200, ["b"])

    assert counts(entered) == {"entered": 3, "left": 0, "already_known": 0, "stale": 0, "duplicate_users": 0}
    assert counts(left) == {"entered": 0, "left": 1, "already_known": 0, "stale": 0, "duplicate_users": 0}
    assert state(runtime) == {"a": (True, 100), "b": (False, 200), "c": (True, 100)}


def test_an_older_batch_does_not_undo_a_newer_state(runtime, tenant):
    apply(runtime, tenant, "new-exit", False, 200, ["a"])
    apply(runtime, tenant, "new-enter", True, 200, ["b"])

    old = apply(runtime, tenant, "old-enter", True, 100, ["a", "b", "c"])

    assert counts(old) == {"entered": 1, "left": 0, "already_known": 1, "stale": 1, "duplicate_users": 0}
    assert state(runtime) == {"a": (False, 200), "b": (True, 200), "c": (True, 100)}


def test_a_user_leaving_before_the_bridge_knew_them_is_recorded_so_a_late_entry_is_stale(runtime, tenant):
    exit_first = apply(runtime, tenant, "exit", False, 200, ["a"])
    late_entry = apply(runtime, tenant, "enter", True, 100, ["a"])

    assert counts(exit_first)["already_known"] == 1 and exit_first.left == 0  # never was in: size unchanged
    assert late_entry.stale == 1
    assert state(runtime) == {"a": (False, 200)}


def test_a_newer_batch_repeating_a_state_records_its_time(runtime, tenant):
    apply(runtime, tenant, "enter-1", True, 100, ["a"])
    again = apply(runtime, tenant, "enter-3", True, 300, ["a"])
    between = apply(runtime, tenant, "exit-2", False, 200, ["a"])

    assert again.already_known == 1
    assert between.stale == 1
    assert state(runtime) == {"a": (True, 300)}


BATCHES = [
    ("full-sync", True, 100, ["a", "b", "c", "d"]),
    ("exit-1", False, 200, ["a", "b"]),
    ("enter-1", True, 200, ["e"]),
    ("re-enter", True, 300, ["a"]),
    ("exit-2", False, 300, ["e", "c"]),
]


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(BATCHES))))[::17])
def test_any_processing_order_ends_in_the_same_state(runtime, tenant, order):
    ids = [store(runtime, tenant, *BATCHES[i]) for i in order]
    for batch_id in ids:
        process_batch(batch_id, runtime=runtime)

    assert state(runtime) == {"a": (True, 300), "b": (False, 200), "c": (False, 300), "d": (True, 100),
                              "e": (False, 300)}


def test_the_cohort_size_is_the_sum_of_entered_minus_left(runtime, tenant):
    for batch in BATCHES:
        apply(runtime, tenant, *batch)
    with runtime.session() as session:
        recorded = list(session.scalars(select(CohortBatch)))
    in_cohort = sum(1 for inside, _ in state(runtime).values() if inside)
    assert in_cohort == sum(b.entered - b.left for b in recorded) == 2


def test_repeated_users_within_a_batch_count_once(runtime, tenant):
    batch = apply(runtime, tenant, "m1", True, 100, ["a", "b", "a", "a", "c"])

    assert counts(batch) == {"entered": 3, "left": 0, "already_known": 0, "stale": 0, "duplicate_users": 2}
    assert batch.user_count == 5
    assert set(state(runtime)) == {"a", "b", "c"}


def test_large_batches_are_applied_in_chunks(runtime, tenant, monkeypatch):
    monkeypatch.setattr(membership, "CHUNK_SIZE", 3)
    apply(runtime, tenant, "m1", True, 100, [f"u{i}" for i in range(7)])

    mixed = apply(runtime, tenant, "m2", False, 200, [f"u{i}" for i in range(4, 11)])

    assert counts(mixed) == {"entered": 0, "left": 3, "already_known": 4, "stale": 0, "duplicate_users": 0}
    assert sorted(u for u, (inside, _) in state(runtime).items() if inside) == ["u0", "u1", "u2", "u3"]


def test_processing_twice_is_harmless(runtime, tenant):
    batch_id = store(runtime, tenant, "m1", True, 100, ["a", "b"])

    assert process_batch(batch_id, runtime=runtime).entered == 2
    assert process_batch(batch_id, runtime=runtime) is None
    assert process_batch(999_999, runtime=runtime) is None
    with runtime.session() as session:
        assert session.get(CohortBatch, batch_id).entered == 2


def test_applying_a_batch_stamps_the_cohort_and_the_batch(runtime, tenant):
    with freeze_time("2026-11-20 10:00:00"):
        batch_id = store(runtime, tenant, "m1", True, 100, ["a"])
    with freeze_time("2026-11-20 10:00:03"):
        store(runtime, tenant, "m2", True, 200, ["b"], name="Churn risk (renamed)")
        process_batch(batch_id, runtime=runtime)

    with runtime.session() as session:
        cohort = session.get(Cohort, (tenant.app_id, COHORT))
        batch = session.get(CohortBatch, batch_id)
    applied_at = datetime(2026, 11, 20, 10, 0, 3, tzinfo=UTC)
    assert (cohort.created_at, cohort.updated_at) == (datetime(2026, 11, 20, 10, 0, tzinfo=UTC), applied_at)
    assert batch.processed_at == applied_at
    assert cohort.name == "Churn risk"  # the name of the batch applied; m2 is not applied yet
