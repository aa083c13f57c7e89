"""Erasure on request: `DELETE /v1/apps/<app_id>/users/<external_id>` and `bridge users erase`.

The person has channel records on every channel, pending, dead and skipped events, memberships in two
cohorts (and a batch naming them not applied yet), a tag on the platform, a catalog entry personalised
with their e-mail address and an app error quoting them. After the erasure, every column of every table
(reflected from the database, not taken from the models) is searched for their External User ID and
their channel identifiers: nothing is left, and nothing of anyone else changed.

Their id, `acct_7781`, holds `_`, which SQL's LIKE reads as any character; the others' ids
(`acctX7781`, `acct_77810`) would match a careless LIKE or a prefix.
"""
from __future__ import annotations

import json
import re
import threading
import time

import pytest
from sqlalchemy import MetaData, create_engine, func, select, text, update

from bridge.amplitude import client as amp
from bridge.apps.models import App
from bridge.apps.service import connect_platform
from bridge.catalog.models import MessageCatalogEntry
from bridge.cli import main
from bridge.cohorts import jobs as cohort_jobs
from bridge.cohorts.models import CohortBatch, CohortMember, PlatformTag, PlatformUser
from bridge.cohorts.tagger import Tagger
from bridge.delivery.models import DEAD, OutboxEvent
from bridge.delivery.pusher import Pusher
from bridge.privacy import service as privacy_service
from bridge.privacy.service import ERASED_EXAMPLE, erase_user
from bridge.runtime import Runtime
from bridge.settings import Settings, normalize_database_url
from support.factories import OMIT, T0, channel_record, cohort_batch, event_item, new_tenant, store_cohort_batch
from support.platform import API_KEY as PLATFORM_KEY
from support.platform import APP_ID as PLATFORM_APP

PERSON = "acct_7781"
OTHERS = ("acctX7781", "acct_77810")
TOKEN, EMAIL, PHONE = "f3c1a9e2b7d4AnnaPushToken0001", "Anna.K@example.com", "+4915112345678"
DEVICES = ("sub-anna-ios", "sub-anna-mail", "sub-anna-sms", "sub-anna-web", "sub-anna-old")
ZERO = {"channel_records": 0, "outbox_events": {"pending": 0, "dead": 0, "skipped": 0, "details_redacted": 0},
        "cohort_memberships": 0,
        "cohort_batch_user_lists": 0, "cohort_batch_examples": 0, "platform_tags": 0, "catalog_entries": 0, "app_error_texts": 0}


@pytest.fixture
def settings_env(settings_env):
    return {**settings_env, "PLATFORM_BASE_URL": "http://127.0.0.1:9"}  # the discard port: no tag leaves


def word(needle: str, ignore_case: bool = False) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(needle)}(?!\w)", re.I if ignore_case else 0)


# What names the person, wherever it is: their id and identifiers as whole words (another person's
# `acct_77810` is not theirs), and their subscription ids.
NAMING = [word(PERSON), word(TOKEN), word(EMAIL, ignore_case=True), word(PHONE), *(word(d) for d in DEVICES)]


def every_row(database_url: str) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every table of the database, each value as text (JSON as its text), reflected."""
    engine = create_engine(normalize_database_url(database_url))
    metadata = MetaData()
    metadata.reflect(bind=engine)
    rows = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows[table.name] = [tuple(json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, dict | list)
                                      else "" if v is None else str(v) for v in row)
                                for row in conn.execute(select(table))]
    engine.dispose()
    return rows


def naming_the_person(rows: dict[str, list[tuple[str, ...]]]) -> dict[str, list[tuple[str, ...]]]:
    found = {table: [row for row in table_rows if any(p.search(value) for value in row for p in NAMING)]
             for table, table_rows in rows.items()}
    return {table: hits for table, hits in found.items() if hits}


def post(client, tenant, path: str, body) -> dict:
    response = client.post(f"/v1/apps/{tenant.app_id}/{path}", json=body, headers=tenant.auth)
    assert response.status_code in (200, 202), response.json
    return response.json


def seed(client, runtime, tenant) -> None:
    """The person and two others, in every table that can name them."""
    post(client, tenant, "events", [  # a web push of theirs before the registry knew whose it is: skipped
        event_item("evt-anna-web", subscription_id="sub-anna-web", external_id=OMIT, device_type="ChromePush"),
        event_item("evt-anon", subscription_id="sub-anon", external_id=OMIT, device_type="ChromePush")])
    post(client, tenant, "subscriptions", [
        channel_record("sub-anna-ios", "iOSPush", identifier=TOKEN, external_id=PERSON, notification_types=1),
        channel_record("sub-anna-mail", "Email", identifier=EMAIL, external_id=PERSON),
        channel_record("sub-anna-sms", "SMS", identifier=PHONE, external_id=f"  {PERSON} "),
        channel_record("sub-anna-web", "ChromePush", identifier="https://push.example/anna", external_id=PERSON),
        channel_record("sub-anna-old", "Email", identifier=EMAIL),  # their address, imported without a user
        channel_record("sub-x-sms", "SMS", identifier="+4915100000001", external_id=OTHERS[0]),
        channel_record("sub-x-sms-old", "SMS", identifier="+4915100000001"),  # the other's, not theirs
        channel_record("sub-x-ios", "iOSPush", identifier="tokX", external_id=OTHERS[0], notification_types=1),
        channel_record("sub-y-mail", "Email", identifier="y@example.com", external_id=OTHERS[1])])
    receipt = {"id": "msg-receipt", "name": "Receipt", "contents": {"en": "Your receipt went to anna.k@example.com"}}
    post(client, tenant, "events", [
        event_item("evt-anna-1", subscription_id="sub-anna-ios", external_id=PERSON, message=receipt),
        # another user's click of the same message, completed from the catalog with the person's text
        event_item("evt-x-late", "message.push.clicked", "sub-x-ios", OTHERS[0], message={"id": "msg-receipt"}),
        event_item("evt-anna-2", "message.email.opened", "sub-anna-mail", PERSON, device_type="Email",
                   message={"id": "msg-weekly", "name": "Weekly", "title": "Hello everyone"}),
        event_item("evt-anna-3", subscription_id="sub-anna-ios", external_id=PERSON, message={"id": "msg-weekly"}),
        event_item("evt-x-1", subscription_id="sub-x-ios", external_id=OTHERS[0],
                   message={"id": "msg-x", "name": "Hi acctX7781"}),
        event_item("evt-y-1", "message.email.opened", "sub-y-mail", OTHERS[1], device_type="Email",
                   message={"id": "msg-y", "name": "Code acct_77810"})])
    with runtime.session() as session:
        session.execute(update(OutboxEvent).where(OutboxEvent.source_event_id == "evt-anna-3")
                        .values(state=DEAD, reason="amplitude_400", last_error="HTTP 400: Invalid field values"))
        connect_platform(session, session.get(App, tenant.app_id), platform="onesignal", platform_app_id="os-app",
                         platform_api_key="os-key")
        session.commit()
    # c1's batch also sets aside two entries quoting them: their id with a control character after it,
    # and their e-mail address with a bidirectional mark (shown as examples, with their counts).
    for cohort_id, users in (("c1", [PERSON, *OTHERS, f"{PERSON}\u0007", f"{EMAIL}\u202e", "x\u0007"]),
                             ("c2", [PERSON, OTHERS[0]])):
        response = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", headers=tenant.cohort_auth,
                               json=cohort_batch(users, cohort_id=cohort_id))
        assert response.status_code == 200
    runtime.runner.run_pending()
    response = client.put(f"/v1/apps/{tenant.app_id}/cohorts/c1/platform-sync", json={"enabled": True},
                          headers=tenant.auth)
    assert response.status_code == 200, response.json


def late_news(runtime, tenant) -> None:
    """After the jobs have run: a batch of c1 naming the person (twice), received and not applied yet,
    and the platform's last answer quoting them."""
    store_cohort_batch(runtime, tenant.app_id, "c1::late", [PERSON, "u-new", PERSON], cohort_id="c1",
                       computed_time=T0 + 60)
    with runtime.session() as session:
        session.execute(update(App).where(App.id == tenant.app_id).values(
            platform_last_error=f"conflict: HTTP 409: the alias {PERSON} belongs to another user",
            last_delivery_error="HTTP 503: Service Unavailable"))
        session.commit()


def erase(client, tenant, external_id: str = PERSON, **headers):
    return client.delete(f"/v1/apps/{tenant.app_id}/users/{external_id}", headers=headers or tenant.auth)


def test_erasure_leaves_nothing_of_the_person_in_any_table_and_everyone_else_as_they_were(
        client, runtime, tenant, database_url):
    other_tenant = new_tenant(runtime, "Other app")
    seed(client, runtime, tenant)
    seed(client, runtime, other_tenant)  # the same person in another app: erased there only when asked there
    late_news(runtime, tenant)
    late_news(runtime, other_tenant)
    report = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1", headers=tenant.auth).json
    assert (report["users"]["in_cohort"], report["users"]["matched"]) == (3, 3)
    before = every_row(database_url)
    assert {"subscriptions", "outbox_events", "cohort_members", "cohort_batches", "platform_tags", "platform_users",
            "message_catalog", "apps"} <= naming_the_person(before).keys()

    response = erase(client, tenant)

    assert response.status_code == 200
    assert response.json == {"removed": {
        "channel_records": 5, "outbox_events": {"pending": 2, "dead": 1, "skipped": 1, "details_redacted": 1},
        "cohort_memberships": 2,
        "cohort_batch_user_lists": 3, "cohort_batch_examples": 1, "platform_tags": 1, "catalog_entries": 1,
        "app_error_texts": 1}}
    assert PERSON not in response.get_data(as_text=True)
    after = every_row(database_url)
    assert all(other_tenant.app_id in row for rows in naming_the_person(after).values() for row in rows)
    # Every row that did not name the person (or named them in the other app) is as it was, but for the
    # rows the erasure edits in place: the app's error text, the batches' user lists, and the other
    # user's event that lost the person's text.
    for table, rows in before.items():
        if table not in ("cohort_batches", "apps"):
            kept = [row for row in rows if not (tenant.app_id in row and any(p.search(v) for v in row for p in NAMING))]
            assert [row for row in kept if row not in after[table]] == [], table
            assert len(after[table]) == len(kept) + (table == "outbox_events"), table
    with runtime.session() as session:
        late = json.loads(session.scalar(select(OutboxEvent.amplitude_event).where(
            OutboxEvent.app_id == tenant.app_id, OutboxEvent.source_event_id == "evt-x-late")))
    assert (late["user_id"], late["event_properties"].get("message_name"), "message_contents" in late["event_properties"]) \
        == (OTHERS[0], "Receipt", False)  # still sent, without the text that named the person
    with runtime.session() as session:
        app = session.get(App, tenant.app_id)
        assert (app.platform_last_error, app.last_delivery_error) == (None, "HTTP 503: Service Unavailable")
        lists = {b.message_id: (json.loads(b.user_ids), b.user_count, b.state, b.claimed_at)
                 for b in session.scalars(select(CohortBatch).where(CohortBatch.app_id == tenant.app_id))}
        examples = {b.message_id: (b.unusable_users, [(e["index"], e["message"]) for e in b.unusable_examples])
                    for b in session.scalars(select(CohortBatch).where(CohortBatch.app_id == tenant.app_id,
                                                                      CohortBatch.unusable_users > 0))}
    assert lists["c1::late"] == (["u-new"], 1, "received", None)  # counts one user fewer: 3 sent, 2 of them theirs
    [(unusable, shown)] = examples.values()  # the entries quoting them lose their text, and still count
    assert (unusable, shown[:2]) == (3, [(3, ERASED_EXAMPLE), (4, ERASED_EXAMPLE)])
    assert shown[2] == (5, 'user_id "x\\u0007" contains a control character or a bidirectional mark.')
    assert sorted(user for users, *_ in lists.values() for user in users) == sorted([*OTHERS, OTHERS[0], "u-new"])
    report = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1", headers=tenant.auth).json
    assert (report["users"]["in_cohort"], report["users"]["matched"]) == (2, 2)
    assert report["platform_sync"]["pending"] == 2

    assert erase(client, tenant).json == {"removed": ZERO}  # idempotent
    runtime.runner.run_pending()  # the late batch, queued again by the erasure, applies without them
    # This process forgot the entry at once: a later click of the message is not completed from it.
    post(client, tenant, "events", [event_item("evt-x-later", "message.push.clicked", "sub-x-ios", OTHERS[0],
                                               message={"id": "msg-receipt"})])
    assert not {table: rows for table, rows in naming_the_person(every_row(database_url)).items()
                if any(tenant.app_id in row for row in rows)}
    report = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1", headers=tenant.auth).json
    assert report["users"]["in_cohort"] == 3  # the others and u-new
    other = client.get(f"/v1/apps/{other_tenant.app_id}/cohorts/c1", headers=other_tenant.auth).json
    assert (other["users"]["in_cohort"], other["users"]["matched"]) == (4, 3)  # the person is still the other app's


def test_the_external_id_is_matched_as_stored_exactly(client, runtime, tenant):
    post(client, tenant, "subscriptions", [channel_record("s1", "Email", identifier="a@example.com", external_id="Anna"),
                                           channel_record("s2", "Email", identifier="b@example.com", external_id="team/anna")])
    assert erase(client, tenant, "anna").json == {"removed": ZERO}  # External User IDs are case-sensitive
    assert erase(client, tenant, "%20Anna%20").json["removed"]["channel_records"] == 1  # stripped, as stored
    assert erase(client, tenant, "team%2Fanna").json["removed"]["channel_records"] == 1  # "/" sent as %2F


@pytest.mark.parametrize(("external_id", "message"), [
    ("%20%20", "Must not be empty or only whitespace."),
    ("a" * 257, "Longer than 256 characters; no External User ID is."),
    ("a%0Ab", "Must not contain control characters or bidirectional marks."),
    ("a%00b", "Must not contain control characters or bidirectional marks."),
    ("anonymous", "Is a placeholder, which the bridge never stores as an External User ID."),
], ids=["blank", "too long", "newline", "NUL", "placeholder"])
def test_an_id_no_row_can_hold_is_a_400_naming_the_field(client, tenant, external_id, message):
    response = erase(client, tenant, external_id)
    assert response.status_code == 400
    assert response.json == {"error": "invalid_external_id", "message": f"external_id: {message}",
                             "details": {"external_id": [message]}}


def test_only_the_apps_api_key_may_erase(client, runtime, tenant):
    post(client, tenant, "subscriptions", [channel_record("s1", external_id=PERSON)])
    for headers in ({}, tenant.cohort_auth, new_tenant(runtime, "Other").auth):
        response = erase(client, tenant, **headers) if headers else client.delete(
            f"/v1/apps/{tenant.app_id}/users/{PERSON}")
        assert response.status_code == 401 and response.json["error"] == "unauthorized"
    response = client.delete(f"/v1/apps/no-such-app/users/{PERSON}", headers=tenant.auth)
    assert response.status_code == 401  # an unknown app is answered alike: app ids cannot be probed
    assert erase(client, tenant).json["removed"]["channel_records"] == 1  # nothing was erased before


def test_the_cli_erases_and_prints_the_same_counts(cli, client, runtime, tenant):
    post(client, tenant, "subscriptions", [channel_record("s1", external_id=PERSON)])
    done = cli.invoke(main, ["users", "erase", "--app", tenant.app_id, PERSON])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"removed": {**ZERO, "channel_records": 1}}
    assert PERSON not in done.stderr  # the log line counts, and names no one
    again = cli.invoke(main, ["users", "erase", "--app", tenant.app_id, PERSON])
    assert json.loads(again.stdout) == {"removed": ZERO}
    post(client, tenant, "subscriptions", [channel_record("s2", external_id="CaseUser")])
    other_case = cli.invoke(main, ["users", "erase", "--app", tenant.app_id, "caseuser"])
    assert (other_case.exit_code, json.loads(other_case.stdout)) == (0, {"removed": ZERO})  # as the API answers it
    unknown = cli.invoke(main, ["users", "erase", "--app", "no-such-app", PERSON])
    assert (unknown.exit_code, unknown.stderr.strip()) == (1, "Error: no app with id no-such-app")
    bad = cli.invoke(main, ["users", "erase", "--app", tenant.app_id, " "])
    assert bad.exit_code == 2 and "EXTERNAL_ID" in bad.stderr and "empty" in bad.stderr


def test_the_erasure_is_logged_without_the_person(client, runtime, tenant, caplog):
    post(client, tenant, "subscriptions", [channel_record("s1", identifier=TOKEN, external_id=PERSON)])
    with caplog.at_level("INFO", logger="bridge.privacy.service"):
        assert erase(client, tenant).status_code == 200
    [line] = [r.getMessage() for r in caplog.records if r.name == "bridge.privacy.service"]
    assert tenant.app_id in line and "'channel_records': 1" in line
    assert PERSON not in line and TOKEN not in line


# -- the race with the pusher ---------------------------------------------------------------------

def erase_in_thread(runtime, app_id: str, results: list) -> threading.Thread:
    def run():
        with runtime.session() as session:
            results.append(erase_user(session, app_id, PERSON))
            session.commit()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def waiting_on_a_lock(runtime) -> bool:
    with runtime.session() as session:
        return bool(session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")))


@pytest.mark.parametrize("answer", [amp.Answer(amp.OK, 200, ""), amp.Answer(amp.TRANSIENT, 503, "HTTP 503: busy"),
                                    amp.Answer(amp.TOO_LARGE, 413, "Payload too large")],
                         ids=["Amplitude took the batch", "Amplitude answered 503", "Amplitude answered 413"])
def test_an_erasure_during_a_delivery_loses_no_other_event_and_resurrects_none(client, runtime, tenant, answer,
                                                                                 database_url):
    post(client, tenant, "subscriptions", [channel_record("s1", external_id=PERSON), channel_record("s2", external_id="ben")])
    post(client, tenant, "events", [event_item("e1", subscription_id="s1", external_id=PERSON),
                                    event_item("e2", subscription_id="s2", external_id="ben")])
    postgres = is_postgresql_url(database_url)
    results: list = []
    threads: list[threading.Thread] = []
    sent_after: list[str] = []  # the users of the events sent once the erasure had begun

    def send(url, api_key, payloads):
        """Amplitude. Its first answer comes while the person is erased (on PostgreSQL the erasure waits
        for the worker's row locks; on SQLite it deletes under the worker's lease); it takes what follows
        (413: the halves)."""
        if threads:
            sent_after.extend(json.loads(payload)["user_id"] for payload in payloads)
            return amp.Answer(amp.OK, 200, "")
        threads.append(erase_in_thread(runtime, tenant.app_id, results))
        if postgres:
            deadline = time.monotonic() + 10
            while not waiting_on_a_lock(runtime):
                assert time.monotonic() < deadline, "the erasure never waited for the worker's claim"
                time.sleep(0.02)
        else:
            threads[0].join(10)
        return answer

    runtime.amplitude.send = send
    Pusher(runtime).drain(tenant.app_id)
    threads[0].join(10)
    [erased] = results
    # On PostgreSQL the claim in hand is finished first: sent (200, or the halves of a 413), the event is
    # Amplitude's and gone from the outbox; not sent (503), the erasure removes it. On SQLite the erasure
    # removes it at once, and the worker sends it no more.
    sent_whole = postgres and answer.outcome != amp.TRANSIENT
    assert erased.outbox_events["pending"] == (0 if sent_whole else 1)
    assert sorted(sent_after) == (sorted([PERSON, "ben"]) if sent_whole and answer.outcome == amp.TOO_LARGE
                                  else ["ben"] if answer.outcome == amp.TOO_LARGE else [])
    with runtime.session() as session:
        left = {row.source_event_id: row.state for row in session.execute(
            select(OutboxEvent.source_event_id, OutboxEvent.state))}
    assert left == ({"e2": "pending"} if answer.outcome == amp.TRANSIENT else {})  # ben's: retried, or delivered


def is_postgresql_url(database_url: str) -> bool:
    return database_url.startswith("postgresql")


def test_a_batch_claimed_before_the_erasure_is_not_applied_with_the_list_it_read(runtime, tenant, monkeypatch):
    """A run reads the batch's user list when it claims the batch, and applies it in a later transaction:
    an erasure in between takes the claim back, so that run discards its work, and the batch is applied
    again, from the list without them."""
    batch_id = store_cohort_batch(runtime, tenant.app_id, "c1::m1", [PERSON, "u2"], cohort_id="c1")
    apply = cohort_jobs._apply

    def erase_between_claim_and_apply(session, batch_id, claim):
        with runtime.session() as other:
            assert erase_user(other, tenant.app_id, PERSON).cohort_batch_user_lists == 1
            other.commit()
        return apply(session, batch_id, claim)

    monkeypatch.setattr(cohort_jobs, "_apply", erase_between_claim_and_apply)
    assert cohort_jobs.process_batch(batch_id, runtime) is None  # its claim was taken back
    monkeypatch.undo()
    runtime.runner.run_pending()  # the erasure's commit queued the batch again
    with runtime.session() as session:
        assert list(session.scalars(select(CohortMember.user_id))) == ["u2"]
        batch = session.get(CohortBatch, batch_id)
        assert (batch.state, batch.user_count, batch.entered) == ("processed", 1, 1)


def test_an_erasure_while_the_tagger_sends_their_tag_brings_back_no_row(client, runtime, tenant, settings_env,
                                                                        platform_server):
    """The tagger holds no lock while its request is out: the erasure goes ahead, and the outcome the
    tagger records afterwards (a 503, whose retry would write the tag's attempts and the user's next
    time) updates rows that are gone. The request itself reached the platform: the platform's to erase."""
    with runtime.session() as session:
        connect_platform(session, session.get(App, tenant.app_id), platform="onesignal", platform_app_id=PLATFORM_APP,
                         platform_api_key=PLATFORM_KEY)
        session.commit()
    response = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", headers=tenant.cohort_auth,
                           json=cohort_batch([PERSON, "ben"], cohort_id="c1"))
    assert response.status_code == 200
    runtime.runner.run_pending()
    assert client.put(f"/v1/apps/{tenant.app_id}/cohorts/c1/platform-sync", json={"enabled": True},
                      headers=tenant.auth).status_code == 200
    platform_server.add_users(PLATFORM_APP, [PERSON, "ben"])
    platform_server.add_faults([{"status": 503, "delay": 1.0, "users": [PERSON], "apply": True}])
    tagger_runtime = Runtime(Settings.from_env({**settings_env, "PLATFORM_BASE_URL": platform_server.url}))
    tagger = threading.Thread(target=Tagger(tagger_runtime, linger=0).run, args=(tenant.app_id,))
    tagger.start()
    try:
        deadline = time.monotonic() + 10
        while not any(request["external_id"] == PERSON for request in platform_server.requests()) and \
                platform_server.stats()["faults_pending"]:
            assert time.monotonic() < deadline, "the tagger never sent the person's tags"
            time.sleep(0.02)
        with runtime.session() as session:  # the request is out (answered after its 1 s delay)
            assert erase_user(session, tenant.app_id, PERSON).platform_tags == 1
            session.commit()
        assert tagger.is_alive()  # still waiting for the platform's answer
        tagger.join(20)
    finally:
        tagger_runtime.close()
    with runtime.session() as session:
        left = {(tag.external_id, tag.state) for tag in session.scalars(select(PlatformTag))}
        users = set(session.scalars(select(PlatformUser.external_id)))
    assert (left, users) == ({("ben", "synced")}, {"ben"})
    assert platform_server.tags(PLATFORM_APP, PERSON) == {"amplitude_cohort_c1": "1"}  # the platform's to erase


# -- two erasures at once -------------------------------------------------------------------------

def another_backend_waits_on_a_lock(runtime) -> bool:
    """Another connection to this test's database waits on a lock (a row's, or an advisory lock). Each
    call has its own transaction: PostgreSQL shows a transaction the same pg_stat_activity throughout."""
    with runtime.session() as session:
        return bool(session.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database() "
            "AND pid <> pg_backend_pid()")))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_erasures_in_one_app_at_once_do_not_deadlock(app, client, runtime, tenant, monkeypatch):
    """Alice's event carries Ben's address and Ben's carries hers (each a message personalised for the
    other). Alice's erasure deletes her events; Ben's then begins. Each has to lock the other's event to
    take its own address out of it: without the erasures of one app taking turns, each waits for the
    other, and PostgreSQL rolls one back (a 503). With them, Ben's waits for Alice's to commit."""
    alice, ben = ("alice-0001", "alice@example.com"), ("ben-0002", "ben@example.com")
    post(client, tenant, "subscriptions", [channel_record("sub-alice", "Email", identifier=alice[1], external_id=alice[0]),
                                           channel_record("sub-ben", "Email", identifier=ben[1], external_id=ben[0])])
    post(client, tenant, "events", [
        event_item("evt-alice", "message.email.opened", "sub-alice", alice[0], device_type="Email",
                   message={"id": "msg-invite-a", "name": "Invite", "title": f"Ben invites you: {ben[1]}"}),
        event_item("evt-ben", "message.email.opened", "sub-ben", ben[0], device_type="Email",
                   message={"id": "msg-invite-b", "name": "Invite", "title": f"Alice invites you: {alice[1]}"})])
    alice_deleted = threading.Event()
    redact = privacy_service._redact_events

    def redact_once_ben_waits(session, *args):
        if threading.current_thread().name == "alice":
            alice_deleted.set()
            deadline = time.monotonic() + 10
            while not another_backend_waits_on_a_lock(runtime):
                assert time.monotonic() < deadline, "Ben's erasure never waited for Alice's"
                time.sleep(0.02)
        return redact(session, *args)

    monkeypatch.setattr(privacy_service, "_redact_events", redact_once_ben_waits)
    answers: dict[str, object] = {}

    def erase_in_thread(name: str, external_id: str) -> threading.Thread:
        thread = threading.Thread(name=name, target=lambda: answers.update(
            {name: erase(app.test_client(), tenant, external_id)}))
        thread.start()
        return thread

    threads = [erase_in_thread("alice", alice[0])]
    assert alice_deleted.wait(10)
    threads.append(erase_in_thread("ben", ben[0]))
    for thread in threads:
        thread.join(30)
    assert {name: (a.status_code, a.json) for name, a in answers.items()} == {
        "alice": (200, {"removed": {**ZERO, "channel_records": 1, "catalog_entries": 1,
                                    "outbox_events": {**ZERO["outbox_events"], "pending": 1, "details_redacted": 1}}}),
        "ben": (200, {"removed": {**ZERO, "channel_records": 1, "catalog_entries": 1,
                                  "outbox_events": {**ZERO["outbox_events"], "pending": 1}}})}
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == 0


# -- which texts name the person --------------------------------------------------------------------

def catalog_texts(runtime, app_id: str) -> set[str]:
    with runtime.session() as session:
        return set(session.scalars(select(MessageCatalogEntry.name).where(MessageCatalogEntry.app_id == app_id)))


def platform_error(runtime, app_id: str, value: str | None = OMIT) -> str | None:
    """The app's last platform error, after setting it to `value` when given."""
    with runtime.session() as session:
        if value is not OMIT:
            session.execute(update(App).where(App.id == app_id).values(platform_last_error=value))
            session.commit()
        return session.get(App, app_id).platform_last_error


@pytest.mark.parametrize("external_id", ["50", "42", "anna"])
def test_a_short_external_id_is_not_searched_for_in_other_peoples_texts(client, runtime, tenant, external_id):
    """A short External User ID is a word of ordinary campaign text: erasing its person leaves other
    people's catalog entries and the app's errors alone; their channel identifiers are still searched for."""
    post(client, tenant, "subscriptions", [channel_record("sub-p", "Email", identifier="p@example.com",
                                                          external_id=external_id)])
    campaign, receipt = f"{external_id}% off today", "Your receipt, p@example.com"
    post(client, tenant, "events", [
        event_item("evt-o", subscription_id="sub-o", external_id="other-user", message={"id": "m1", "name": campaign}),
        event_item("evt-p", subscription_id="sub-p", external_id=external_id, device_type="Email",
                   kind="message.email.opened", message={"id": "m2", "name": receipt})])
    error = platform_error(runtime, tenant.app_id, f"HTTP 400: {external_id} tags at most")

    removed = erase(client, tenant, external_id).json["removed"]

    assert (removed["catalog_entries"], removed["app_error_texts"]) == (1, 0)
    assert (catalog_texts(runtime, tenant.app_id), platform_error(runtime, tenant.app_id)) == ({campaign}, error)


@pytest.mark.parametrize("external_id", ["customer-42", "a@b.de", "+4915112345"],
                         ids=["8 characters or more", "e-mail address", "phone number"])
def test_a_distinctive_external_id_is_taken_out_of_the_texts_that_hold_it(client, runtime, tenant, external_id):
    kept = "50% off today"
    post(client, tenant, "events", [
        event_item("evt-o", subscription_id="sub-o", external_id="other-user", message={"id": "m1", "name": kept}),
        event_item("evt-x", subscription_id="sub-o", external_id="other-user",
                   message={"id": "m2", "name": f"Hello {external_id}!"})])
    platform_error(runtime, tenant.app_id, f"HTTP 409: the alias {external_id} belongs to another user")

    removed = erase(client, tenant, external_id.replace("+", "%2B")).json["removed"]

    assert (removed["catalog_entries"], removed["app_error_texts"]) == (1, 1)
    assert (catalog_texts(runtime, tenant.app_id), platform_error(runtime, tenant.app_id)) == ({kept}, None)


def test_examples_of_unusable_cohort_entries_lose_the_text_that_quotes_the_person(client, runtime, tenant):
    """An example quotes one user_id as sent, never campaign text: a short id is looked for there too."""
    post(client, tenant, "subscriptions", [channel_record("sub-p", "Email", identifier="p@example.com", external_id="50")])
    response = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", headers=tenant.cohort_auth,
                           json=cohort_batch(["50", "50\u0007", "P@example.com\u202e", "500\u0007"], cohort_id="c1"))
    assert response.json["unusable_users"] == 3

    assert erase(client, tenant, "50").json["removed"]["cohort_batch_examples"] == 1

    with runtime.session() as session:
        batch = session.scalars(select(CohortBatch)).one()
    assert (batch.unusable_users, batch.unusable_reasons) == (3, {"control_character_in_user_id": 3})
    assert [(e["index"], e["message"]) for e in batch.unusable_examples] == [
        (1, ERASED_EXAMPLE), (2, ERASED_EXAMPLE),
        (3, 'user_id "500\\u0007" contains a control character or a bidirectional mark.')]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_intake_waits_for_an_erasure_and_the_erasure_never_waits_for_it(app, client, runtime, tenant,
                                                                             monkeypatch):
    """Lock order: the erasure has deleted the person's channel record when events arrive that name
    another user on it, with a message quoting the person's address. The intake waits for the
    record; the erasure goes on to the catalog and the app, which the intake has not reached: both
    answer, none rolled back."""
    person, address = "stress-user-01", "st@example.com"
    post(client, tenant, "subscriptions", [channel_record("sub-st", "Email", identifier=address, external_id=person)])
    post(client, tenant, "events", [event_item("evt-1", "message.email.opened", "sub-st", person, device_type="Email",
                                               message={"id": "m1", "name": "Hi", "title": f"For {address}"})])
    records_deleted = threading.Event()
    erase_catalog_entries = privacy_service._erase_catalog_entries

    def once_the_intake_waits(*args):
        records_deleted.set()
        deadline = time.monotonic() + 10
        while not another_backend_waits_on_a_lock(runtime):
            assert time.monotonic() < deadline, "the intake never waited for the erasure"
            time.sleep(0.02)
        return erase_catalog_entries(*args)

    monkeypatch.setattr(privacy_service, "_erase_catalog_entries", once_the_intake_waits)
    answers: dict[str, object] = {}
    erasure = threading.Thread(target=lambda: answers.update(erasure=erase(app.test_client(), tenant, person)))
    erasure.start()
    assert records_deleted.wait(10)
    monkeypatch.setattr(privacy_service, "_erase_catalog_entries", erase_catalog_entries)
    answers["intake"] = app.test_client().post(
        f"/v1/apps/{tenant.app_id}/events", headers=tenant.auth,
        json=[event_item("evt-2", "message.email.opened", "sub-st", "new-owner", device_type="Email",
                         message={"id": "m1", "title": f"For {address}"}, timestamp=T0 + 1)])
    erasure.join(30)
    assert (answers["erasure"].status_code, answers["intake"].status_code) == (200, 202)
    removed = answers["erasure"].json["removed"]
    assert (removed["channel_records"], removed["outbox_events"]["pending"], removed["catalog_entries"]) == (1, 1, 1)
    with runtime.session() as session:  # what arrived after the erasure is stored, as for any new user
        assert session.scalar(select(OutboxEvent.user_id)) == "new-owner"
