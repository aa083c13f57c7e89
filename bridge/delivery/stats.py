"""What the outbox holds for an app, by state and reason: the numbers behind /deliveries/stats."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bridge.apps.models import App
from bridge.catalog.service import detail_counts
from bridge.db import utcnow
from bridge.delivery.models import DEAD, PENDING, SKIPPED, OutboxEvent
from bridge.delivery.throughput import delivered_last_hour

outbox = OutboxEvent.__table__.c


def delivery_stats(session: Session, app: App) -> dict[str, object]:
    """Counts per state (pending, delivered, dead, skipped — the last two with reasons), what is
    retrying, the oldest waiting event, the last error Amplitude or the network gave, and what the message
    catalog did to the app's events: the data of `DeliveryStatsSchema`, which shows it (times as
    datetimes here).

    Delivered events have left the outbox; their number is the app's running total, and the last hour's
    are counted per minute (`bridge.delivery.throughput`). The catalog's
    counts are read the same way, with no counter the intake writes: each outbox row records what
    completing its event did (`message_details`), counted here by the same grouped read as the states,
    and the pusher adds a delivered row's outcome to the app's totals in the transaction deleting it.
    So the intake's group commits, several web processes at once, never queue on one counter row."""
    counts: dict[str, dict[str, int]] = {PENDING: {}, DEAD: {}, SKIPPED: {}}
    details: dict[str, int] = {}  # the catalog's outcomes (enriched, unseen) of the rows still here
    rows = session.execute(
        select(outbox.state, outbox.reason, outbox.message_details, func.count())
        .where(outbox.app_id == app.id).group_by(outbox.state, outbox.reason, outbox.message_details)
    )
    for state, reason, outcome, n in rows:
        by_reason = counts.setdefault(state, {})
        by_reason[reason or "-"] = by_reason.get(reason or "-", 0) + n
        if outcome:
            details[outcome] = details.get(outcome, 0) + n
    pending = session.execute(
        select(func.count().filter(outbox.attempts > 0), func.min(outbox.created_at))
        .where(outbox.app_id == app.id, outbox.state == PENDING)
    ).one()
    now = utcnow()
    held = app.delivery_held_until is not None and app.delivery_held_until > now
    return {
        "pending": sum(counts[PENDING].values()),
        "retrying": pending[0],
        "oldest_pending_at": pending[1],
        "delivered": app.delivered_total,
        "delivered_last_hour": delivered_last_hour(session, app.id, now),
        "dead": {"total": sum(counts[DEAD].values()), "reasons": counts[DEAD]},
        "skipped": {"total": sum(counts[SKIPPED].values()), "reasons": counts[SKIPPED]},
        "last_error": {"message": app.last_delivery_error, "at": app.last_delivery_error_at} if app.last_delivery_error else None,
        "last_delivered_at": app.last_delivered_at,
        "held": {"reason": app.delivery_held_reason, "until": app.delivery_held_until} if held else None,
        "message_details": detail_counts(session, app.id, details),
    }
