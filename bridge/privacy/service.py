"""Erasing one person: every row of one app that holds their External User ID, or a channel identifier
of theirs, removed (or, in a shared row, their part of it) in the caller's transaction.

What names a person here, table by table (README, "Erasure on request"):

- `subscriptions`: their channel records, those whose `external_id` is theirs, and the records without
  an External User ID holding one of their identifiers on the same channel (an import of addresses
  alone): a push token, an e-mail address or a phone number is the person's whoever recorded it. A
  record of another External User ID with the same identifier is that user's, and stays. Their
  subscription ids and identifiers are what the outbox and the catalog are matched on.
- `outbox_events`: their events, pending, dead or skipped: those whose `user_id` is theirs, and the
  skipped events still waiting for a user (`user_id` NULL) on one of their subscriptions, which a
  replay would have attributed to them. Events of another External User ID on one of their
  subscriptions are that user's, and stay; but a value of another user's event that holds one of their
  channel identifiers (a personalised text the catalog completed a late event with) is taken out of
  it, and the event is sent without it.
- `cohort_batches`: their id taken out of the batches' user lists (`user_ids`); a batch not applied yet
  counts one user fewer, so its counts still add up once applied. And the message of an example of an
  unusable entry (`unusable_examples`: `user_id "their-id\u0007" contains a control character…`)
  quoting their External User ID, however short (it quotes a user_id as sent, never campaign text), or
  a channel identifier of theirs: replaced by ERASED_EXAMPLE, the entry's index, field, reason and
  counts kept.
- `cohort_members`, `platform_tags`, `platform_users`: their rows, in every cohort.
- `message_catalog`: the entries whose name, title, contents or template id holds one of their channel
  identifiers, or their External User ID when it is distinctive (below), as a whole word (e-mail
  addresses compared ignoring case): a personalised message may carry them. An entry is a
  campaign's, learned from any event of the message, so no other link to a person exists; one taken
  out is learned again from the message's next event that carries its details. This process forgets
  it at once (`catalog.service.forget`).
- `apps`: the app's last delivery and platform errors (and the reasons delivery or tagging is held)
  when their text holds one of those (the same rule as the catalog's).

Free texts are searched for the External User ID only when it is distinctive (`is_distinctive`: at
least DISTINCTIVE_LENGTH characters, or shaped like an e-mail address or an international phone
number): a short one (`50`, `42`, `anna`) is a word of ordinary campaign text ("50% off today"), and
erasing a person must not erase other people's campaigns. Channel identifiers (push tokens, e-mail
addresses, phone numbers) are always searched for. The outbox's redaction looks for channel
identifiers only, never the External User ID: every event carries its own user's id and device id,
and another user's (`anna-2`, `team/anna`) holds a distinctive id as a whole word too; taking that
value out would send their event without its user.

Left alone: `event_receipts` (an app id and the platform's own event id, nothing of the person; kept,
a platform's retry of an erased event is still a duplicate, never stored again) and
`message_details_totals` (counts).

Erasures of one app take turns: on PostgreSQL each first takes a transaction-level advisory lock keyed
on the app (`_take_turn`), which nothing else takes, so an erasure waiting for it holds no row yet;
SQLite has one writer. Two erasures of one app would otherwise deadlock: each deletes its person's
events, then locks the others' events that hold its person's identifiers, which may be the ones the
other is deleting. Erasures of different apps share no row.

Statements are set-based. The rows a worker may hold for a while come first: outbox events (a delivery
in flight: the erasure waits for its outcome) and cohort batches (a batch being applied). Only then
are the channel records and catalog entries, which the intake writes, locked, in the order the intake
locks them (by subscription id, by message id); the app's row last, as the pusher and the tagger
update it last. So it takes rows in the order they take them, and holds up the intake only for its
own last statements. (The intake only inserts outbox rows and the pusher claims them skipping locked
ones, so neither waits for the outbox rows the erasure holds.) Nothing is committed here: the caller
(the API's request, the CLI command) commits, once.
The commit logs one line: the app and the counts, never the External User ID nor anything derived
from it (a hash of an id is still the id, to anyone who can hash a guess).
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import orjson
from sqlalchemy import ColumnElement, Select, and_, delete, event, func, or_, select, update
from sqlalchemy.orm import Session, SessionTransaction

from bridge.apps.models import App
from bridge.catalog import service as catalog
from bridge.catalog.models import DETAILS, MessageCatalogEntry
from bridge.cohorts.jobs import batch_after_commit
from bridge.cohorts.models import PROCESSED, CohortBatch, CohortMember, PlatformTag, PlatformUser
from bridge.db import is_postgresql
from bridge.delivery.models import DEAD, PENDING, SKIPPED, OutboxEvent
from bridge.mapping import PLACEHOLDER_IDS
from bridge.registry.models import Subscription
from bridge.text import has_unprintable

log = logging.getLogger(__name__)

MAX_EXTERNAL_ID_LENGTH = 256  # as the channel registry and the cohorts store it
DISTINCTIVE_LENGTH = 8  # an External User ID this long or longer is searched for in free texts
_EMAIL_SHAPED = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE_SHAPED = re.compile(r"\+[0-9]{6,15}")  # E.164: "+", then the country code and the number
_LOGGED = "bridge.privacy:erased"  # Session.info key: the erasures a transaction holds, logged by its commit
_BATCHES_PER_READ = 100  # cohort batches read at a time (each up to 10,000 user ids)
REDACTED = "details_redacted"
# An unusable entry's example message once an erasure took out the text that quoted the person.
ERASED_EXAMPLE = "(removed by an erasure on request)"
# The app's texts an error message may have put an External User ID into.
APP_TEXTS = ("last_delivery_error", "delivery_held_reason", "platform_last_error", "platform_held_reason")


class InvalidExternalId(ValueError):
    """An External User ID that no row of the bridge can hold; the message says why."""


def clean_external_id(value: str) -> str:
    """`value` as the channel registry and the cohorts store an External User ID: stripped of surrounding
    whitespace, compared case-sensitively. Raises InvalidExternalId when it is empty, longer than
    MAX_EXTERNAL_ID_LENGTH characters, holds a control character or a bidirectional mark, or is a
    placeholder (`null`, `anonymous`, `0`, …: never stored as anyone's External User ID)."""
    cleaned = value.strip()
    if not cleaned:
        raise InvalidExternalId("Must not be empty or only whitespace.")
    if len(cleaned) > MAX_EXTERNAL_ID_LENGTH:
        raise InvalidExternalId(f"Longer than {MAX_EXTERNAL_ID_LENGTH} characters; no External User ID is.")
    if has_unprintable(cleaned):
        raise InvalidExternalId("Must not contain control characters or bidirectional marks.")
    if cleaned.lower() in PLACEHOLDER_IDS:
        raise InvalidExternalId("Is a placeholder, which the bridge never stores as an External User ID.")
    return cleaned


def is_distinctive(external_id: str) -> bool:
    """Whether free texts (catalog entries, the app's error texts) are searched for `external_id`: when
    it has at least DISTINCTIVE_LENGTH characters, or is shaped like an e-mail address or an
    international phone number. A shorter one (`50`, `anna`) is a word of anyone's campaign text."""
    return (len(external_id) >= DISTINCTIVE_LENGTH or _EMAIL_SHAPED.fullmatch(external_id) is not None
            or _PHONE_SHAPED.fullmatch(external_id) is not None)


@dataclass
class Erased:
    """How many rows (or parts of rows) of each kind one erasure removed; all zero when nothing was left."""

    channel_records: int = 0
    # their events per state, and "details_redacted": other users' events that lost a value holding an
    # identifier of theirs
    outbox_events: dict[str, int] = field(default_factory=lambda: {PENDING: 0, DEAD: 0, SKIPPED: 0, REDACTED: 0})
    cohort_memberships: int = 0  # rows of cohort_members, current or former (a user who left keeps a row)
    cohort_batch_user_lists: int = 0  # batches whose user list named them
    cohort_batch_examples: int = 0  # batches whose unusable-entry examples quoted them (the text goes)
    platform_tags: int = 0
    catalog_entries: int = 0
    app_error_texts: int = 0  # the app's error texts cleared


def erase_user(session: Session, app_id: str, external_id: str) -> Erased:
    """Remove what app `app_id` holds of the person whose External User ID is `external_id` (already
    cleaned: `clean_external_id`). Flushes, never commits; idempotent: a second call finds nothing and
    answers zeros. A batch of theirs not applied yet is queued again by the commit. Call it first in its
    transaction: it waits for any other erasure of the app to end, and should hold no row meanwhile."""
    erased = Erased()
    postgres = is_postgresql(session)
    if postgres:
        _take_turn(session, app_id)
    records = session.execute(select(Subscription.subscription_id, Subscription.channel, Subscription.identifier)
                              .where(Subscription.app_id == app_id, Subscription.external_id == external_id)).all()
    records += _unattributed_records(session, app_id, records)
    devices = [subscription_id for subscription_id, _, _ in records]
    identifiers = [identifier for _, _, identifier in records]
    theirs = (Subscription.app_id == app_id, or_(Subscription.external_id == external_id, and_(
        Subscription.external_id.is_(None), Subscription.subscription_id.in_(devices))))
    # First what may wait for a worker (a delivery in flight, a cohort batch being applied), holding no
    # row the intake writes meanwhile.
    erased.outbox_events = _erase_events(session, app_id, external_id, devices)
    erased.outbox_events[REDACTED] = _redact_events(session, app_id, Needles(identifiers), postgres)
    erased.cohort_batch_user_lists, erased.cohort_batch_examples = _erase_from_batches(
        session, app_id, external_id, identifiers, postgres)
    erased.cohort_memberships = session.execute(delete(CohortMember).where(
        CohortMember.app_id == app_id, CohortMember.user_id == external_id)).rowcount
    erased.platform_tags = session.execute(delete(PlatformTag).where(
        PlatformTag.app_id == app_id, PlatformTag.external_id == external_id)).rowcount
    session.execute(delete(PlatformUser).where(PlatformUser.app_id == app_id, PlatformUser.external_id == external_id))
    session.execute(_lock(select(Subscription.id).where(*theirs).order_by(Subscription.subscription_id), postgres))
    records = session.execute(delete(Subscription).where(*theirs).returning(Subscription.identifier)).all()
    erased.channel_records = len(records)
    identifiers += [identifier for identifier, in records]  # one recorded meanwhile too
    naming = Needles([external_id, *identifiers] if is_distinctive(external_id) else identifiers)
    erased.catalog_entries = _erase_catalog_entries(session, app_id, naming, postgres)
    erased.app_error_texts = _clear_app_texts(session, app_id, naming)
    session.flush()
    session.info.setdefault(_LOGGED, []).append((app_id, erased))
    return erased


@event.listens_for(Session, "after_commit")
def _log_erasures(session: Session) -> None:
    if not session.in_nested_transaction():
        for app_id, erased in session.info.pop(_LOGGED, ()):
            log.info("erased a user of app %s: %s", app_id, asdict(erased))


@event.listens_for(Session, "after_transaction_end")
def _forget_erasures(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # ended without a commit (else _log_erasures took them): nothing was erased
        session.info.pop(_LOGGED, None)


def _take_turn(session: Session, app_id: str) -> None:
    """Wait until no other transaction erases in app `app_id`, and keep the turn until this one ends
    (PostgreSQL's transaction-level advisory lock, on a 64-bit key drawn from the app id: two apps whose
    keys collide only take turns too)."""
    digest = hashlib.blake2b(f"{_LOGGED}:{app_id}".encode(), digest_size=8).digest()
    session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest, "big", signed=True))))


def _unattributed_records(session: Session, app_id: str, records: list) -> list:
    """The app's records without an External User ID holding the identifier of one of `records` on the
    same channel (an e-mail address as given or lowercased, as the registry may hold it)."""
    wanted = [and_(Subscription.channel == channel, Subscription.identifier.in_({identifier, identifier.lower()}))
              for _, channel, identifier in records if identifier and identifier.strip()]
    if not wanted:
        return []
    return session.execute(select(Subscription.subscription_id, Subscription.channel, Subscription.identifier).where(
        Subscription.app_id == app_id, Subscription.external_id.is_(None), or_(*wanted))).all()


def _lock(query: Select, postgres: bool) -> Select:
    """`query` locking the rows it reads until the transaction ends (PostgreSQL; SQLite has one writer)."""
    return query.with_for_update() if postgres else query


def _erase_events(session: Session, app_id: str, external_id: str, devices: list[str]) -> dict[str, int]:
    """Delete the person's outbox events, per state. A row a worker is sending now is locked (PostgreSQL):
    the delete waits for that worker's outcome, then deletes the row unless Amplitude took it. On SQLite
    the row is deleted under the worker's lease, and the worker's outcome then updates nothing."""
    theirs = OutboxEvent.user_id == external_id
    if devices:
        theirs = or_(theirs, OutboxEvent.user_id.is_(None) & OutboxEvent.device_id.in_(devices))
    return {state: session.execute(delete(OutboxEvent).where(
        OutboxEvent.app_id == app_id, OutboxEvent.state == state, theirs)).rowcount
        for state in (PENDING, DEAD, SKIPPED)}


class Needles:
    """What names the person in a text: their External User ID and their channel identifiers, each as a
    whole word (not run together with a letter, digit or underscore on either side), e-mail addresses
    ignoring case."""

    def __init__(self, values: Iterable[str | None]):
        self.values = list(dict.fromkeys(value.strip() for value in values if value and value.strip()))
        self._patterns = [re.compile(rf"(?<!\w){re.escape(value)}(?!\w)", re.IGNORECASE if "@" in value else 0)
                          for value in self.values]

    def found_in(self, text: str) -> bool:
        return any(pattern.search(text) for pattern in self._patterns)

    def anywhere(self, columns: Iterable[ColumnElement]) -> ColumnElement[bool]:
        """SQL: one of `columns` holds a needle anywhere (a superset of `found_in`, which the caller
        applies to what it reads: SQL's LIKE knows no word boundaries)."""
        columns = list(columns)
        held = [column.contains(value, autoescape=True) for column in columns for value in self.values]
        held += [func.lower(column).contains(value.lower(), autoescape=True)
                 for column in columns for value in self.values if "@" in value]
        return or_(*held)

    def without(self, value: object) -> object:
        """A decoded JSON `value` without the strings that name the person (and the keys holding them)."""
        if isinstance(value, dict):
            return {key: self.without(item) for key, item in value.items()
                    if not (isinstance(item, str) and self.found_in(item))}
        if isinstance(value, list):
            return [self.without(item) for item in value if not (isinstance(item, str) and self.found_in(item))]
        return value


def _redact_events(session: Session, app_id: str, needles: Needles, postgres: bool) -> int:
    """Take the values holding one of the person's channel identifiers (`needles`) out of the app's other
    outbox events (their Amplitude event, or a legacy skipped row's source item): a late event completed
    from a catalog entry personalised for them carries their text. Their External User ID is not looked
    for there: a short one ("42") would strip campaign names ("42% off") from everyone's events. Returns
    how many events changed. Read a thousand at a time, locked as the deletes lock (a row being sent is
    waited for)."""
    if not needles.values:
        return 0
    columns = (OutboxEvent.amplitude_event, OutboxEvent.source_item)
    after, redacted = 0, 0
    while True:
        rows = session.execute(_lock(
            select(OutboxEvent.id, *columns)
            .where(OutboxEvent.app_id == app_id, OutboxEvent.id > after, needles.anywhere(columns))
            .order_by(OutboxEvent.id).limit(1000), postgres)).all()
        if not rows:
            return redacted
        for event_id, *texts in rows:
            values = {}
            for column, text in zip(columns, texts, strict=True):
                if text is not None and needles.found_in(text):
                    values[column.key] = orjson.dumps(needles.without(orjson.loads(text))).decode()
            if values:
                redacted += 1
                session.execute(update(OutboxEvent).where(OutboxEvent.id == event_id).values(**values))
        after = rows[-1].id


def _erase_catalog_entries(session: Session, app_id: str, needles: Needles, postgres: bool) -> int:
    """Delete the app's catalog entries whose details name the person (`Needles`). Rows are locked in
    message-id order, as the intake's upsert locks them."""
    if not needles.values:
        return 0
    columns = [MessageCatalogEntry.__table__.c[detail] for detail in DETAILS]
    candidates = _lock(select(MessageCatalogEntry.message_id, *columns)
                       .where(MessageCatalogEntry.app_id == app_id, needles.anywhere(columns))
                       .order_by(MessageCatalogEntry.message_id), postgres)
    named = [row.message_id for row in session.execute(candidates) if any(needles.found_in(t) for t in row[1:] if t)]
    return catalog.forget(session, app_id, named)


def _erase_from_batches(session: Session, app_id: str, external_id: str, identifiers: list[str],
                        postgres: bool) -> tuple[int, int]:
    """Take `external_id` out of the user lists of the app's cohort batches, and the text out of their
    unusable-entry examples that quote it or one of `identifiers` (`_quoting`); returns how many
    batches named it in their list, and how many in their examples. The lists are JSON arrays as the
    webhook stored them (orjson), so the database picks the batches whose text holds the id's JSON
    string, or that set entries aside, and each is rewritten.

    A batch applied keeps its counts (its history). A batch not applied yet counts the removed entries
    out of `user_count` and loses its claim: a run that claimed it before this erasure (and so read the
    old list) finds the claim gone and discards its work, and the commit queues the batch again. An
    example keeps its index, field and reason, so the unusable entries still add up."""
    needle = orjson.dumps(external_id).decode()
    quoting = _quoting(external_id, identifiers)
    after, struck, quoted = 0, 0, 0
    while True:
        query = _lock(select(CohortBatch.id, CohortBatch.user_ids, CohortBatch.state, CohortBatch.user_count,
                             CohortBatch.unusable_examples)
                      .where(CohortBatch.app_id == app_id, CohortBatch.id > after,
                             or_(CohortBatch.user_ids.contains(needle, autoescape=True), CohortBatch.unusable_users > 0))
                      .order_by(CohortBatch.id).limit(_BATCHES_PER_READ), postgres)
        rows = session.execute(query).all()
        if not rows:
            return struck, quoted
        for batch_id, user_ids, state, user_count, examples in rows:
            values: dict[str, object] = {}
            listed = orjson.loads(user_ids)
            kept = [user for user in listed if user != external_id]
            if len(kept) < len(listed):  # else the text held the needle inside another id, or not at all
                struck += 1
                values["user_ids"] = orjson.dumps(kept).decode()
                if state != PROCESSED:
                    values.update(user_count=user_count - (len(listed) - len(kept)), claimed_at=None)
                    batch_after_commit(session, batch_id)
            shown = [{**example, "message": ERASED_EXAMPLE} if quoting.found_in(example.get("message") or "")
                     else example for example in examples or ()]
            if shown != (examples or []):
                quoted += 1
                values["unusable_examples"] = shown
            if values:
                session.execute(update(CohortBatch).where(CohortBatch.id == batch_id).values(**values))
        after = rows[-1].id


def _quoting(external_id: str, identifiers: list[str]) -> Needles:
    """What names the person in an unusable entry's example: their External User ID, however short (the
    example quotes one user_id value as sent, never campaign text), also as a JSON string escapes it,
    and their channel identifiers."""
    escaped = orjson.dumps(external_id).decode()[1:-1]
    return Needles([external_id, escaped, *identifiers])


def _clear_app_texts(session: Session, app_id: str, needles: Needles) -> int:
    """Clear the app's error texts (APP_TEXTS) that name the person (`needles`: a platform's or
    Amplitude's answer may quote an id or an address); returns how many."""
    if not needles.values:
        return 0
    texts = session.execute(select(*(App.__table__.c[name] for name in APP_TEXTS)).where(App.id == app_id)).first()
    cleared = [name for name, text in zip(APP_TEXTS, texts or (), strict=False) if text and needles.found_in(text)]
    if cleared:
        session.execute(update(App).where(App.id == app_id).values(**dict.fromkeys(cleared)))
    return len(cleared)

