"""The message catalog (issue 13): message details learned from the event stream complete the late
events that arrive with only `message.id`, on both databases.

- learning: per detail, the newest event's value wins, whatever order events arrive in; blank never
  overwrites; nothing is written for what the catalog already knows;
- completing: blank details are filled in before the event is stored, in its Amplitude event and in
  the source item a replay maps; a send and its click in one group work; a retried store learns only
  what was posted;
- the issue's acceptance: a click 40 days after its send reaches Amplitude with the campaign's details;
- counts in the stats (in the outbox, then folded in as events are delivered), and pruning.
"""
from __future__ import annotations

import random
from datetime import timedelta

import orjson
import pytest
from freezegun import freeze_time
from sqlalchemy import select

from bridge.mapping import DEFAULT_VOCABULARY
from bridge.catalog.memo import FLUSH_SECONDS, MEMO_SECONDS, Memo
from bridge.catalog.models import ENRICHED, UNSEEN, MessageCatalogEntry, MessageDetailsTotal
from bridge.catalog.service import LAST_SEEN_STEP, complete
from bridge.db import utcnow
from bridge.delivery.models import OutboxEvent
from bridge.delivery.pusher import drain_app
from bridge.delivery.replay import replay
from bridge.intake.schemas import load_item
from bridge.intake.service import prepare, store
from bridge.maintenance import prune
from bridge.registry.models import Subscription
from support.factories import MESSAGE, T0, event_item, new_tenant

DAY = 24 * 3600
SEND = {"id": "msg-1", "name": "Spring sale", "title": "50% off", "contents": {"en": "Only today"}, "template_id": "tpl-9"}
SEND_DETAILS = {k: v for k, v in SEND.items() if k != "id"}


@pytest.fixture
def settings_env(database_url, sink):
    return {"DATABASE_URL": database_url, "JOB_RUNNER": "manual", "AMPLITUDE_BASE_URL": sink.url,
            "LOG_LEVEL": "ERROR", "DELIVERY_LINGER_SECONDS": "0"}


def post(client, tenant, items) -> dict:
    response = client.post(f"/v1/apps/{tenant.app_id}/events", json=items, headers=tenant.auth)
    assert response.status_code == 202, response.json
    return response.json


def stats(client, tenant) -> dict:
    return client.get(f"/v1/apps/{tenant.app_id}/deliveries/stats", headers=tenant.auth).json["message_details"]


def entry(runtime, app_id: str, message_id: str) -> dict[str, object] | None:
    """The catalog's entry as (value, event time) per detail, and its last_seen_at; None if absent."""
    with runtime.session() as session:
        found = session.get(MessageCatalogEntry, (app_id, message_id))
    if found is None:
        return None
    return {**{d: (getattr(found, d), getattr(found, f"{d}_at")) for d in ("name", "title", "contents", "template_id")},
            "last_seen_at": found.last_seen_at}


def teach(runtime, app_id: str, raws: list[dict]):
    """complete() over validated `raws` in one committed transaction; the items (as completed) and the outcome."""
    items = [load_item(raw) for raw in raws]
    with runtime.session() as session:
        done = complete(session, app_id, items)
        session.commit()
    return items, done


def message_item(event_id: str, at: int, message_id: str = "msg-1", **details) -> dict:
    """An event of `message_id` at epoch second `at` carrying exactly `details` (the others absent)."""
    return event_item(event_id, "message.push.received", timestamp=at, message={"id": message_id, **details})


# -- learning --------------------------------------------------------------------------------------

# Events of one message: per detail the newest event's value must win. Two events share a time (the
# greater value wins the tie); contents goes Body → Teaser → Body, so a repeat of a value must still move
# its time; the newest event is blank and must overwrite nothing.
HISTORY = [
    ("e1", T0 + 100, {"name": "Spring sale", "title": "Old title", "template_id": "tpl-1"}),
    ("e2", T0 + 200, {"name": "Spring sale v2", "contents": "Body"}),
    ("e3", T0 + 200, {"name": "Spring sale v3"}),
    ("e4", T0 + 250, {"title": {"en": "Mid title", "de": "Mitte"}, "contents": "Teaser"}),
    ("e5", T0 + 300, {"contents": "Body", "title": "   "}),
    ("e6", T0 + 400, {}),
]
NEWEST = {"name": ("Spring sale v3", (T0 + 200) * 1000), "title": ("Mid title", (T0 + 250) * 1000),
          "contents": ("Body", (T0 + 300) * 1000), "template_id": ("tpl-1", (T0 + 100) * 1000)}


def test_the_newest_value_of_each_detail_wins_whatever_order_events_arrive_in(runtime, tenant):
    rng = random.Random(13)
    orders = [list(HISTORY), list(reversed(HISTORY))] + [rng.sample(HISTORY, len(HISTORY)) for _ in range(10)]
    for n, order in enumerate(orders):
        message_id = f"msg-{n}"
        for event_id, at, details in order:  # one transaction per event
            teach(runtime, tenant.app_id, [message_item(f"{n}-{event_id}", at, message_id, **details)])
        found = entry(runtime, tenant.app_id, message_id)
        assert {d: found[d] for d in NEWEST} == NEWEST, [e[0] for e in order]
    # the same events in one batch, in a shuffled order
    teach(runtime, tenant.app_id, [message_item(f"b-{e}", at, "msg-batch", **d) for e, at, d in rng.sample(HISTORY, 6)])
    found = entry(runtime, tenant.app_id, "msg-batch")
    assert {d: found[d] for d in NEWEST} == NEWEST


def test_what_the_catalog_knows_is_not_written_again_and_last_seen_moves_once_a_day(runtime, tenant):
    known = [message_item("e2", T0, name="Spring sale"),  # the same event time
             message_item("e3", T0 - 50, name="Older name"), message_item("e4", T0 + 5)]  # an older one, a blank one
    with freeze_time(utcnow()) as frozen:
        _, first = teach(runtime, tenant.app_id, [message_item("e1", T0, name="Spring sale")])
        seen = entry(runtime, tenant.app_id, "msg-1")["last_seen_at"]
        frozen.tick(MEMO_SECONDS / 2)
        _, again = teach(runtime, tenant.app_id, known)
        assert (first.written, again.written) == (1, 0)  # remembered by the process: no statement at all
        frozen.tick(MEMO_SECONDS)
        _, forgotten = teach(runtime, tenant.app_id, known)  # no longer trusted: the describing events are upserted
        assert forgotten.outcomes == [None, None, ENRICHED]
        assert entry(runtime, tenant.app_id, "msg-1") == {  # which changes none of what the catalog held
            "name": ("Spring sale", T0 * 1000), "title": (None, None), "contents": (None, None),
            "template_id": (None, None), "last_seen_at": utcnow()}
        frozen.tick(MEMO_SECONDS)
        _, blank = teach(runtime, tenant.app_id, [message_item("e5", T0 + 6)])  # only read: last_seen_at is fresh
        assert (blank.written, blank.outcomes) == (0, [ENRICHED])
        assert entry(runtime, tenant.app_id, "msg-1")["last_seen_at"] > seen
        frozen.tick(LAST_SEEN_STEP)
        _, later = teach(runtime, tenant.app_id, [message_item("e6", T0 + 7)])  # blank, a day later
        assert later.written == 1
        assert entry(runtime, tenant.app_id, "msg-1")["last_seen_at"] == utcnow()
        assert entry(runtime, tenant.app_id, "msg-1")["name"] == ("Spring sale", T0 * 1000)


def test_a_repeated_value_owes_its_newer_time_and_pays_it_with_a_later_statement(runtime, tenant):
    """A value the catalog holds, seen again in a newer event, is not written at once (a campaign's stream
    would write per new event time) but owed; a group that rolls back owes it again; it is paid within
    FLUSH_SECONDS, so a different value of an event in between cannot win."""
    with freeze_time(utcnow()) as frozen:
        teach(runtime, tenant.app_id, [message_item("e1", T0, name="Spring sale")])
        _, repeated = teach(runtime, tenant.app_id, [message_item("e2", T0 + 300, name="Spring sale")])
        assert repeated.written == 0 and entry(runtime, tenant.app_id, "msg-1")["name"] == ("Spring sale", T0 * 1000)
        frozen.tick(FLUSH_SECONDS)
        with runtime.session() as session:  # the debt is due: taken by this group, which fails
            assert complete(session, tenant.app_id, [load_item(message_item("e3", T0 + 301))]).written == 1
            session.rollback()
        assert entry(runtime, tenant.app_id, "msg-1")["name"] == ("Spring sale", T0 * 1000)
        _, paid = teach(runtime, tenant.app_id, [message_item("e4", T0 + 302)])  # owed again, still due
        assert paid.written == 1
        assert entry(runtime, tenant.app_id, "msg-1")["name"] == ("Spring sale", (T0 + 300) * 1000)
        teach(runtime, tenant.app_id, [message_item("e5", T0 + 200, name="Renamed in between")])
        assert entry(runtime, tenant.app_id, "msg-1")["name"] == ("Spring sale", (T0 + 300) * 1000)


def test_apps_have_catalogs_of_their_own(runtime, tenant):
    other = new_tenant(runtime, "Other app")
    teach(runtime, tenant.app_id, [message_item("e1", T0, name="Spring sale")])
    items, done = teach(runtime, other.app_id, [message_item("e2", T0 + 60)])
    assert done.outcomes == [UNSEEN] and items[0]["message"]["name"] is None
    assert entry(runtime, other.app_id, "msg-1") is None


# -- completing ------------------------------------------------------------------------------------

def test_blank_details_are_filled_in_and_each_event_says_what_was_done(runtime, tenant):
    teach(runtime, tenant.app_id, [message_item("send", T0, **SEND_DETAILS)])
    items, done = teach(runtime, tenant.app_id, [
        message_item("click", T0 + 40 * DAY),  # only the id
        message_item("partial", T0 + 40 * DAY, name="Renamed"),  # its own name stays, the rest is filled in
        message_item("full", T0 + 5, **SEND_DETAILS),
        message_item("never", T0 + 40 * DAY, "msg-never"),
        event_item("iam", "message.iam.displayed", message={}),  # no message id: left alone
    ])
    assert done.outcomes == [ENRICHED, ENRICHED, None, UNSEEN, None]
    assert (done.enriched, done.unseen) == (2, 1)
    assert {k: items[0]["message"][k] for k in ("name", "title", "contents", "template_id")} == {
        "name": "Renamed", "title": "50% off", "contents": "Only today", "template_id": "tpl-9"}  # the newest name
    assert items[1]["message"]["name"] == "Renamed" and items[1]["message"]["title"] == "50% off"
    assert all(items[3]["message"][k] is None for k in ("name", "title", "contents", "template_id"))


def test_the_catalog_keeps_what_amplitude_keeps_of_a_long_text(runtime, tenant):
    teach(runtime, tenant.app_id, [message_item("send", T0, contents={"fr": "é" * 1500, "en": "x" * 3000})])
    items, _ = teach(runtime, tenant.app_id, [message_item("click", T0 + 40 * DAY)])
    assert items[0]["message"]["contents"] == "x" * 1024
    assert entry(runtime, tenant.app_id, "msg-1")["contents"] == ("x" * 1024, T0 * 1000)


def test_a_send_and_its_click_in_one_group_of_requests(runtime, tenant):
    send = prepare(tenant.app_id, DEFAULT_VOCABULARY, [event_item("send", message=SEND)])
    click = prepare(tenant.app_id, DEFAULT_VOCABULARY, [event_item("click", "message.push.clicked", timestamp=T0 + 9,
                                                     message={"id": "msg-1"})])
    with runtime.session() as session:
        store(session, [click, send])  # the click's request came first
        session.commit()
        row = session.scalars(select(OutboxEvent).where(OutboxEvent.source_event_id == "click")).one()
    assert row.message_details == ENRICHED
    assert orjson.loads(row.amplitude_event)["event_properties"]["message_name"] == "Spring sale"


def test_a_store_tried_again_after_a_failure_learns_only_what_was_posted(runtime, tenant):
    """The group commit retries a failed group's requests one by one: the click completed the first time
    must be completed again, and must not teach the catalog the name it was given, at its own time."""
    teach(runtime, tenant.app_id, [message_item("send", T0, name="Spring sale")])
    click = prepare(tenant.app_id, DEFAULT_VOCABULARY, [message_item("click", T0 + 40 * DAY)])
    with runtime.session() as session:
        store(session, [click])
        session.rollback()
        store(session, [click])
        session.commit()
        row = session.scalars(select(OutboxEvent)).one()
    assert row.message_details == ENRICHED
    assert orjson.loads(row.amplitude_event)["event_properties"]["message_name"] == "Spring sale"
    assert entry(runtime, tenant.app_id, "msg-1")["name"] == ("Spring sale", T0 * 1000)


# -- the acceptance test -----------------------------------------------------------------------

def test_a_click_forty_days_after_its_send_reaches_amplitude_with_the_campaigns_details(client, tenant, runtime, sink):
    day_0 = utcnow() - timedelta(days=40)
    with freeze_time(day_0):
        post(client, tenant, [event_item("send", timestamp=int(day_0.timestamp()), message=SEND)])
        drain_app(tenant.app_id, runtime=runtime)
    with freeze_time(day_0 + timedelta(days=40)):
        clicked_at = int((day_0 + timedelta(days=40)).timestamp())
        post(client, tenant, [
            event_item("click", "message.push.clicked", timestamp=clicked_at,
                       message={"id": "msg-1", "name": "", "title": None, "contents": {}}),
            event_item("stray", "message.push.clicked", timestamp=clicked_at, message={"id": "msg-unknown"})])
        assert stats(client, tenant) == {"enriched": 1, "unseen": 1, "catalog_messages": 1}  # still in the outbox
        drain_app(tenant.app_id, runtime=runtime)
        assert stats(client, tenant) == {"enriched": 1, "unseen": 1, "catalog_messages": 1}  # delivered: folded in
    sent = {e["insert_id"]: e["event_properties"] for e in sink.events()}
    assert sent["click"] == sent["send"] == {"message_type": "push", "message_name": "Spring sale", "message": "50% off",
                                             "message_contents": "Only today", "delivery_id": "msg-1"}
    assert sent["stray"] == {"message_type": "push", "delivery_id": "msg-unknown"}
    with runtime.session() as session:
        assert session.scalars(select(OutboxEvent)).all() == []
        totals = session.get(MessageDetailsTotal, tenant.app_id)
    assert (totals.enriched, totals.unseen) == (1, 1)


def test_a_replayed_unresolved_event_keeps_the_details_it_was_given(client, tenant, runtime, sink):
    post(client, tenant, [event_item("send", message=SEND)])
    late = event_item("late", "message.push.clicked", "sub-new", external_id=None, device_type=None,
                      timestamp=T0 + 40 * DAY, message={"id": "msg-1"})
    assert post(client, tenant, [late])["skipped"] == 1
    with runtime.session() as session:
        waiting = session.scalars(select(OutboxEvent).where(OutboxEvent.source_event_id == "late")).one()
        assert orjson.loads(waiting.amplitude_event)["event_properties"]["message_name"] == "Spring sale"
        session.add(Subscription(app_id=tenant.app_id, subscription_id="sub-new", channel="push", type="iOSPush",
                                 external_id="user-7"))
        session.commit()
        assert replay(session, app_id=tenant.app_id, reason="unresolved_user").requeued == 1
        session.commit()
    drain_app(tenant.app_id, runtime=runtime)
    sent = {e["insert_id"]: e for e in sink.events()}
    assert sent["late"]["user_id"] == "user-7"
    assert sent["late"]["event_properties"]["message_name"] == "Spring sale"
    assert sent["late"]["event_properties"]["message_contents"] == "Only today"
    assert stats(client, tenant)["enriched"] == 1


def test_the_counts_stay_with_events_that_are_not_delivered(client, tenant, runtime, sink):
    """A dead-lettered event keeps its row, and its outcome is counted from there: never twice, never lost."""
    post(client, tenant, [event_item("send", message=MESSAGE)])
    drain_app(tenant.app_id, runtime=runtime)
    sink.add_faults([{"status": 400, "body": {"code": 400, "error": "Invalid field values on some events",
                                              "events_with_invalid_fields": {"time": [1]}}}])
    post(client, tenant, [event_item("click-1", "message.push.clicked", timestamp=T0 + 1, message={"id": "msg-1"}),
                          event_item("click-2", "message.push.clicked", timestamp=T0 + 2, message={"id": "msg-1"})])
    drain_app(tenant.app_id, runtime=runtime)
    with runtime.session() as session:
        dead = session.scalars(select(OutboxEvent)).one()
    assert (dead.source_event_id, dead.state, dead.message_details) == ("click-2", "dead", ENRICHED)
    assert stats(client, tenant) == {"enriched": 2, "unseen": 0, "catalog_messages": 1}


# -- pruning ---------------------------------------------------------------------------------------

def test_prune_forgets_messages_no_event_named_for_the_retention(client, tenant, runtime):
    now = utcnow()
    with freeze_time(now - timedelta(days=200)):
        post(client, tenant, [message_item("old", int((now - timedelta(days=200)).timestamp()), "msg-old", name="Old"),
                              message_item("kept", int((now - timedelta(days=200)).timestamp()), "msg-kept", name="Kept")])
    with freeze_time(now - timedelta(days=10)):  # a late click keeps its message alive
        post(client, tenant, [message_item("click", int((now - timedelta(days=10)).timestamp()), "msg-kept")])
    post(client, tenant, [message_item("new", int(now.timestamp()), "msg-new", name="New")])
    assert prune(runtime, older_than_days=30, batch=1)["message_catalog"] == 1
    assert entry(runtime, tenant.app_id, "msg-old") is None
    assert entry(runtime, tenant.app_id, "msg-kept")["name"][0] == "Kept"
    assert entry(runtime, tenant.app_id, "msg-new")["name"][0] == "New"
    assert stats(client, tenant)["catalog_messages"] == 2


@pytest.mark.parametrize(("retention", "pruned"), [("31", 1), ("180", 0)])
def test_the_retention_is_the_setting(settings_env, tenant, runtime, retention, pruned):
    from bridge.runtime import Runtime
    from bridge.settings import Settings

    with freeze_time(utcnow() - timedelta(days=40)):
        teach(runtime, tenant.app_id, [message_item("e1", T0, name="Spring sale")])
    configured = Runtime(Settings.from_env({**settings_env, "MESSAGE_CATALOG_RETENTION_DAYS": retention}))
    try:
        assert prune(configured, older_than_days=30)["message_catalog"] == pruned
    finally:
        configured.close()


def test_the_memo_trusts_an_entry_for_its_age_only_and_keeps_the_most_recently_used():
    memo = Memo(seconds=30, entries=2)
    with freeze_time(utcnow()) as frozen:
        memo.put({"a": 1, "b": None})  # None: remembered as absent
        frozen.tick(20)
        assert memo.get(["a", "b", "c"]) == {"a": 1, "b": None}  # "c" was never put: left out
        memo.put({"c": 3})  # over the bound: "a", used least recently (get moved "b" after it), goes
        assert memo.get(["a", "b", "c"]) == {"b": None, "c": 3}
        frozen.tick(15)
        assert memo.get(["b", "c"]) == {"c": 3}  # "b" was put 35 s ago
    assert memo.get(["c"]) == {}  # the clock went back (frozen, then real): trusted no longer
