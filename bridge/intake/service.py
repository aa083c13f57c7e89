"""Accepting event-stream items, in two steps so that many requests can share one transaction.

1. `prepare` (the request's own thread, no database): validate each item, count the invalid, ignored
   and repeated ones, and map every event whose External User ID the request itself names.
2. `store` (whoever owns the transaction: the intake's group commit, or `ingest`): resolve the other
   events' users through the channel registry, keep the registry current, and write receipts and
   outbox rows; events whose id was accepted before are counted as duplicates. It flushes and never
   commits, and asks for a drain of each app it queued events for, which that transaction's commit
   sends (`drain_after_commit`): the caller commits, then answers.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from marshmallow import ValidationError
from sqlalchemy import insert
from sqlalchemy.orm import Session

from bridge import mapping
from bridge.catalog.models import ENRICHED
from bridge.catalog.service import complete
from bridge.db import dialect_insert, is_postgresql, utcnow
from bridge.delivery.models import PENDING, SKIPPED, UNRESOLVED_USER, EventReceipt, OutboxEvent
from bridge.delivery.scheduling import drain_after_commit
from bridge.intake.schemas import load_item
from bridge.registry.service import Observation, Recorded, observe_events, recorded, users_by_time
from bridge.validation import rejection, unflattened


@dataclass
class IntakeResult:
    """What became of each item of a request. Every item is counted in exactly one bucket."""

    accepted: int = 0  # new events queued for Amplitude
    skipped: int = 0  # new events stored but not sendable (no External User ID), with the reason
    duplicates: int = 0  # events whose event.id was already accepted (or repeated in this request)
    ignored: int = 0  # kinds the bridge does not map, or that this app does not send
    rejected: list[dict] = field(default_factory=list)  # [{"index", "errors": {field: message}}]


@dataclass
class Prepared:
    """One request's valid events, ready for `store`; `result` already counts everything else."""

    app_id: str
    events: list[PreparedEvent]
    result: IntakeResult
    vocabulary: mapping.Vocabulary  # the app's when the request came: its events are named by it

    @property
    def size(self) -> int:
        return len(self.events)


@dataclass(slots=True)
class PreparedEvent:
    item: dict  # the validated item (intake.schemas.ItemSchema)
    observation: Observation  # what it tells the registry
    user_id: str | None  # from the event, or the newest earlier event of its subscription in the request
    amplitude_event: str | None  # the Amplitude event as JSON, once user_id is known


def prepare(app_id: str, vocabulary: mapping.Vocabulary, items: Sequence[object]) -> Prepared:
    """Validate `items` (decoded JSON values) for an app whose `vocabulary` says which kinds it sends
    and under which names; other kinds are counted as ignored. An item may be nested or written with
    dotted keys (`bridge.validation.unflattened`). Invalid items are reported by index with a message
    per field and never block valid ones."""
    result = IntakeResult()
    sent = vocabulary.sent
    valid: dict[str, dict] = {}
    for index, raw in enumerate(items):
        try:
            raw = unflattened(raw) if isinstance(raw, dict) else _not_an_object()
            kind = raw["event"].get("kind") if isinstance(raw.get("event"), dict) else None
            if isinstance(kind, str) and kind and kind not in sent:
                result.ignored += 1
                continue
            item = load_item(raw)
        except ValidationError as exc:
            result.rejected.append(rejection(index, exc))
            continue
        if item["event"]["id"] in valid:
            result.duplicates += 1
            continue
        valid[item["event"]["id"]] = item

    # An event without an External User ID takes the one of the newest earlier event of its subscription
    # in this request, by time (registry.users_by_time); with none, `store` asks the registry.
    items = list(valid.values())
    observations = [_observation(item["event"]) for item in items]
    events = [PreparedEvent(item, seen, user_id, _amplitude_json(item, user_id, vocabulary) if user_id else None)
              for item, seen, user_id in zip(items, observations, users_by_time(observations), strict=True)]
    return Prepared(app_id, events, result, vocabulary)


def store(session: Session, batch: Sequence[Prepared]) -> None:
    """Write the events of every request in `batch` (any apps) and complete each one's result.

    An event id accepted before, or earlier in `batch`, counts as a duplicate of the later request.
    Before they are written, the events' blank message details are completed from the app's message
    catalog, which learns from them first (`bridge.catalog.service.complete`; each outbox row records
    its outcome in `message_details`).
    Flushes, and asks for a drain of every app with new events queued, sent by the commit; the caller
    commits and only then may answer. The results are completed only once every statement succeeded,
    so a caller may retry after a failure."""
    now = utcnow()
    owners: dict[tuple[str, str], Prepared] = {}
    repeated: list[Prepared] = []
    by_app: dict[str, list[tuple[PreparedEvent, mapping.Vocabulary]]] = {}
    for prepared in batch:
        for ev in prepared.events:
            key = (prepared.app_id, ev.item["event"]["id"])
            if key in owners:
                repeated.append(prepared)
                continue
            owners[key] = prepared
            by_app.setdefault(prepared.app_id, []).append((ev, prepared.vocabulary))
    rows: list[dict] = []
    for app_id, events in by_app.items():
        subscriptions = {ev.item["event"]["subscription_id"] for ev, _ in events}
        known = recorded(session, app_id, subscriptions)
        observe_events(session, app_id, [ev.observation for ev, _ in events], known=known)
        # The catalog completes copies: each event's item stays as posted, so a store() tried again
        # after a failure learns only what the platform sent, never what the catalog filled in.
        items = [{**ev.item, "message": dict(ev.item["message"])} for ev, _ in events]
        completion = complete(session, app_id, items, now)
        rows += [_outbox_row(app_id, ev, vocabulary, item, outcome, known, now)
                 for (ev, vocabulary), item, outcome in zip(events, items, completion.outcomes, strict=True)]
    stored = _insert_new(session, rows, now)
    for prepared in repeated:
        prepared.result.duplicates += 1
    for key, prepared in owners.items():
        state = stored.get(key)
        if state is None:
            prepared.result.duplicates += 1
        elif state == PENDING:
            prepared.result.accepted += 1
        else:
            prepared.result.skipped += 1
    for app_id in {prepared.app_id for prepared in batch if prepared.result.accepted}:
        drain_after_commit(session, app_id)


def ingest(session: Session, app_id: str, vocabulary: mapping.Vocabulary, items: Sequence[object]) -> IntakeResult:
    """`prepare` and `store` one request's items in `session` (flushed, not committed)."""
    prepared = prepare(app_id, vocabulary, items)
    if prepared.events:
        store(session, [prepared])
    return prepared.result


def _amplitude_json(item: dict, user_id: str | None, vocabulary: mapping.Vocabulary) -> str:
    return orjson.dumps(mapping.to_amplitude(item, user_id, vocabulary)).decode()


def _observation(event: dict) -> Observation:
    return Observation(event["subscription_id"], event.get("subscription_device_type"),
                       mapping.non_placeholder_id(event.get("external_id")),
                       event["kind"], mapping.epoch_millis(event.get("timestamp"), event.get("datetime")))


def _not_an_object():
    raise ValidationError({"_item": ["Each event must be a JSON object."]})


def _outbox_row(app_id: str, ev: PreparedEvent, vocabulary: mapping.Vocabulary, item: dict, details: str | None,
                known: dict[str, Recorded], now: datetime) -> dict:
    """The outbox row of `ev`, whose item as the catalog completed it is `item` (`details`: what the
    catalog did to it, `catalog.complete`'s outcome). Its Amplitude event is the one `prepare` mapped,
    unless the user was unknown then or the catalog filled a detail in: then it is mapped from `item`,
    under the `vocabulary` the request came with. An event whose user is still unknown is named now
    too, without user_id, which a replay adds."""
    event = item["event"]
    user_id = ev.user_id
    amplitude_event = ev.amplitude_event if user_id and details != ENRICHED else None
    if user_id is None:
        held = known.get(event["subscription_id"])
        user_id = held.external_id if held else None  # the registry's External User ID, if it has one
    if amplitude_event is None:
        amplitude_event = _amplitude_json(item, user_id, vocabulary)
    row = {
        "app_id": app_id,
        "source_event_id": event["id"],
        "kind": event["kind"],
        "insert_id": mapping.insert_id_for(event["id"]),
        "user_id": user_id,
        "device_id": event["subscription_id"],
        "subscription_device_type": event.get("subscription_device_type"),
        "message_details": details,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
    if user_id:
        row.update(state=PENDING, reason=None, last_error=None, amplitude_event=amplitude_event, source_item=None)
    else:
        # Kept with its Amplitude event, named but without user_id: a replay adds the user once the
        # registry knows it, so the event keeps the names of the vocabulary it was accepted under.
        row.update(state=SKIPPED, reason=UNRESOLVED_USER,
                   last_error="no External User ID on the event and none recorded for its subscription",
                   amplitude_event=amplitude_event, source_item=None)
    return row


# PostgreSQL: receipts and outbox rows in one statement (one round trip for a whole group of requests),
# the rows travelling as one JSON parameter. A row whose receipt already exists is dropped by the join,
# so it is never stored twice.
_COLUMNS = ("app_id", "source_event_id", "kind", "state", "reason", "last_error", "insert_id", "user_id",
            "device_id", "subscription_device_type", "amplitude_event", "source_item", "message_details")
_STORE_SQL = f"""
WITH incoming AS (
    SELECT * FROM ROWS FROM (json_to_recordset(%(rows)s::json) AS ({", ".join(f"{c} text" for c in _COLUMNS)}))
        WITH ORDINALITY AS posted({", ".join(_COLUMNS)}, position)
), fresh AS (
    INSERT INTO event_receipts (app_id, source_event_id, created_at)
    SELECT app_id, source_event_id, %(now)s FROM incoming
    ON CONFLICT (app_id, source_event_id) DO NOTHING
    RETURNING app_id, source_event_id
)
INSERT INTO outbox_events ({", ".join(_COLUMNS)}, attempts, next_attempt_at, created_at)
SELECT {", ".join(f"incoming.{c}" for c in _COLUMNS)}, 0, %(now)s, %(now)s
FROM incoming JOIN fresh ON fresh.app_id = incoming.app_id AND fresh.source_event_id = incoming.source_event_id
ORDER BY incoming.position
RETURNING app_id, source_event_id, state
"""


def _insert_new(session: Session, rows: list[dict], now: datetime) -> dict[tuple[str, str], str]:
    """Store the rows whose (app, event id) was never accepted before; returns their states by key.

    The receipt is the idempotency key: concurrent writers of the same event id serialize on it."""
    if not rows:
        return {}
    if is_postgresql(session):
        incoming = orjson.dumps([{c: r[c] for c in _COLUMNS} for r in rows]).decode()
        result = session.connection().exec_driver_sql(_STORE_SQL, {"rows": incoming, "now": now})
        return {(app_id, event_id): state for app_id, event_id, state in result}
    receipts = EventReceipt.__table__
    stmt = (
        dialect_insert(session, receipts)
        .on_conflict_do_nothing(index_elements=["app_id", "source_event_id"])
        .returning(receipts.c.app_id, receipts.c.source_event_id)
    )
    receipt_rows = [{"app_id": r["app_id"], "source_event_id": r["source_event_id"], "created_at": now} for r in rows]
    new = {tuple(row) for row in session.execute(stmt, receipt_rows)}
    fresh = [r for r in rows if (r["app_id"], r["source_event_id"]) in new]
    if fresh:
        # RETURNING makes SQLAlchemy send one multi-row INSERT per 1,000 rows instead of one per row.
        table = OutboxEvent.__table__
        session.execute(insert(table).returning(table.c.id), fresh).all()
    return {(r["app_id"], r["source_event_id"]): r["state"] for r in fresh}
