"""Cohorts applied to the messaging platform as user tags: which cohorts, and what each must change.

While a cohort's platform sync is on, every user who enters it is to get the tag `tag_key` = "1" and
every user who leaves it is to have that tag removed (value ""). Each wanted tag is a `PlatformTag`
row, written in the transaction that applies the batch (`record_changes`, called by the cohort job)
or that turns the sync on (`set_platform_sync`), so nothing is lost if Redis or a worker dies; the
tagger (`bridge.cohorts.tagger`) sends them. A row holds the newest wanted value by the batch's
`computed_time`: batches applied in any order, retried or late, end in the same tags.

Every function flushes into the caller's transaction; the caller commits, and the commit queues the
tagger (`tagger.tag_after_commit`).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import and_, case, delete, func, literal, select, true, update
from sqlalchemy.orm import Session

from bridge.cohorts.models import (TAG_FAILED, TAG_NOT_ON_PLATFORM, TAG_PENDING, TAG_SYNCED, CohortMember,
                                   CohortPlatformSync, PlatformTag, PlatformUser)
from bridge.db import UtcDateTime, dialect_insert, utcnow

IN, OUT = "1", ""  # the tag's value for a user in the cohort; "" removes the tag
TAG_KEY_MAX = 128
_TAG_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
PLAN_SAMPLE = 10

tags = PlatformTag.__table__.c
users = PlatformUser.__table__.c
syncs = CohortPlatformSync.__table__.c
members = CohortMember.__table__.c


class PlatformSyncError(ValueError):
    """A platform-sync setting conflicts with the app's state (a taken tag key, say); the message says how."""


class InvalidTagKey(PlatformSyncError):
    """A tag key that is not 1 to 128 of letters, digits, `_ . : -`."""


def default_tag_key(cohort_id: str) -> str:
    """`amplitude_cohort_<cohort_id>`: the tag key a cohort gets unless one is given."""
    return f"amplitude_cohort_{cohort_id}"


def check_tag_key(key: object) -> str:
    """A tag key: 1 to 128 of letters, digits, `_ . : -`. Raises InvalidTagKey."""
    if not isinstance(key, str) or not _TAG_KEY.fullmatch(key):
        raise InvalidTagKey("tag_key must be 1 to 128 letters, digits, '_', '.', ':' or '-'")
    return key


def sync_of(session: Session, app_id: str, cohort_id: str) -> CohortPlatformSync | None:
    return session.get(CohortPlatformSync, (app_id, cohort_id))


def set_platform_sync(session: Session, app_id: str, cohort_id: str, *, enabled: bool,
                      tag_key: str | None = None) -> tuple[CohortPlatformSync, int]:
    """Turn a cohort's platform sync on or off (flushed, not committed); returns it and how many tags
    were queued. Turning it on queues the tag of every current member, and the removal of the tag of
    every former member it had tagged. Turning it off stops sending that cohort's tags; the tags already
    on the platform stay. A new tag key replaces the old one while nothing was sent under it. Raises
    PlatformSyncError (bad or taken tag key; a new key once tags were sent under the old one)."""
    sync = sync_of(session, app_id, cohort_id)
    key = check_tag_key(tag_key) if tag_key is not None else (sync.tag_key if sync else default_tag_key(cohort_id))
    taken = session.scalar(select(syncs.cohort_id).where(syncs.app_id == app_id, syncs.tag_key == key,
                                                         syncs.cohort_id != cohort_id))
    if taken is not None:
        raise PlatformSyncError(f"tag_key {key!r} is already the tag of cohort {taken}")
    rekeyed = sync is not None and sync.tag_key != key
    if rekeyed:
        old = and_(tags.app_id == app_id, tags.tag_key == sync.tag_key)
        if session.scalar(select(func.count()).select_from(PlatformTag).where(old, tags.synced_value.is_not(None))):
            raise PlatformSyncError(f"tag_key: this cohort's tags were sent as {sync.tag_key!r}; "
                                    "a new key would leave them behind on the platform")
        session.execute(delete(PlatformTag.__table__).where(old))  # never sent: wanted under the new key instead
    now = utcnow()
    was_enabled = sync is not None and sync.enabled
    if sync is None:
        sync = CohortPlatformSync(app_id=app_id, cohort_id=cohort_id, enabled=enabled, tag_key=key, enabled_at=now)
        session.add(sync)
    else:
        sync.enabled, sync.tag_key, sync.updated_at = enabled, key, now
        if enabled and not was_enabled:
            sync.enabled_at = now
    session.flush()
    queued = _catch_up(session, app_id, cohort_id, key) if enabled and (rekeyed or not was_enabled) else 0
    return sync, queued


def _catch_up(session: Session, app_id: str, cohort_id: str, key: str) -> int:
    """Want every member's current state as a tag, set-based: members in the cohort get "1"; those
    out of it get "" only where a tag row says we tagged them. Newer wanted states are kept."""
    now = utcnow()
    entered = select(members.app_id, members.user_id, literal(key), members.cohort_id, literal(IN),
                     members.computed_time, literal(TAG_PENDING), literal(0), literal(now, UtcDateTime)).where(
        members.app_id == app_id, members.cohort_id == cohort_id, members.in_cohort)
    stmt = dialect_insert(session, PlatformTag.__table__).from_select(
        ["app_id", "external_id", "tag_key", "cohort_id", "value", "computed_time", "state", "attempts", "updated_at"],
        entered)
    stmt = stmt.on_conflict_do_update(
        index_elements=["app_id", "external_id", "tag_key"],
        set_=_newer_wins(stmt),
        where=tags.computed_time <= stmt.excluded.computed_time,
    )
    session.execute(stmt)
    # Former members whose tag we set: removed (only rows that exist: a user never tagged needs nothing).
    session.execute(
        update(PlatformTag.__table__)
        .where(tags.app_id == app_id, tags.tag_key == key, tags.value == IN,
               tags.external_id.in_(select(members.user_id).where(
                   members.app_id == app_id, members.cohort_id == cohort_id, ~members.in_cohort,
                   members.computed_time >= tags.computed_time)))
        .values(value=OUT, state=TAG_PENDING, reason=None, last_error=None, attempts=0, failing_since=None,
                updated_at=now)
    )
    return _mark_users_due(session, app_id, tag_key=key)


def record_changes(session: Session, app_id: str, cohort_id: str,
                   changes: Iterable[tuple[str, bool, int]]) -> int:
    """Want the tags of users whose membership a batch just changed: `changes` are (user_id, in_cohort,
    computed_time) as the batch wrote them. Flushed, in the batch's transaction; returns how many tags
    were queued (0 when the cohort's sync is off). A user leaving whom we never tagged needs nothing.
    Set-based: two statements per 5,000 users."""
    sync = sync_of(session, app_id, cohort_id)
    if sync is None or not sync.enabled:
        return 0
    changes = list(changes)
    if not changes:
        return 0
    now = utcnow()
    rows = [{"app_id": app_id, "external_id": user_id, "tag_key": sync.tag_key, "cohort_id": cohort_id,
             "value": IN if in_cohort else OUT, "computed_time": computed_time,
             # a first row that only removes: nothing of ours is on the platform, nothing to send
             "state": TAG_PENDING if in_cohort else TAG_SYNCED, "synced_value": None if in_cohort else OUT,
             "attempts": 0, "updated_at": now}
            for user_id, in_cohort, computed_time in changes]
    queued = 0
    for start in range(0, len(rows), 5000):
        chunk = rows[start:start + 5000]
        stmt = dialect_insert(session, PlatformTag.__table__)
        stmt = stmt.on_conflict_do_update(
            index_elements=["app_id", "external_id", "tag_key"],
            set_=_newer_wins(stmt),
            where=tags.computed_time <= stmt.excluded.computed_time,
        )
        session.execute(stmt, chunk)
        queued += _mark_users_due(session, app_id, [r["external_id"] for r in chunk])
    return queued


def _newer_wins(stmt) -> dict:
    """The update of a tag row by a newer wanted value: pending again, unless the platform already
    has exactly that value (a re-entry before the removal was sent, say, is then nothing to do)."""
    unchanged = and_(tags.state == TAG_SYNCED, tags.synced_value == stmt.excluded.value)
    return {
        "value": stmt.excluded.value,
        "computed_time": stmt.excluded.computed_time,
        "cohort_id": stmt.excluded.cohort_id,
        "state": case((unchanged, TAG_SYNCED), else_=TAG_PENDING),
        "reason": case((unchanged, tags.reason), else_=None),
        "last_error": case((unchanged, tags.last_error), else_=None),
        "attempts": case((unchanged, tags.attempts), else_=0),
        "failing_since": case((unchanged, tags.failing_since), else_=None),
        "updated_at": stmt.excluded.updated_at,
    }


def _mark_users_due(session: Session, app_id: str, external_ids: list[str] | None = None, *,
                    tag_key: str | None = None) -> int:
    """Make the users with pending tags among `external_ids` (or, with `tag_key`, every user with a
    pending tag of that key) due now, unless they already wait (a request in flight, a backoff): those
    keep their time. Returns how many users have pending tags. One INSERT ... SELECT whose rows come from
    the tags' primary key: no plan depends on the new rows' statistics."""
    conditions = [tags.app_id == app_id, tags.state == TAG_PENDING]
    if external_ids is not None:
        conditions.append(tags.external_id.in_(external_ids))
    if tag_key is not None:
        conditions.append(tags.tag_key == tag_key)
    pending = select(tags.external_id).where(*conditions).distinct().subquery()
    now = utcnow()
    # (WHERE true: SQLite reads `INSERT ... SELECT ... ON CONFLICT` only with a WHERE in the SELECT)
    stmt = dialect_insert(session, PlatformUser.__table__).from_select(
        ["app_id", "external_id", "due_at"],
        select(literal(app_id), pending.c.external_id, literal(now, UtcDateTime)).where(true()))
    stmt = stmt.on_conflict_do_update(index_elements=["app_id", "external_id"],
                                      set_={"due_at": func.coalesce(users.due_at, stmt.excluded.due_at)})
    result = session.execute(stmt)
    return result.rowcount or 0


@dataclass
class SyncStatus:
    """What the platform did with one cohort's tags (the report's `platform_sync`)."""

    enabled: bool
    tag_key: str
    tagged: int  # users the platform has the tag for ("1" applied)
    untagged: int  # users whose tag was removed (or never set, having left)
    pending: int  # tags waiting to be sent (or retried)
    not_on_platform: int  # users the platform does not know (404): not retried until they change again
    failed: dict[str, int]  # by reason: retry_window_exceeded, conflict, rejected, ...
    last_error: str | None
    last_synced_at: object


def sync_status(session: Session, app_id: str, cohort_id: str) -> SyncStatus | None:
    """The cohort's platform-sync numbers, or None when it never had one. One grouped count."""
    sync = sync_of(session, app_id, cohort_id)
    if sync is None:
        return None
    counts = session.execute(
        select(tags.state, tags.value, tags.reason, func.count(), func.max(tags.synced_at))
        .where(tags.app_id == app_id, tags.tag_key == sync.tag_key)
        .group_by(tags.state, tags.value, tags.reason)
    ).all()
    status = SyncStatus(sync.enabled, sync.tag_key, 0, 0, 0, 0, {}, None, None)
    for state, value, reason, n, last in counts:
        if state == TAG_SYNCED:
            if value == IN:
                status.tagged += n
            else:
                status.untagged += n
        elif state == TAG_PENDING:
            status.pending += n
        elif state == TAG_NOT_ON_PLATFORM:
            status.not_on_platform += n
        elif state == TAG_FAILED:
            status.failed[reason or "-"] = status.failed.get(reason or "-", 0) + n
        if last is not None and (status.last_synced_at is None or last > status.last_synced_at):
            status.last_synced_at = last
    # the latest failure's words (a user the platform does not know is counted, not an error)
    status.last_error = session.scalar(
        select(tags.last_error).where(tags.app_id == app_id, tags.tag_key == sync.tag_key,
                                      tags.state.in_((TAG_FAILED, TAG_PENDING)),
                                      tags.last_error.is_not(None)).order_by(tags.updated_at.desc()).limit(1))
    return status


def plan(session: Session, app_id: str, cohort_id: str, tag_key: str | None = None) -> dict[str, object]:
    """What turning the sync on (or, when it is on, its next sends) would change, sending nothing:
    `adds` (users to be tagged), `removes` (tags to be removed) and a sample of each (at most
    PLAN_SAMPLE user ids, in id order)."""
    sync = sync_of(session, app_id, cohort_id)
    key = sync.tag_key if sync is not None else check_tag_key(tag_key or default_tag_key(cohort_id))
    if sync is not None and sync.enabled:
        base = select(tags.external_id).where(tags.app_id == app_id, tags.tag_key == key, tags.state == TAG_PENDING)
        adds = base.where(tags.value == IN)
        removes = base.where(tags.value == OUT)
    else:
        # members in the cohort whose tag the platform does not have yet, and tags of former members
        have = select(tags.external_id).where(tags.app_id == app_id, tags.tag_key == key, tags.state == TAG_SYNCED,
                                              tags.synced_value == IN)
        adds = select(members.user_id).where(members.app_id == app_id, members.cohort_id == cohort_id,
                                             members.in_cohort, members.user_id.not_in(have))
        removes = select(tags.external_id).where(
            tags.app_id == app_id, tags.tag_key == key, tags.value == IN,
            tags.external_id.in_(select(members.user_id).where(
                members.app_id == app_id, members.cohort_id == cohort_id, ~members.in_cohort)))
    return {
        "enabled": bool(sync and sync.enabled),
        "tag_key": key,
        "adds": session.scalar(select(func.count()).select_from(adds.subquery())),
        "removes": session.scalar(select(func.count()).select_from(removes.subquery())),
        "sample": {
            "adds": _sample(session, adds),
            "removes": _sample(session, removes),
        },
    }


def _sample(session: Session, ids) -> list[str]:
    column = ids.subquery().c[0]
    return list(session.scalars(select(column).order_by(column).limit(PLAN_SAMPLE)))


def not_on_platform(session: Session, app_id: str, cohort_id: str) -> int:
    """Users in the cohort the platform said it does not know."""
    sync = sync_of(session, app_id, cohort_id)
    if sync is None:
        return 0
    return session.scalar(select(func.count()).select_from(PlatformTag).where(
        tags.app_id == app_id, tags.tag_key == sync.tag_key, tags.state == TAG_NOT_ON_PLATFORM, tags.value == IN)) or 0


def forget_platform_state(session: Session, app_id: str) -> int:
    """The app now sends to another platform app (or platform): what the old one held says nothing of
    the new one. Every tag wanted as "1" is pending again; a removal is nothing to do there. Flushed;
    returns how many tags are pending. The caller queues the tagger."""
    now = utcnow()
    session.execute(update(PlatformTag.__table__).where(tags.app_id == app_id, tags.value == IN).values(
        state=TAG_PENDING, synced_value=None, synced_at=None, reason=None, last_error=None, attempts=0,
        failing_since=None, updated_at=now))
    session.execute(update(PlatformTag.__table__).where(tags.app_id == app_id, tags.value == OUT).values(
        state=TAG_SYNCED, synced_value=None, synced_at=None, reason=None, last_error=None, attempts=0,
        failing_since=None, updated_at=now))
    return _mark_users_due(session, app_id)


def replay(session: Session, app_id: str | None = None, reason: str | None = None) -> tuple[int, list[str]]:
    """Put failed tags (of `reason`, or any) back to pending, and their users due: returns how many,
    and the apps concerned. Flushed; the caller commits, and queues the tagger of each app."""
    conditions = [tags.state == TAG_FAILED]
    if app_id:
        conditions.append(tags.app_id == app_id)
    if reason:
        conditions.append(tags.reason == reason)
    ids = session.execute(select(tags.app_id, tags.external_id).where(*conditions)).all()
    done = session.execute(update(PlatformTag.__table__).where(*conditions).values(
        state=TAG_PENDING, reason=None, attempts=0, failing_since=None, updated_at=utcnow()))
    by_app: dict[str, list[str]] = {}
    for app, user in ids:
        by_app.setdefault(app, []).append(user)
    for app, user_ids in by_app.items():
        for start in range(0, len(user_ids), 5000):
            _mark_users_due(session, app, user_ids[start:start + 5000])
    return done.rowcount or 0, sorted(by_app)
