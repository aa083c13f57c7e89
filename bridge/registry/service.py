"""Reading and updating the channel registry.

Two ways in: `upsert_records` merges full or partial records (CSV import, API), `observe_events` keeps
the registry current from the event stream. Neither commits; the caller owns the transaction.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple

import orjson
from sqlalchemy import BigInteger, Boolean, String, and_, bindparam, case, column, func, literal, or_, select, table, text, true, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from bridge.db import UtcDateTime, dialect_insert, is_postgresql, utcnow
from bridge.registry.models import Subscription
from bridge.registry.schemas import CHANNEL_OF_TYPE, resolve_type

# The record's columns an import, an API call or an event may set.
FIELDS = (
    "channel", "type", "identifier", "external_id", "notification_types", "invalid_identifier", "subscribed",
    "device_model", "device_os", "language", "timezone", "country", "last_active_at", "source_created_at",
)
_field_values = itemgetter(*FIELDS)
_NEW_RECORD = dict.fromkeys(FIELDS) | {"invalid_identifier": False}  # subscribed None: unknown
# `subscribed` = UNKNOWN in a record: its source cannot tell the state, which becomes unknown whatever
# the registry held (None means "not given" instead).
UNKNOWN = "unknown"
_ID_NAMESPACE = uuid.UUID("5d0c1a52-7f3e-4e0b-9c57-2b1f6f0e8a41")
_QUERY_CHUNK = 5000  # keys per IN (...) query: well under SQLite's and PostgreSQL's parameter limits
_TABLE = Subscription.__table__
_INCOMING = table("registry_incoming", column("subscription_id"), *(column(name) for name in FIELDS))


@dataclass
class UpsertCounts:
    """What an upsert did to each record it was given: every record counts in exactly one bucket of
    added, updated and unchanged. `unknown_state` counts, across the buckets, the records left with an
    unknown subscription state; it is not part of `as_dict` nor of the API's answer (UpsertResultSchema)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    unknown_state: int = 0

    def __iadd__(self, other: UpsertCounts) -> UpsertCounts:
        self.added += other.added
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.unknown_state += other.unknown_state
        return self

    def as_dict(self) -> dict[str, object]:
        return {"added": self.added, "updated": self.updated, "unchanged": self.unchanged}


class Observation(NamedTuple):
    """What one event-stream event says about its subscription."""

    subscription_id: str
    device_type: str | None  # the event's subscription_device_type ("iOS", "Email", ...)
    external_id: str | None  # already cleaned of placeholders (mapping.non_placeholder_id)
    kind: str  # e.g. message.push.received
    at: float  # event time in epoch milliseconds: orders events, and dates the user it names


def users_by_time(observations: Sequence[Observation]) -> list[str | None]:
    """The user each event is attributed to, in the order given: its own External User ID, else that of
    the newest event of the same subscription at or before its time (by event time, not array order;
    at equal times the one sent first counts as earlier), else None (the caller then asks the registry).

    The one rule for a shared device: the intake attributes events by it, `observe_events` records the
    newest user by it, and a replay resolves skipped events through what it recorded.
    """
    users: list[str | None] = [None] * len(observations)
    current: dict[str, str] = {}
    for position in sorted(range(len(observations)), key=lambda i: observations[i].at):
        seen = observations[position]
        if seen.external_id:
            current[seen.subscription_id] = seen.external_id
        users[position] = current.get(seen.subscription_id)
    return users


def is_subscribed(notification_types: int | None, invalid_identifier: bool) -> bool | None:
    """OneSignal's rule: unsubscribed when the identifier is invalid or notification_types is 0 or
    negative, subscribed when it is positive; None (unknown) when notification_types is not known."""
    if invalid_identifier:
        return False
    return None if notification_types is None else notification_types > 0


class Recorded(NamedTuple):
    """What the registry holds of one subscription that an event may change."""

    external_id: str | None
    subscribed: bool | None  # None: unknown


def external_ids_for(session: Session, app_id: str, subscription_ids: Iterable[str]) -> dict[str, str]:
    """External User IDs the registry records for these subscriptions (those without one are left out)."""
    return {sub: known.external_id for sub, known in recorded(session, app_id, subscription_ids).items()
            if known.external_id}


def recorded(session: Session, app_id: str, subscription_ids: Iterable[str]) -> dict[str, Recorded]:
    """subscription id → its recorded External User ID and subscription state, for those the registry holds."""
    return {sub: Recorded(fields["external_id"], fields["subscribed"])
            for sub, fields in _stored(session, app_id, set(subscription_ids)).items()}


def find_record(session: Session, app_id: str, subscription_id: str) -> Subscription | None:
    """The app's record for `subscription_id`, if there is one."""
    return session.scalars(
        select(Subscription).where(Subscription.app_id == app_id, Subscription.subscription_id == subscription_id)
    ).first()


def upsert_records(session: Session, app_id: str, records: list[dict]) -> UpsertCounts:
    """Merge `records` (dicts of FIELDS, plus `subscription_id`) into the app's registry, in order.

    A value that is None or left out keeps what the registry holds. `subscribed`, when None, is
    recomputed from notification_types and invalid_identifier if the record gives either of them
    (`is_subscribed`); UNKNOWN makes it unknown. A new record that says nothing of its state has an
    unknown one (`subscribed` None), never a guessed false.
    A record without a subscription_id is matched to the app's record with the same channel and
    identifier, or else gets an id derived from them, so importing it again finds it again.
    A new record needs `channel` and `type`.
    """
    records = _with_subscription_ids(session, app_id, records)
    current = _stored(session, app_id, {r["subscription_id"] for r in records})
    counts = UpsertCounts()
    changed: dict[str, dict] = {}
    for record in records:
        key = record["subscription_id"]
        old = current.get(key)
        new = _merge(old, record)
        if new["subscribed"] is None:
            counts.unknown_state += 1
        if old is None:
            counts.added += 1
        elif new == old:
            counts.unchanged += 1
            continue
        else:
            counts.updated += 1
        current[key] = changed[key] = new
    _write(session, app_id, changed)
    return counts


def observe_events(session: Session, app_id: str, observations: Iterable[Observation],
                   known: dict[str, Recorded] | None = None) -> None:
    """Keep the registry current from a request's events, in at most two statements.

    Per subscription the newest event that names an External User ID (`users_by_time`'s rule) replaces
    the recorded one, unless the recorded one was named by a newer event (`external_id_at`, so a late
    retry cannot undo it); an event never blanks it.
    A subscription the registry lacks is recorded when its device type is known, with
    `subscribed` true if an event proves delivery to it (a push received or clicked, an e-mail
    opened or clicked, ...: see `proves_delivery`), else unknown (None): an in-app message proves the
    app is used, not that push is allowed. Known records keep their channel and type; their
    `subscribed` changes only from unknown to true, when an event proves delivery (an import without
    notification_types leaves it unknown, and the stream then tells).

    `known` is what `recorded` answers for (at least) these subscriptions, when the caller has it.
    """
    latest: dict[str, Observation] = {}
    external: dict[str, tuple[str, float]] = {}  # the newest External User ID, and its event's time
    delivered: set[str] = set()
    for seen in sorted(observations, key=lambda o: o.at):
        latest[seen.subscription_id] = seen
        if seen.external_id:
            external[seen.subscription_id] = (seen.external_id, seen.at)
        if proves_delivery(seen.kind):
            delivered.add(seen.subscription_id)
    now = utcnow()
    if known is None:
        known = recorded(session, app_id, latest)
    rows, updates = [], []
    for key in sorted(latest):
        held = known.get(key)
        proof = key in delivered or None
        ext, ext_at = external.get(key, (None, None))
        if held is not None and (ext is None or ext == held.external_id) and not (proof and held.subscribed is None):
            continue  # nothing new: most events of a steady stream end here, with no write
        ext_at = None if ext_at is None else int(ext_at)
        record_type = resolve_type(latest[key].device_type)
        if record_type is not None:
            rows.append({"app_id": app_id, "subscription_id": key, "channel": CHANNEL_OF_TYPE[record_type],
                         "type": record_type, "external_id": ext, "external_id_at": ext_at, "subscribed": proof,
                         "invalid_identifier": False})
        elif held is not None:
            updates.append({"sub": key, "ext": ext, "ext_at": ext_at, "proof": proof, "now": now})
    if rows and is_postgresql(session):
        # One statement whose rows travel as one JSON parameter: far less Python per row than a
        # multi-row INSERT's parameters.
        session.connection().exec_driver_sql(_OBSERVED_SQL, {"rows": orjson.dumps(rows).decode(), "now": now})
    elif rows:
        insert = dialect_insert(session, _TABLE)
        excluded = insert.excluded
        newer = _names_newer_user(excluded.external_id, excluded.external_id_at)
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["app_id", "subscription_id"],
                set_={"external_id": case((newer, excluded.external_id), else_=_TABLE.c.external_id),
                      "external_id_at": case((newer, excluded.external_id_at), else_=_TABLE.c.external_id_at),
                      "subscribed": func.coalesce(_TABLE.c.subscribed, excluded.subscribed),
                      "updated_at": excluded.updated_at},
                where=or_(newer, and_(_TABLE.c.subscribed.is_(None), excluded.subscribed.is_not(None))),
            ).returning(_TABLE.c.id),  # RETURNING: one multi-row statement instead of one per row
            [{**row, "created_at": now, "updated_at": now} for row in rows],
        ).all()
    if updates:  # known records of a device type the registry cannot name: only the two facts change
        ext, ext_at = bindparam("ext", type_=String), bindparam("ext_at", type_=BigInteger)
        proof = bindparam("proof", type_=Boolean)
        newer = _names_newer_user(ext, ext_at)
        session.execute(
            update(_TABLE)
            .where(_TABLE.c.app_id == app_id, _TABLE.c.subscription_id == bindparam("sub"),
                   or_(newer, and_(_TABLE.c.subscribed.is_(None), proof.is_not(None))))
            .values(external_id=case((newer, ext), else_=_TABLE.c.external_id),
                    external_id_at=case((newer, ext_at), else_=_TABLE.c.external_id_at),
                    subscribed=func.coalesce(_TABLE.c.subscribed, proof), updated_at=bindparam("now")),
            updates,
        )


def _names_newer_user(ext, ext_at):
    """SQL: the incoming External User ID `ext` (of an event at `ext_at`, epoch ms) replaces the stored
    one: it is given, differs, and its event is no older than the one that named the stored user."""
    return and_(ext.is_not(None), _TABLE.c.external_id.is_distinct_from(ext),
                or_(_TABLE.c.external_id_at.is_(None), ext_at >= _TABLE.c.external_id_at))


_T = _TABLE.name
_NEWER = (f"excluded.external_id IS NOT NULL AND {_T}.external_id IS DISTINCT FROM excluded.external_id "
          f"AND ({_T}.external_id_at IS NULL OR excluded.external_id_at >= {_T}.external_id_at)")
_OBSERVED_SQL = f"""
INSERT INTO {_T} (app_id, subscription_id, channel, type, external_id, external_id_at, subscribed, invalid_identifier,
                  created_at, updated_at)
SELECT app_id, subscription_id, channel, type, external_id, external_id_at, subscribed, invalid_identifier,
       %(now)s, %(now)s
FROM json_to_recordset(%(rows)s::json) AS r(app_id text, subscription_id text, channel text, type text,
                                             external_id text, external_id_at bigint, subscribed boolean,
                                             invalid_identifier boolean)
ORDER BY subscription_id
ON CONFLICT (app_id, subscription_id) DO UPDATE
SET external_id = CASE WHEN {_NEWER} THEN excluded.external_id ELSE {_T}.external_id END,
    external_id_at = CASE WHEN {_NEWER} THEN excluded.external_id_at ELSE {_T}.external_id_at END,
    subscribed = COALESCE({_T}.subscribed, excluded.subscribed), updated_at = excluded.updated_at
WHERE ({_NEWER}) OR ({_T}.subscribed IS NULL AND excluded.subscribed IS NOT NULL)
"""


def proves_delivery(kind: str) -> bool:
    """Whether an event of `kind` shows a message reached the subscription: received, displayed,
    opened or clicked, on the push, e-mail or SMS channel."""
    _, channel, action = (kind.split(".") + ["", ""])[:3]
    return channel in ("push", "email", "sms") and action in ("received", "displayed", "opened", "clicked")


def _merge(old: dict | None, record: dict) -> dict:
    merged = dict(_NEW_RECORD if old is None else old)
    for name in FIELDS:
        value = record.get(name)
        if value is not None:
            merged[name] = value
    subscribed = record.get("subscribed")
    if subscribed is None and (
        record.get("notification_types") is not None or record.get("invalid_identifier") is not None
    ):
        merged["subscribed"] = is_subscribed(merged["notification_types"], merged["invalid_identifier"])
    elif subscribed == UNKNOWN:
        merged["subscribed"] = None
    return merged


def _with_subscription_ids(session: Session, app_id: str, records: list[dict]) -> list[dict]:
    """`records`, those without a subscription_id given the id of their (channel, identifier)."""
    anonymous = {(r["channel"], r["identifier"]) for r in records if not r.get("subscription_id")}
    if not anonymous:
        return records
    known: dict[tuple[str, str], str] = {}
    channels = sorted({channel for channel, _ in anonymous})
    for chunk in _chunks(sorted({identifier for _, identifier in anonymous})):
        rows = session.execute(
            select(Subscription.channel, Subscription.identifier, Subscription.subscription_id)
            .where(Subscription.app_id == app_id, Subscription.channel.in_(channels), Subscription.identifier.in_(chunk))
            .order_by(Subscription.id)
        )
        for channel, identifier, subscription_id in rows:
            known.setdefault((channel, identifier), subscription_id)
    return [
        record if record.get("subscription_id") else {
            **record,
            "subscription_id": known.get((record["channel"], record["identifier"]))
            or str(uuid.uuid5(_ID_NAMESPACE, f"{app_id}:{record['channel']}:{record['identifier']}")),
        }
        for record in records
    ]


def _stored(session: Session, app_id: str, subscription_ids: set[str]) -> dict[str, dict]:
    """The stored FIELDS of these subscriptions, by subscription id."""
    found: dict[str, dict] = {}
    query = _PROBE if is_postgresql(session) else _IN_QUERY
    for chunk in _chunks(sorted(subscription_ids)):
        for row in session.execute(query, {"app_id": app_id, "keys": chunk}):
            found[row[0]] = dict(zip(FIELDS, row[1:], strict=True))
    return found


def _probe_query():
    """PostgreSQL: one unique-index probe per key, whatever the planner believes about the table: after
    a bulk load its statistics are stale, and `IN (...)` then turns into a scan of the whole app.
    Built once: building it per call cost more than running it."""
    keys = func.unnest(bindparam("keys", type_=ARRAY(String))).table_valued("key").render_derived()
    probe = select(_TABLE.c.subscription_id, *(_TABLE.c[name] for name in FIELDS)).where(
        _TABLE.c.app_id == bindparam("app_id"), _TABLE.c.subscription_id == keys.c.key).limit(1).lateral()
    return select(probe).select_from(keys).join(probe, true())


_PROBE = _probe_query()
_IN_QUERY = select(_TABLE.c.subscription_id, *(_TABLE.c[name] for name in FIELDS)).where(
    _TABLE.c.app_id == bindparam("app_id"), _TABLE.c.subscription_id.in_(bindparam("keys", expanding=True)))


def _write(session: Session, app_id: str, records: dict[str, dict]) -> None:
    """Insert or overwrite these full records, in key order (so concurrent writers lock rows alike).
    PostgreSQL receives them by COPY into a temporary table and merges from there: several times
    faster than a multi-row INSERT."""
    if not records:
        return
    now = utcnow()
    keys = sorted(records)
    insert = dialect_insert(session, _TABLE)
    if is_postgresql(session):
        _copy_incoming(session, ((key, *_field_values(records[key])) for key in keys))
        stamp = bindparam("now", now, UtcDateTime)
        statement = insert.from_select(
            ["app_id", "subscription_id", *FIELDS, "created_at", "updated_at"],
            select(literal(app_id), *_INCOMING.c, stamp.label("created_at"), stamp.label("updated_at")),
        )
        parameters = None
    else:
        statement = insert
        parameters = [{"app_id": app_id, "subscription_id": key, **records[key], "created_at": now, "updated_at": now}
                      for key in keys]
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["app_id", "subscription_id"],
            set_={name: insert.excluded[name] for name in (*FIELDS, "updated_at")},
        ),
        parameters,
    )
    if is_postgresql(session):
        session.execute(text(f"TRUNCATE {_INCOMING.name}"))


def _copy_incoming(session: Session, rows: Iterable[tuple]) -> None:
    """COPY `rows` (subscription_id, then FIELDS) into this connection's temporary incoming table."""
    cursor = session.connection().connection.driver_connection.cursor()
    with cursor:
        cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {_INCOMING.name} AS "
                       f"SELECT subscription_id, {', '.join(FIELDS)} FROM {_TABLE.name} WITH NO DATA")
        with cursor.copy(f"COPY {_INCOMING.name} (subscription_id, {', '.join(FIELDS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def _chunks(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), _QUERY_CHUNK):
        yield values[start : start + _QUERY_CHUNK]
