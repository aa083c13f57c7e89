"""Learning message details from the event stream, and completing the events that arrive without them.

`complete` runs inside the intake's transaction (the group commit's), once per app of a group, before
the events are stored for delivery:

1. **Learn.** Every event with a `message.id` and a non-blank `name`, `title`, `contents` or
   `template_id` teaches the catalog. Per detail, the value of the newest event wins, by the event's own
   time (`mapping.epoch_millis`, epoch ms), whatever order events arrive in: each detail keeps the
   time its value came from, and a value replaces it only when its event is newer (at equal times the
   greater value in code-point order, so the outcome never depends on arrival order). A blank value
   never replaces anything.
2. **Complete.** An event with a `message.id` and a blank detail gets that detail from the catalog,
   as it stands once the batch has taught it (so a send and its click in one group work).

Cost: one SELECT of the batch's message ids, and one upsert (`INSERT … ON CONFLICT DO UPDATE`, in
message-id order, so concurrent groups lock rows alike) of the entries the batch makes new or newer.
Nothing is written for what the catalog already knows, so the many events of one campaign write its
entry once per new event time, not once per event; `last_seen_at` (wall clock, for the retention) is
moved at most once per LAST_SEEN_STEP.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import String, and_, any_, bindparam, case, delete, func, or_, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from bridge import mapping
from bridge.catalog.models import DETAILS, ENRICHED, UNSEEN, MessageCatalogEntry, MessageDetailsTotal
from bridge.db import dialect_insert, is_postgresql, utcnow

# `last_seen_at` is moved forward only once it is this old: the retention counts in days (more than 30),
# and a campaign's stream of events then costs no write per group.
LAST_SEEN_STEP = timedelta(days=1)
_CHUNK = 5000  # message ids per SELECT, and rows per upsert: well under either database's parameter limits
_TABLE = MessageCatalogEntry.__table__
_COLUMNS = (_TABLE.c.message_id, *(_TABLE.c[c] for d in DETAILS for c in (d, f"{d}_at")), _TABLE.c.last_seen_at)

Seen = tuple[int, str]  # (event time in epoch ms, value): ordered as the catalog orders values


@dataclass(slots=True)
class Known:
    """A catalog entry as `complete` reads it: each known detail's (event time, value), and when an
    event last named the message."""

    details: dict[str, Seen]
    last_seen_at: datetime


@dataclass
class Completion:
    """What `complete` did: `outcomes[i]` is ENRICHED, UNSEEN or None for `items[i]`; `written` counts
    the catalog entries it created or updated."""

    outcomes: list[str | None]
    written: int = 0

    @property
    def enriched(self) -> int:
        return self.outcomes.count(ENRICHED)

    @property
    def unseen(self) -> int:
        return self.outcomes.count(UNSEEN)


def complete(session: Session, app_id: str, items: Sequence[dict], now: datetime | None = None) -> Completion:
    """Teach the catalog of `app_id` what `items` (validated event-stream items, `intake.schemas`) say of
    their messages, then fill each item's blank `message` details from it, in place.

    An item's outcome is ENRICHED when at least one of its blank details was filled, UNSEEN when it
    carried no detail at all and the catalog knows nothing of its message, else None (an item without
    a message id is left alone). Filled values are cut to Amplitude's 1,024 characters, as the
    mapping cuts them. Runs one SELECT, and at most one upsert, per 5,000 message ids; commits nothing."""
    now = now or utcnow()
    taught: dict[str, dict[str, Seen]] = {}
    for item in items:
        message = item["message"]
        if message.get("id"):
            _learn(taught.setdefault(message["id"], {}), item)
    if not taught:
        return Completion([None] * len(items))
    known = _read(session, app_id, sorted(taught))
    writes = [_row(app_id, message_id, details, now) for message_id, details in sorted(taught.items())
              if _teaches(details, known.get(message_id), now)]
    known.update(_write(session, writes))
    outcomes = [_fill(item["message"], known.get(item["message"].get("id"))) if item["message"].get("id") else None
                for item in items]
    return Completion(outcomes, len(writes))


def fold_delivered(session: Session, app_id: str, outcomes: Iterable[str | None]) -> None:
    """Add to `app_id`'s running totals the outcomes of events leaving the outbox as delivered, in the
    transaction that deletes their rows (the pusher's: one worker at a time per batch, never the
    intake's many writers, so no row becomes a hot spot). Writes nothing when none of them counts."""
    outcomes = list(outcomes)
    enriched, unseen = outcomes.count(ENRICHED), outcomes.count(UNSEEN)
    if not enriched and not unseen:
        return
    totals = MessageDetailsTotal.__table__
    insert = dialect_insert(session, totals).values(app_id=app_id, enriched=enriched, unseen=unseen)
    session.execute(insert.on_conflict_do_update(
        index_elements=["app_id"],
        set_={"enriched": totals.c.enriched + insert.excluded.enriched, "unseen": totals.c.unseen + insert.excluded.unseen}))


def detail_counts(session: Session, app_id: str, in_outbox: Mapping[str, int]) -> dict[str, int]:
    """The stats' `message_details`: `enriched` and `unseen` events in all (`in_outbox`: the counts by
    outcome of the app's rows still in the outbox; plus the totals of those delivered, `fold_delivered`),
    and `catalog_messages`, how many messages the app's catalog holds."""
    totals = MessageDetailsTotal.__table__.c
    delivered = session.execute(select(totals.enriched, totals.unseen).where(totals.app_id == app_id)).first()
    held = session.scalar(select(func.count()).select_from(_TABLE).where(_TABLE.c.app_id == app_id))
    return {"enriched": in_outbox.get(ENRICHED, 0) + (delivered.enriched if delivered else 0),
            "unseen": in_outbox.get(UNSEEN, 0) + (delivered.unseen if delivered else 0),
            "catalog_messages": held}


def prune_catalog(session: Session, older_than: datetime, *, batch: int = 10_000,
                  checkpoint: Callable[[], None] = lambda: None) -> int:
    """Delete the entries of every app that no event named since `older_than` (`last_seen_at`, to a
    LAST_SEEN_STEP), `batch` at a time, calling `checkpoint()` after each (a caller passing its
    `session.commit` keeps each transaction bounded); returns how many were deleted."""
    pruned = 0
    while True:
        stale = select(_TABLE.c.app_id, _TABLE.c.message_id).where(_TABLE.c.last_seen_at < older_than).limit(batch)
        done = session.execute(delete(_TABLE).where(tuple_(_TABLE.c.app_id, _TABLE.c.message_id).in_(stale)))
        checkpoint()
        if not done.rowcount:
            return pruned
        pruned += done.rowcount


def _clean(value: object) -> str | None:
    """A detail as the catalog keeps it: None when blank, else cut to Amplitude's limit."""
    if not isinstance(value, str) or not value or value.isspace():
        return None
    return value[:mapping.AMPLITUDE_STRING_LIMIT]


def _learn(details: dict[str, Seen], item: dict) -> None:
    """Merge into `details` the non-blank details of `item`, each kept when its event is newer."""
    message, at = item["message"], None
    for detail in DETAILS:
        value = _clean(message.get(detail))
        if value is None:
            continue
        if at is None:
            event = item["event"]
            at = mapping.epoch_millis(event.get("timestamp"), event.get("datetime"))
        seen = (at, value)
        if detail not in details or seen > details[detail]:
            details[detail] = seen


def _teaches(details: dict[str, Seen], held: Known | None, now: datetime) -> bool:
    """Whether the batch's `details` of a message must be written: a message the catalog lacks (and the
    batch describes), a detail newer than the one held, or a `last_seen_at` a step old."""
    if held is None:
        return bool(details)
    return (held.last_seen_at <= now - LAST_SEEN_STEP
            or any(detail not in held.details or seen > held.details[detail] for detail, seen in details.items()))


def _row(app_id: str, message_id: str, details: dict[str, Seen], now: datetime) -> dict[str, object]:
    row: dict[str, object] = {"app_id": app_id, "message_id": message_id, "last_seen_at": now}
    for detail in DETAILS:
        at, value = details.get(detail, (None, None))
        row[detail], row[f"{detail}_at"] = value, at
    return row


def _fill(message: dict, held: Known | None) -> str | None:
    """Fill `message`'s blank details from `held`; its outcome (ENRICHED, UNSEEN or None)."""
    blank = [detail for detail in DETAILS if _clean(message.get(detail)) is None]
    if not blank:
        return None
    if held is None:
        return UNSEEN if len(blank) == len(DETAILS) else None
    filled = False
    for detail in blank:
        if detail in held.details:
            message[detail] = held.details[detail][1]
            filled = True
    return ENRICHED if filled else None


def _known(row) -> Known:
    details = {detail: (row[f"{detail}_at"], row[detail]) for detail in DETAILS if row[detail] is not None}
    return Known(details, row["last_seen_at"])


def _read(session: Session, app_id: str, message_ids: list[str]) -> dict[str, Known]:
    """The catalog's entries of these messages, by message id (one statement per _CHUNK ids)."""
    if is_postgresql(session):
        query = select(*_COLUMNS).where(_TABLE.c.app_id == app_id,
                                        _TABLE.c.message_id == any_(bindparam("ids", type_=ARRAY(String))))
    else:
        query = select(*_COLUMNS).where(_TABLE.c.app_id == app_id, _TABLE.c.message_id.in_(bindparam("ids", expanding=True)))
    found: dict[str, Known] = {}
    for start in range(0, len(message_ids), _CHUNK):
        for row in session.execute(query, {"ids": message_ids[start:start + _CHUNK]}).mappings():
            found[row["message_id"]] = _known(row)
    return found


def _write(session: Session, rows: list[dict[str, object]]) -> dict[str, Known]:
    """Upsert `rows` (in message-id order), each detail taken only where it is newer than the one held;
    the entries as they stand afterwards, by message id."""
    if not rows:
        return {}
    insert = dialect_insert(session, _TABLE)
    excluded = insert.excluded
    collation = "C" if is_postgresql(session) else "BINARY"  # code-point order on both, as Python orders str
    updates: dict[str, object] = {}
    for detail in DETAILS:
        held, held_at, new, new_at = _TABLE.c[detail], _TABLE.c[f"{detail}_at"], excluded[detail], excluded[f"{detail}_at"]
        newer = and_(new_at.is_not(None), or_(held_at.is_(None), new_at > held_at,
                                              and_(new_at == held_at, new.collate(collation) > held.collate(collation))))
        updates[detail] = case((newer, new), else_=held)
        updates[f"{detail}_at"] = case((newer, new_at), else_=held_at)
    updates["last_seen_at"] = case((excluded.last_seen_at > _TABLE.c.last_seen_at, excluded.last_seen_at),
                                   else_=_TABLE.c.last_seen_at)
    statement = insert.on_conflict_do_update(index_elements=["app_id", "message_id"], set_=updates).returning(*_COLUMNS)
    written: dict[str, Known] = {}
    for start in range(0, len(rows), _CHUNK):
        for row in session.execute(statement, rows[start:start + _CHUNK]).mappings():
            written[row["message_id"]] = _known(row)
    return written
