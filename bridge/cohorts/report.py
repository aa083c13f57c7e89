"""Resolution and the report: which channel records a cohort's users have, and why Amplitude's user
count differs from what a messaging segment would count.

Every number is computed set-based in SQL on the current tables, so the report follows both sides:
a new sync changes the members, a re-import or a new subscription changes the records, and neither
needs the other to be resent. A cohort user matches a channel record of the same app whose External
User ID equals their Amplitude user_id.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import and_, exists, func, or_, select, text
from sqlalchemy.orm import Session

from bridge.cohorts import tagging
from bridge.cohorts.models import Cohort, CohortBatch, CohortMember
from bridge.cohorts.schemas import reason_counts
from bridge.db import is_postgresql
from bridge.registry.models import CHANNELS, Subscription

members = CohortMember.__table__.c
records = Subscription.__table__.c
batches = CohortBatch.__table__.c
cohorts = Cohort.__table__.c

# Members in the cohort, each with their matching records counted, then summed: one statement, one
# pass over the join, whatever the cohort's size.
_CHANNEL_SUMS = ",\n".join(
    f"SUM(CASE WHEN subscriptions.channel = '{c}' THEN 1 ELSE 0 END) AS {c}_total,\n"
    f"SUM(CASE WHEN subscriptions.channel = '{c}' AND subscriptions.subscribed THEN 1 ELSE 0 END) AS {c}_subscribed,\n"
    f"SUM(CASE WHEN subscriptions.channel = '{c}' AND subscriptions.subscribed IS NULL THEN 1 ELSE 0 END) AS {c}_unknown"
    for c in CHANNELS
)
REPORT_SQL = text(f"""
WITH per_user AS (
    SELECT cohort_members.user_id,
           COUNT(subscriptions.id) AS records,
           SUM(CASE WHEN subscriptions.subscribed THEN 1 ELSE 0 END) AS subscribed,
           SUM(CASE WHEN subscriptions.id IS NOT NULL AND subscriptions.subscribed IS NULL THEN 1 ELSE 0 END)
               AS unknown_state,
           {_CHANNEL_SUMS}
    FROM cohort_members
    LEFT JOIN subscriptions
           ON subscriptions.app_id = cohort_members.app_id AND subscriptions.external_id = cohort_members.user_id
    WHERE cohort_members.app_id = :app_id AND cohort_members.cohort_id = :cohort_id AND cohort_members.in_cohort
    GROUP BY cohort_members.user_id
)
SELECT COUNT(*) AS in_cohort,
       COALESCE(SUM(CASE WHEN records > 0 THEN 1 ELSE 0 END), 0) AS matched,
       COALESCE(SUM(CASE WHEN records > 1 THEN 1 ELSE 0 END), 0) AS with_multiple_devices,
       COALESCE(SUM(CASE WHEN records > 0 AND subscribed = 0 THEN 1 ELSE 0 END), 0) AS with_no_subscribed_record,
       COALESCE(SUM(CASE WHEN subscribed = 0 AND unknown_state > 0 THEN 1 ELSE 0 END), 0) AS maybe_reachable,
       COALESCE(SUM(records), 0) AS devices_total,
       COALESCE(SUM(subscribed), 0) AS devices_subscribed,
       COALESCE(SUM(unknown_state), 0) AS devices_unknown,
       {", ".join(f"COALESCE(SUM({c}_{n}), 0) AS {c}_{n}"
                  for c in CHANNELS for n in ("total", "subscribed", "unknown"))},
       (SELECT COUNT(*) FROM subscriptions
         WHERE subscriptions.app_id = :app_id
           AND (subscriptions.external_id IS NULL OR subscriptions.external_id = '')) AS app_records_without_external_id
FROM per_user
""")

# The headline numbers (users, matched users, records, subscribed records) as one flat join aggregate
# written by hand: the yardstick the report's speed is measured against (PostgreSQL, psycopg parameters).
EQUIVALENT_SQL = """
SELECT COUNT(DISTINCT cohort_members.user_id) AS in_cohort,
       COUNT(DISTINCT subscriptions.external_id) AS matched,
       COUNT(subscriptions.id) AS devices_total,
       COUNT(subscriptions.id) FILTER (WHERE subscriptions.subscribed) AS devices_subscribed
FROM cohort_members
LEFT JOIN subscriptions
       ON subscriptions.app_id = cohort_members.app_id AND subscriptions.external_id = cohort_members.user_id
WHERE cohort_members.app_id = %(app_id)s AND cohort_members.cohort_id = %(cohort_id)s AND cohort_members.in_cohort
"""


def cohort_report(session: Session, cohort: Cohort) -> dict[str, object]:
    """The report of one cohort: users, their channel records (subscribed, unsubscribed, or of unknown
    state), the segment size (the subscribed records) and the range it could span if the unknown
    ones were subscribed, and explanations of every difference that add up
    (in_cohort − unmatched + extra − unsubscribed − unknown = segment_size). The data of
    `CohortReportSchema` but its `recent_syncs`, times as datetimes."""
    if is_postgresql(session):
        # Compiling this many aggregate expressions costs more than it saves (~15% of a 1M-user report).
        session.execute(text("SET LOCAL jit = off"))
    row = session.execute(REPORT_SQL, {"app_id": cohort.app_id, "cohort_id": cohort.cohort_id}).mappings().one()
    n = {key: int(value) for key, value in row.items()}
    users = {
        "in_cohort": n["in_cohort"],
        "matched": n["matched"],
        "unmatched": n["in_cohort"] - n["matched"],
        "with_multiple_devices": n["with_multiple_devices"],
        "with_no_subscribed_record": n["with_no_subscribed_record"],
        "with_only_unsubscribed_records": n["with_no_subscribed_record"] - n["maybe_reachable"],
        "with_unknown_state_and_no_subscribed_record": n["maybe_reachable"],
    }
    devices = {
        **_states(n["devices_total"], n["devices_subscribed"], n["devices_unknown"]),
        "extra_from_multiple_devices": n["devices_total"] - n["matched"],
        "by_channel": {c: _states(n[f"{c}_total"], n[f"{c}_subscribed"], n[f"{c}_unknown"]) for c in CHANNELS},
    }
    explanations = _explanations(users, devices)
    unusable = unusable_entries(session, cohort)
    platform = tagging.sync_status(session, cohort.app_id, cohort.cohort_id)
    return {
        "cohort_id": cohort.cohort_id,
        "cohort_name": cohort.name,
        "created_at": cohort.created_at,
        "updated_at": cohort.updated_at,
        "users": users,
        "devices": devices,
        "segment_size": devices["subscribed"],
        "segment_size_range": {"min": devices["subscribed"], "max": devices["subscribed"] + devices["unknown"]},
        "explanations": explanations,
        "arithmetic": _arithmetic(users["in_cohort"], explanations, devices["subscribed"]),
        "summary": _summary(users["in_cohort"], explanations, devices["subscribed"]),
        "context": _context(users, n["app_records_without_external_id"]) + _unusable_context(unusable)
                   + _platform_context(session, cohort, platform),
        "unusable_users": sum(unusable.values()),
        "unusable_reasons": unusable,
        "platform_sync": platform,
    }


def _platform_context(session: Session, cohort: Cohort, platform: tagging.SyncStatus | None) -> list[str]:
    """What the messaging platform said of the cohort's users: those it does not know have no device
    there whatever the channel registry holds."""
    if platform is None:
        return []
    unknown = tagging.not_on_platform(session, cohort.app_id, cohort.cohort_id)
    if not unknown:
        return []
    return [f"the platform does not know {_count(unknown, 'user', 'users')} of the cohort (it answered "
            f"'user not found' to their tag {platform.tag_key!r}): the platform's segment cannot include them"]


def _states(total: int, subscribed: int, unknown: int) -> dict[str, int]:
    return {"total": total, "subscribed": subscribed, "unsubscribed": total - subscribed - unknown, "unknown": unknown}


def _explanations(users: dict[str, int], devices: dict[str, int]) -> list[dict[str, object]]:
    """The causes, in the order that walks from Amplitude's user count to the segment size."""
    causes = []
    if users["unmatched"]:
        causes.append({"cause": "users_without_channel_record", "delta": -users["unmatched"],
                       "text": f"{_count(users['unmatched'], 'user has', 'users have')} no channel record "
                               "with a matching External User ID"})
    if devices["extra_from_multiple_devices"]:
        causes.append({"cause": "users_with_multiple_devices", "delta": devices["extra_from_multiple_devices"],
                       "text": f"{_count(users['with_multiple_devices'], 'user has', 'users have')} more than one "
                               f"device (+{devices['extra_from_multiple_devices']:,} records)"})
    if devices["unsubscribed"]:
        causes.append({"cause": "unsubscribed_records", "delta": -devices["unsubscribed"],
                       "text": f"{_count(devices['unsubscribed'], 'record is', 'records are')} unsubscribed "
                               "and not in the segment"})
    if devices["unknown"]:
        one = devices["unknown"] == 1
        causes.append({"cause": "records_with_unknown_subscription_state", "delta": -devices["unknown"],
                       "text": f"{_count(devices['unknown'], 'record has', 'records have')} an unknown subscription "
                               f"state (no source said whether {'it is' if one else 'they are'} subscribed) and "
                               f"{'is' if one else 'are'} not in the segment, which could be up to "
                               f"{devices['subscribed'] + devices['unknown']:,}"})
    return causes


def _arithmetic(start: int, causes: list[dict[str, object]], end: int) -> str:
    terms = "".join(f" {'+' if c['delta'] > 0 else '-'} {abs(c['delta']):,}" for c in causes)
    return f"{start:,}{terms} = {end:,}"


def _summary(start: int, causes: list[dict[str, object]], end: int) -> str:
    head = f"Amplitude counts {_count(start, 'user', 'users')}; a messaging segment would count " \
           f"{_count(end, 'subscribed channel record', 'subscribed channel records')}"
    if not causes:
        return f"{head}: every user has exactly one channel record, and it is subscribed."
    texts = [c["text"] for c in causes]
    listed = texts[0] if len(texts) == 1 else f"{', '.join(texts[:-1])} and {texts[-1]}"
    return f"{head} because {listed}."


def _context(users: dict[str, int], without_external_id: int) -> list[str]:
    """Facts that explain the numbers without being a step between them."""
    notes = []
    if users["with_only_unsubscribed_records"]:
        notes.append(f"{_count(users['with_only_unsubscribed_records'], 'matched user has', 'matched users have')} "
                     "only unsubscribed records, so no message would reach them.")
    if maybe_reachable := users["with_unknown_state_and_no_subscribed_record"]:
        notes.append(f"{_count(maybe_reachable, 'matched user has', 'matched users have')} no subscribed record but at "
                     "least one of unknown state: whether a message would reach them is unknown.")
    if without_external_id:
        notes.append(f"{_count(without_external_id, 'channel record of this app has', 'channel records of this app have')} "
                     "no External User ID and can never match a cohort user.")
    return notes


def unusable_entries(session: Session, cohort: Cohort) -> dict[str, int]:
    """The entries without a usable user_id in all of the cohort's batches, per reason (the most frequent
    first). They were set aside on receipt, so they are in no membership number."""
    reasons: Counter[str] = Counter()
    for batch_reasons in session.scalars(select(batches.unusable_reasons).where(
            batches.app_id == cohort.app_id, batches.cohort_id == cohort.cohort_id, batches.unusable_users > 0)):
        reasons.update(batch_reasons)
    return reason_counts(reasons)


def _unusable_context(reasons: dict[str, int]) -> list[str]:
    """The note on entries Amplitude sent that could not be applied, apart from the arithmetic."""
    total = sum(reasons.values())
    if not total:
        return []
    listed = ", ".join(f"{n:,} {reason}" for reason, n in reasons.items())
    return [f"{_count(total, 'entry', 'entries')} Amplitude sent for this cohort had no usable user_id ({listed}) "
            f"and {'was' if total == 1 else 'were'} not applied, so {'it is' if total == 1 else 'they are'} not "
            "in in_cohort (Amplitude's own count may include them); each sync lists its own."]


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


# -- listings, keyset-paged -----------------------------------------------------------------------


@dataclass
class Page:
    items: list[dict[str, object]]  # the rows' columns, keys included; the views show them through a schema
    next_key: tuple | None  # the key to continue after, or None on the last page


def _page(rows: list, limit: int, key) -> Page:
    """A page of `limit` rows out of `limit + 1` fetched."""
    more = len(rows) > limit
    rows = rows[:limit]
    return Page([dict(r._mapping) for r in rows], key(rows[-1]) if more else None)


def list_cohorts(session: Session, app_id: str, *, after: str | None, limit: int) -> Page:
    """The app's cohorts by cohort_id, each with how many users are in it now."""
    in_cohort = (
        select(func.count())
        .where(members.app_id == cohorts.app_id, members.cohort_id == cohorts.cohort_id, members.in_cohort)
        .scalar_subquery()
    )
    query = select(cohorts.cohort_id, cohorts.name.label("cohort_name"), cohorts.created_at, cohorts.updated_at,
                   in_cohort.label("users_in_cohort")).where(cohorts.app_id == app_id)
    if after is not None:
        query = query.where(cohorts.cohort_id > after)
    rows = session.execute(query.order_by(cohorts.cohort_id).limit(limit + 1)).all()
    return _page(rows, limit, lambda r: (r.cohort_id,))


def sync_history(session: Session, cohort: Cohort, *, before: int | None, limit: int) -> Page:
    """The cohort's webhook batches, newest first, with what each did to the membership."""
    query = select(
        batches.public_id.label("batch_id"), batches.id, batches.message_id, batches.in_cohort, batches.computed_time,
        batches.user_count, batches.state, batches.entered, batches.left, batches.already_known, batches.stale,
        batches.duplicate_users, batches.unusable_users, batches.unusable_reasons, batches.unusable_examples,
        batches.retries, batches.error, batches.received_at, batches.processed_at,
    ).where(batches.app_id == cohort.app_id, batches.cohort_id == cohort.cohort_id)
    if before is not None:
        query = query.where(batches.id < before)
    rows = session.execute(query.order_by(batches.id.desc()).limit(limit + 1)).all()
    return _page(rows, limit, lambda r: (r.id,))


def unmatched_users(session: Session, cohort: Cohort, *, after: str | None, limit: int) -> Page:
    """Users in the cohort with no channel record carrying their id as External User ID, by user_id."""
    has_record = exists().where(records.app_id == members.app_id, records.external_id == members.user_id)
    query = select(members.user_id).where(
        members.app_id == cohort.app_id, members.cohort_id == cohort.cohort_id, members.in_cohort, ~has_record
    )
    if after is not None:
        query = query.where(members.user_id > after)
    rows = session.execute(query.order_by(members.user_id).limit(limit + 1)).all()
    return _page(rows, limit, lambda r: (r.user_id,))


AUDIENCE_COLUMNS = ("subscription_id", "external_id", "channel", "type", "identifier", "subscribed")
UNKNOWN = "unknown"  # the audience filter's value for records whose subscription state is unknown
State = bool | Literal["unknown"] | None


def audience(session: Session, cohort: Cohort, *, channel: str | None = None, subscribed: State = None,
             after: tuple[str, int] | None = None, limit: int) -> Page:
    """The channel records of the cohort's users (the resolved audience), ordered by user then record,
    optionally only one channel and/or one subscription state: True (subscribed), False
    (unsubscribed) or UNKNOWN (`subscribed` None); None lists every state."""
    query = (
        select(*(records[name] for name in AUDIENCE_COLUMNS), records.id)
        .join_from(CohortMember.__table__, Subscription.__table__,
                   and_(records.app_id == members.app_id, records.external_id == members.user_id))
        .where(members.app_id == cohort.app_id, members.cohort_id == cohort.cohort_id, members.in_cohort)
    )
    if channel is not None:
        query = query.where(records.channel == channel)
    if subscribed == UNKNOWN:
        query = query.where(records.subscribed.is_(None))
    elif subscribed is not None:
        query = query.where(records.subscribed == subscribed)
    if after is not None:
        user_id, record_id = after
        query = query.where(members.user_id >= user_id, or_(members.user_id > user_id, records.id > record_id))
    rows = session.execute(query.order_by(members.user_id, records.id).limit(limit + 1)).all()
    return _page(rows, limit, lambda r: (r.external_id, r.id))


def iter_audience(session: Session, cohort: Cohort, *, channel: str | None = None, subscribed: State = None,
                  page_size: int = 1000) -> Iterator[dict[str, object]]:
    """Every record `audience` lists, page after page, holding one page in memory at a time."""
    after = None
    while True:
        page = audience(session, cohort, channel=channel, subscribed=subscribed, after=after, limit=page_size)
        yield from page.items
        if page.next_key is None:
            return
        after = page.next_key
