"""Accepting event-stream items: validate each, map it, and write it to the outbox in one transaction."""
from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from marshmallow import ValidationError
from sqlalchemy import insert
from sqlalchemy.orm import Session

from bridge import mapping
from bridge.apps.models import App
from bridge.db import dialect_insert, utcnow
from bridge.delivery.models import PENDING, SKIPPED, EventReceipt, OutboxEvent
from bridge.intake.schemas import ITEM_SCHEMA, flatten_errors
from bridge.registry.service import Observation, external_ids_for, observe_events

UNRESOLVED_USER = "unresolved_user"


@dataclass
class IntakeResult:
    """What became of each item of a request. Every item is counted in exactly one bucket."""

    accepted: int = 0  # new events queued for Amplitude
    skipped: int = 0  # new events stored but not sendable (no External User ID), with the reason
    duplicates: int = 0  # events whose event.id was already accepted (or repeated in this request)
    ignored: int = 0  # kinds the bridge does not map, or that this app does not send
    rejected: list[dict] = field(default_factory=list)  # [{"index", "errors": {field: message}}]

    def as_dict(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "ignored": self.ignored,
            "rejected": self.rejected,
        }


def ingest(session: Session, app: App, items: list[object]) -> IntakeResult:
    """Validate, map and store `items` for `app`, then commit. Invalid items are reported and never
    block valid ones; an event id seen before is a counted no-op."""
    result = IntakeResult()
    enabled = set(app.enabled_kinds) if app.enabled_kinds else mapping.MAPPED_KINDS
    valid: dict[str, dict] = {}
    for index, raw in enumerate(items):
        kind = raw.get("event", {}).get("kind") if isinstance(raw, dict) and isinstance(raw.get("event"), dict) else None
        if isinstance(kind, str) and kind and kind not in enabled:
            result.ignored += 1
            continue
        try:
            item = ITEM_SCHEMA.load(raw) if isinstance(raw, dict) else _not_an_object()
        except ValidationError as exc:
            errors = exc.messages if isinstance(exc.messages, dict) else {"_item": exc.messages}
            result.rejected.append({"index": index, "errors": flatten_errors(errors)})
            continue
        if item["event"]["id"] in valid:
            result.duplicates += 1
            continue
        valid[item["event"]["id"]] = item

    if valid:
        rows = _outbox_rows(session, app, list(valid.values()))
        observe_events(session, app.id, [_observation(item["event"]) for item in valid.values()])
        stored = _insert_new(session, app.id, rows)
        result.accepted = sum(1 for state in stored if state == PENDING)
        result.skipped = len(stored) - result.accepted
        result.duplicates += len(rows) - len(stored)
    session.commit()
    return result


def _observation(event: dict) -> Observation:
    return Observation(event["subscription_id"], event.get("subscription_device_type"), mapping.real_id(event.get("external_id")),
                       event["kind"], mapping.epoch_millis(event.get("timestamp"), event.get("datetime")))


def _not_an_object():
    raise ValidationError({"_item": ["Each event must be a JSON object."]})


def _outbox_rows(session: Session, app: App, items: list[dict]) -> list[dict]:
    known = _external_ids(session, app.id, items)
    now = utcnow()
    rows = []
    for item in items:
        event = item["event"]
        user_id = mapping.real_id(event.get("external_id")) or known.get(event["subscription_id"])
        row = {
            "app_id": app.id,
            "source_event_id": event["id"],
            "kind": event["kind"],
            "insert_id": mapping.insert_id_for(event["id"]),
            "user_id": user_id,
            "device_id": event["subscription_id"],
            "subscription_device_type": event.get("subscription_device_type"),
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        if user_id:
            row.update(state=PENDING, reason=None, last_error=None,
                       payload=orjson.dumps(mapping.to_amplitude(item, user_id)).decode())
        else:
            # Kept (with the source event) so a replay can send it once the registry knows the user.
            row.update(state=SKIPPED, reason=UNRESOLVED_USER,
                       last_error=f"no External User ID on the event and none recorded for subscription {event['subscription_id']}",
                       payload=orjson.dumps(item, default=str).decode())
        rows.append(row)
    return rows


def _external_ids(session: Session, app_id: str, items: list[dict]) -> dict[str, str]:
    """subscription id → External User ID, from this request's own events first, then the registry."""
    from_request: dict[str, str] = {}
    missing: set[str] = set()
    for item in items:
        event = item["event"]
        ext = mapping.real_id(event.get("external_id"))
        if ext:
            from_request[event["subscription_id"]] = ext
        else:
            missing.add(event["subscription_id"])
    missing -= from_request.keys()
    if missing:
        from_request.update(external_ids_for(session, app_id, missing))
    return from_request


def _insert_new(session: Session, app_id: str, rows: list[dict]) -> list[str]:
    """Store rows whose event id this app never accepted before; return the stored rows' states.

    The receipt is the idempotency key: concurrent requests with the same event id serialize on it."""
    receipts = EventReceipt.__table__
    now = utcnow()
    stmt = (
        dialect_insert(session, receipts)
        .on_conflict_do_nothing(index_elements=["app_id", "source_event_id"])
        .returning(receipts.c.source_event_id)
    )
    new_ids = set(session.execute(stmt, [{"app_id": app_id, "source_event_id": r["source_event_id"], "created_at": now}
                                         for r in rows]).scalars())
    fresh = [r for r in rows if r["source_event_id"] in new_ids]
    if fresh:
        # RETURNING makes SQLAlchemy send one multi-row INSERT per 1,000 rows instead of one per row.
        table = OutboxEvent.__table__
        session.execute(insert(table).returning(table.c.id), fresh).all()
    return [r["state"] for r in fresh]
