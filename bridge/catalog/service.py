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

Cost, per app and group: at most one statement on PostgreSQL (an upsert, `INSERT … ON CONFLICT DO
UPDATE` in message-id order so that concurrent groups lock rows alike, of the entries the group makes
new or newer, and in the same statement a SELECT of those it only reads), two on SQLite; none when the
process remembers (`bridge.catalog.memo.Memo`, 30 s) every message of the group and the group teaches
nothing new. A value the catalog holds, seen again in a newer event, changes nothing the intake reads:
its newer time is owed (`memo.Owed`) and written with the next statement, at most a second later, so
the thousands of events of one campaign cost its entry about a write per second per web process, and
no row lock that the groups of several processes would queue on. `last_seen_at` (wall clock, for the
retention) is moved at most once per LAST_SEEN_STEP.

Staleness, the price: what another process learned is seen here up to 30 s later, and a newer time
still owed when a process stops is lost (then a different value of an event between the two times,
arriving later, may win).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from sqlalchemy import and_, bindparam, case, delete, event, func, or_, select, tuple_
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session, SessionTransaction

from bridge import mapping
from bridge.catalog.memo import Memo, Owed
from bridge.catalog.models import DETAILS, ENRICHED, UNSEEN, MessageCatalogEntry, MessageDetailsTotal
from bridge.db import dialect_insert, is_postgresql, utcnow

# `last_seen_at` is moved forward only once it is this old: the retention counts in days (more than 30),
# and a campaign's stream of events then costs no write per group.
LAST_SEEN_STEP = timedelta(days=1)
_CHUNK = 5000  # message ids per SELECT, and rows per upsert: well under either database's parameter limits
_TABLE = MessageCatalogEntry.__table__
_COLUMNS = (_TABLE.c.message_id, *(_TABLE.c[c] for d in DETAILS for c in (d, f"{d}_at")), _TABLE.c.last_seen_at)

Seen = tuple[int, str]  # (event time in epoch ms, value): ordered as the catalog orders values
# This process's memory of entries, by (app id, message id): a Known entry, or None for one found absent.
_MEMO = Memo()
_OWED = Owed()  # newer event times of repeated values, written with the next statement (memo.Owed)
_ON_COMMIT = "bridge.catalog:remember"  # Session.info key: the entries a transaction wrote, remembered by its commit
_DEBTS = "bridge.catalog:debts"  # Session.info key: what a transaction writes of what was owed, owed again unless it commits


@dataclass(slots=True)
class Known:
    """A catalog entry as `complete` reads it: each known detail's (event time, value), and when an
    event last named the message."""

    details: dict[str, Seen]
    last_seen_at: datetime


@dataclass
class Completion:
    """What `complete` did: `outcomes[i]` is ENRICHED, UNSEEN or None for `items[i]`; `written` counts
    the catalog rows it upserted (new, newer, owed or a day-old `last_seen_at`)."""

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
    mapping cuts them. Executes at most one statement on PostgreSQL, two on SQLite (per 5,000 message
    ids; one more the day an entry it only read has its `last_seen_at` moved), none when the process
    remembers enough (`bridge.catalog.memo`); commits nothing. What it wrote is remembered once the
    transaction commits."""
    now = now or utcnow()
    taught: dict[str, dict[str, Seen]] = {}
    for item in items:
        message = item["message"]
        if message.get("id"):
            _learn(taught.setdefault(message["id"], {}), item)
    if not taught:
        return Completion([None] * len(items))
    remembered = _MEMO.get((app_id, message_id) for message_id in taught)
    known: dict[str, Known] = {}
    reads: list[str] = []
    writes: dict[str, dict[str, Seen]] = {}
    owed: dict[str, dict[str, Seen]] = {}
    for message_id, details in taught.items():
        if (app_id, message_id) not in remembered:
            # Not remembered: what it describes is upserted at once (the upsert answers what the catalog
            # then holds), what it does not is read.
            if details:
                writes[message_id] = details
            else:
                reads.append(message_id)
            continue
        held = remembered[(app_id, message_id)]
        if held is None:  # remembered as absent
            if details:
                writes[message_id] = details
            continue
        known[message_id] = held
        newer = {detail: seen for detail, seen in details.items()
                 if detail not in held.details or seen > held.details[detail]}
        repeated = {detail: seen for detail, seen in newer.items()
                    if detail in held.details and seen[1] == held.details[detail][1]}
        if len(repeated) < len(newer) or _stale(held, now):
            writes[message_id] = details
        elif repeated:
            owed[message_id] = repeated
    _OWED.add(app_id, owed)
    if reads or writes or _OWED.due(app_id):
        debts, since = _OWED.take(app_id)
        session.info.setdefault(_DEBTS, []).append((app_id, debts, since))  # owed again unless this commits
        for message_id, details in debts.items():
            _learn_seen(writes.setdefault(message_id, {}), details)
    rows = [_row(message_id, writes[message_id]) for message_id in sorted(writes)]
    read, written = _execute(session, app_id, sorted(reads), rows, now)
    stale = [_row(message_id, {}) for message_id, entry in read.items() if _stale(entry, now)]
    if stale:  # read, and its last_seen_at is a step old: moved forward (once a day per message at most)
        written.update(_execute(session, app_id, [], stale, now)[1])
    _MEMO.put({(app_id, message_id): read.get(message_id) for message_id in reads})  # absent ones too
    _remember_on_commit(session, {(app_id, message_id): entry for message_id, entry in written.items()})
    known.update(read)
    known.update(written)
    outcomes = [_fill(item["message"], known.get(item["message"].get("id"))) if item["message"].get("id") else None
                for item in items]
    return Completion(outcomes, len(rows) + len(stale))


def fold_delivered(session: Session, app_id: str, outcomes: Iterable[str | None]) -> None:
    """Add to `app_id`'s running totals the outcomes of events leaving the outbox as delivered, in the
    transaction that deletes their rows: the pusher's, once per Amplitude request, never the intake's
    group commits, so the intake's web processes never queue on the totals' row. Writes nothing when
    none of them counts."""
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


def forget(session: Session, app_id: str, message_ids: Sequence[str]) -> int:
    """Delete `app_id`'s entries of `message_ids` (flushed, not committed); returns how many there were.
    This process forgets them at once: remembered as absent, nothing owed to them, so it neither
    completes an event from them nor writes them back. Another process may still do either until its
    memory of them lapses (MEMO_SECONDS; FLUSH_SECONDS for what it owes)."""
    forgotten = 0
    for start in range(0, len(message_ids), _CHUNK):
        chunk = message_ids[start:start + _CHUNK]
        forgotten += session.execute(delete(_TABLE).where(_TABLE.c.app_id == app_id,
                                                          _TABLE.c.message_id.in_(chunk))).rowcount
    _MEMO.put(dict.fromkeys(((app_id, message_id) for message_id in message_ids), None))
    _OWED.forgive(app_id, message_ids)
    return forgotten


def _remember_on_commit(session: Session, entries: dict[tuple[str, str], Known]) -> None:
    """Remember `entries` once `session`'s transaction commits (a rollback forgets them: until then they
    are no lower bound of what the database holds)."""
    if entries:
        session.info.setdefault(_ON_COMMIT, {}).update(entries)


@event.listens_for(Session, "after_commit")
def _remember(session: Session) -> None:
    if not session.in_nested_transaction():
        _MEMO.put(session.info.pop(_ON_COMMIT, None) or {})
        session.info.pop(_DEBTS, None)  # paid


@event.listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost transaction ended without a commit (else _remember ran)
        session.info.pop(_ON_COMMIT, None)
        for app_id, debts, since in session.info.pop(_DEBTS, []):
            _OWED.add(app_id, debts, since)


def _blank(value: str | None) -> bool:
    """Whether a detail is blank (the intake's schema loads most blanks as None already)."""
    return not value or value.isspace()


def _learn(details: dict[str, Seen], item: dict) -> None:
    """Merge into `details` the non-blank details of `item`, each kept when its event is newer, and cut
    to Amplitude's limit (as the mapping would cut it)."""
    message, at = item["message"], None
    for detail in DETAILS:
        value = message.get(detail)
        if _blank(value):
            continue
        if at is None:
            event = item["event"]
            at = mapping.epoch_millis(event.get("timestamp"), event.get("datetime"))
        seen = (at, value[:mapping.AMPLITUDE_STRING_LIMIT])
        if detail not in details or seen > details[detail]:
            details[detail] = seen


def _learn_seen(details: dict[str, Seen], more: Mapping[str, Seen]) -> None:
    """Merge `more` into `details`, each detail kept when it is newer."""
    for detail, seen in more.items():
        if detail not in details or seen > details[detail]:
            details[detail] = seen


def _stale(entry: Known, now: datetime) -> bool:
    """Whether an entry's `last_seen_at` is a LAST_SEEN_STEP old, to be moved forward."""
    return entry.last_seen_at <= now - LAST_SEEN_STEP


def _row(message_id: str, details: dict[str, Seen]) -> dict[str, object]:
    """An upsert's row: the message id and each detail's (value, event time), None where not taught."""
    row: dict[str, object] = {"message_id": message_id}
    for detail in DETAILS:
        at, value = details.get(detail, (None, None))
        row[detail], row[f"{detail}_at"] = value, at
    return row


def _fill(message: dict, held: Known | None) -> str | None:
    """Fill `message`'s blank details from `held`; its outcome (ENRICHED, UNSEEN or None)."""
    blank = [detail for detail in DETAILS if _blank(message.get(detail))]
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


def _known(row: Sequence) -> Known:
    """A `_COLUMNS` row as a Known entry."""
    details = {detail: (row[2 + 2 * i], row[1 + 2 * i]) for i, detail in enumerate(DETAILS) if row[1 + 2 * i] is not None}
    return Known(details, row[-1])


def _execute(session: Session, app_id: str, reads: list[str], writes: list[dict[str, object]],
             now: datetime) -> tuple[dict[str, Known], dict[str, Known]]:
    """Read the entries of `reads` and upsert `writes` (in message-id order), each detail of a write
    taken only where it is newer than the one held: (the entries read, the entries as written), each by
    message id. A message read but absent is left out."""
    read: dict[str, Known] = {}
    written: dict[str, Known] = {}
    if not reads and not writes:
        return read, written
    if is_postgresql(session):
        rows = session.connection().exec_driver_sql(_UPSERT_AND_READ, {
            "app_id": app_id, "now": now, "rows": orjson.dumps(writes).decode(), "reads": reads})
        writing = {row["message_id"] for row in writes}
        for row in rows:
            (written if row[0] in writing else read)[row[0]] = _known(row)
        return read, written
    for start in range(0, len(reads), _CHUNK):
        rows = session.execute(_SQLITE_READ, {"app_id": app_id, "ids": reads[start:start + _CHUNK]})
        read.update((row[0], _known(row)) for row in rows)
    for start in range(0, len(writes), _CHUNK):
        rows = session.execute(_SQLITE_UPSERT, [{**row, "app_id": app_id, "last_seen_at": now}
                                                for row in writes[start:start + _CHUNK]])
        written.update((row[0], _known(row)) for row in rows)
    return read, written


_T = _TABLE.name


def _newer_sql(detail: str) -> str:
    """PostgreSQL: the incoming (`excluded`) value of `detail` replaces the one held: it is given, and its
    event is newer, or as new and its value greater in code-point order (the "C" collation)."""
    new, held = f"excluded.{detail}", f"{_T}.{detail}"
    return (f'{new}_at IS NOT NULL AND ({held}_at IS NULL OR {new}_at > {held}_at OR '
            f'({new}_at = {held}_at AND {new} COLLATE "C" > {held} COLLATE "C"))')


_DETAIL_COLUMNS = ", ".join(name for detail in DETAILS for name in (detail, f"{detail}_at"))
_RETURNED = f"message_id, {_DETAIL_COLUMNS}, last_seen_at"  # the order of _COLUMNS, as _known reads it
_SETS = ",\n    ".join(
    [f"{name} = CASE WHEN {_newer_sql(detail)} THEN excluded.{name} ELSE {_T}.{name} END"
     for detail in DETAILS for name in (detail, f"{detail}_at")]
    + [f"last_seen_at = GREATEST({_T}.last_seen_at, excluded.last_seen_at)"])
# PostgreSQL: the upsert's rows travel as one JSON parameter, and the entries only read come back from
# the same statement (its SELECT sees the table as it was before the upsert; the two sets of ids differ).
_UPSERT_AND_READ = f"""
WITH written AS (
    INSERT INTO {_T} (app_id, message_id, {_DETAIL_COLUMNS}, last_seen_at)
    SELECT %(app_id)s, message_id, {_DETAIL_COLUMNS}, %(now)s
    FROM json_to_recordset(%(rows)s::json) AS r(message_id text, {", ".join(
        f"{detail} text, {detail}_at bigint" for detail in DETAILS)})
    ORDER BY message_id
    ON CONFLICT (app_id, message_id) DO UPDATE SET
    {_SETS}
    RETURNING {_RETURNED}
)
SELECT {_RETURNED} FROM written
UNION ALL
SELECT {_RETURNED} FROM {_T} WHERE app_id = %(app_id)s AND message_id = ANY(%(reads)s)
"""
# SQLite: two statements, built once (building a statement costs more than SQLite takes to run it).
_SQLITE_READ = select(*_COLUMNS).where(_TABLE.c.app_id == bindparam("app_id"),
                                       _TABLE.c.message_id.in_(bindparam("ids", expanding=True)))


def _sqlite_upsert():
    """The upsert of `_UPSERT_AND_READ`, for SQLite, whose BINARY collation is code-point order."""
    insert = sqlite.insert(_TABLE)
    excluded = insert.excluded
    updates: dict[str, object] = {}
    for detail in DETAILS:
        held, held_at, new, new_at = _TABLE.c[detail], _TABLE.c[f"{detail}_at"], excluded[detail], excluded[f"{detail}_at"]
        newer = and_(new_at.is_not(None), or_(held_at.is_(None), new_at > held_at,
                                              and_(new_at == held_at, new.collate("BINARY") > held.collate("BINARY"))))
        updates[detail] = case((newer, new), else_=held)
        updates[f"{detail}_at"] = case((newer, new_at), else_=held_at)
    updates["last_seen_at"] = case((excluded.last_seen_at > _TABLE.c.last_seen_at, excluded.last_seen_at),
                                   else_=_TABLE.c.last_seen_at)
    return insert.on_conflict_do_update(index_elements=["app_id", "message_id"], set_=updates).returning(*_COLUMNS)


_SQLITE_UPSERT = _sqlite_upsert()
