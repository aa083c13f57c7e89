"""An app's vocabulary end to end: its naming profile, its own event names and the kinds it sends,
set from the CLI, shown by the CLI and the API, and applied by the intake to the events accepted after."""
from __future__ import annotations

import json
from datetime import timedelta

import orjson
import pytest
from freezegun import freeze_time
from sqlalchemy import select, update

from bridge import mapping
from bridge.apps.models import App
from bridge.cli import main
from bridge.db import utcnow
from bridge.delivery.models import OutboxEvent
from bridge.delivery.replay import replay
from bridge.registry.service import Observation, observe_events
from support.factories import event_item, new_tenant

# Every spelling the stream sends, with the event_type each profile gives it (None: not sent).
EVERY_KIND = {
    "message.push.sent": ("Push Pending Delivery", "[Onesignal] Push Delivered"),
    "message.push.received": ("Push Confirmed Delivery", "[Onesignal] Push Confirmed delivery"),
    "message.push.clicked": ("Push Clicked", "[Onesignal] Push Clicked"),
    "message.push.failed": (None, "[Onesignal] Push Failed"),
    "message.push.unsubscribed": (None, "[Onesignal] Push Unsubscribed"),
    "message.iam.displayed": ("IAM Displayed", "[Onesignal] IAM Displayed"),
    "message.iam.impression": ("IAM Displayed", "[Onesignal] IAM Displayed"),
    "message.iam.clicked": ("In-App Message Clicked", "[Onesignal] IAM Clicked"),
    "message.iam.page_displayed": (None, "[Onesignal] IAM Page Displayed"),
    "message.iam.pagedisplayed": (None, "[Onesignal] IAM Page Displayed"),
    "message.email.sent": ("Email Pending Delivery", "[Onesignal] Email Delivered"),
    "message.email.received": (None, "[Onesignal] Email Confirmed delivery"),
    "message.email.opened": ("Email Opened", "[Onesignal] Email Opened"),
    "message.email.clicked": ("Email Clicked", "[Onesignal] Email Clicked"),
    "message.email.unsubscribed": (None, "[Onesignal] Email Unsubscribed"),
    "message.email.reported_as_spam": (None, "[Onesignal] Email Reported as SPAM"),
    "message.email.bounced": (None, "[Onesignal] Email Hard bounced"),
    "message.email.hardbounced": (None, "[Onesignal] Email Hard bounced"),
    "message.email.failed": (None, "[Onesignal] Email Failed delivery"),
    "message.email.suppressed": (None, "[Onesignal] Email Not delivering to suppressed email address"),
    "message.email.supressed": (None, "[Onesignal] Email Not delivering to suppressed email address"),
    "message.sms.sent": ("SMS Pending Delivery", "[Onesignal] SMS Delivered"),
    "message.sms.delivered": (None, "[Onesignal] SMS Confirmed delivery"),
    "message.sms.failed": (None, "[Onesignal] SMS Failed delivery"),
    "message.sms.undelivered": (None, "[Onesignal] SMS Failed delivery"),
    "message.live_activity.sent": (None, None),
    "message.live_activity.delivered": (None, None),
    "message.live_activity.clicked": (None, None),
    "message.live_activity.failed": (None, None),
    "message.live_activity.unsubscribed": (None, None),
}


def post(client, tenant, body):
    return client.post(f"/v1/apps/{tenant.app_id}/events", json=body, headers=tenant.auth)


def stored_event_types(runtime, app_id: str) -> dict[str, str]:
    with runtime.session() as session:
        rows = session.execute(select(OutboxEvent.kind, OutboxEvent.amplitude_event).where(OutboxEvent.app_id == app_id))
        return {kind: orjson.loads(event)["event_type"] for kind, event in rows}


def every_kind_items(prefix: str) -> list[dict]:
    return [event_item(f"{prefix}-{i}", kind, f"sub-{i}", f"user-{i}") for i, kind in enumerate(EVERY_KIND)]


def test_the_spelling_table_is_every_kind_the_stream_sends():
    assert set(EVERY_KIND) == mapping.KNOWN_KINDS


@pytest.mark.parametrize(("naming", "column"), [("onesignal-2022", 0), ("onesignal-current", 1)])
def test_every_kind_and_spelling_is_accepted_named_or_ignored_by_the_profile(client, runtime, naming, column):
    tenant = new_tenant(runtime, naming=naming)
    answer = post(client, tenant, every_kind_items("e")).json
    expected = {kind: names[column] for kind, names in EVERY_KIND.items() if names[column]}
    assert answer == {"accepted": len(expected), "skipped": 0, "duplicates": 0,
                      "ignored": len(EVERY_KIND) - len(expected), "rejected": []}
    assert stored_event_types(runtime, tenant.app_id) == expected


def test_an_override_sends_a_live_activity_and_renames_a_profiles_kind(client, runtime):
    tenant = new_tenant(runtime, naming="onesignal-current",
                        event_names={"message.live_activity.clicked": "Live Activity Clicked",
                                     "message.email.hardbounced": "Email Bounced"})
    post(client, tenant, [event_item("e1", "message.live_activity.clicked", "s1", "u1"),
                          event_item("e2", "message.email.bounced", "s2", "u2"),
                          event_item("e3", "message.email.hardbounced", "s3", "u3"),
                          event_item("e4", "message.live_activity.sent", "s4", "u4")])
    types = stored_event_types(runtime, tenant.app_id)
    assert types == {"message.live_activity.clicked": "Live Activity Clicked",
                     "message.email.bounced": "Email Bounced", "message.email.hardbounced": "Email Bounced"}


def test_a_new_profile_applies_to_events_accepted_after_it_within_the_auth_cache_delay(client, runtime, tenant, cli):
    with freeze_time(utcnow()) as frozen:
        assert post(client, tenant, event_item("before", "message.push.sent")).json["accepted"] == 1
        assert post(client, tenant, event_item("unnamed", "message.push.failed")).json["ignored"] == 1
        result = cli.invoke(main, ["apps", "update", tenant.app_id, "--naming", "onesignal-current"])
        assert result.exit_code == 0, result.output
        frozen.tick(timedelta(seconds=runtime.settings.auth_cache_seconds))
        assert post(client, tenant, event_item("after", "message.push.sent")).json["accepted"] == 1
        assert post(client, tenant, event_item("failed", "message.push.failed")).json["accepted"] == 1
    with runtime.session() as session:
        events = {row.source_event_id: orjson.loads(row.amplitude_event) for row in session.scalars(select(OutboxEvent))}
    assert events["before"]["event_type"] == "Push Pending Delivery" and "message_title" not in events["before"]["event_properties"]
    assert events["after"]["event_type"] == "[Onesignal] Push Delivered"
    assert events["after"]["event_properties"]["source"] == "onesignal"
    assert events["failed"]["event_type"] == "[Onesignal] Push Failed"


def test_an_event_waiting_for_its_user_keeps_the_names_it_was_accepted_under(client, runtime, tenant, cli):
    assert post(client, tenant, event_item("waits", "message.push.clicked", "sub-9", None)).json["skipped"] == 1
    assert cli.invoke(main, ["apps", "update", tenant.app_id, "--naming", "onesignal-current"]).exit_code == 0
    with runtime.session() as session:
        observe_events(session, tenant.app_id, [Observation("sub-9", "iOS", "user-9", "message.push.sent", 1)])
        assert replay(session, app_id=tenant.app_id, reason="unresolved_user").requeued == 1
        session.commit()
        row = session.scalars(select(OutboxEvent)).one()
    event = orjson.loads(row.amplitude_event)
    assert (row.state, event["event_type"], event["user_id"]) == ("pending", "Push Clicked", "user-9")
    assert event["event_properties"]["message_name"] == "Campaign"


def test_an_event_stored_waiting_before_naming_at_intake_is_replayed_under_2022(client, runtime, tenant, cli):
    """Rows stored before this release hold only the source item (migration 0009's `source_item`)."""
    assert post(client, tenant, event_item("old", "message.email.opened", "sub-9", None)).json["skipped"] == 1
    with runtime.session() as session:
        row = session.scalars(select(OutboxEvent)).one()
        item = {**orjson.loads(row.amplitude_event), "user_id": None}
        assert "user_id" not in orjson.loads(row.amplitude_event)
        source = event_item("old", "message.email.opened", "sub-9", None)
        source["event"]["timestamp"] = float(source["event"]["timestamp"])
        session.execute(update(OutboxEvent).values(amplitude_event=None, source_item=orjson.dumps(
            {**source, "event": {**source["event"], "datetime": None, "data": None}, "user": None}).decode()))
        session.execute(update(App).values(naming="onesignal-current"))
        session.commit()
        observe_events(session, tenant.app_id, [Observation("sub-9", "Email", "user-9", "message.email.sent", 1)])
        assert replay(session, app_id=tenant.app_id, reason="unresolved_user").requeued == 1
        session.commit()
        event = orjson.loads(session.scalars(select(OutboxEvent.amplitude_event)).one())
    assert (event["event_type"], event["user_id"]) == ("Email Opened", "user-9")
    assert event["time"] == item["time"]


# -- the CLI and the API ------------------------------------------------------------------------------

def invoke(cli, *args):
    result = cli.invoke(main, list(args))
    return result.exit_code, result.output


def test_the_cli_sets_the_profile_and_names_and_lists_them(cli, runtime):
    code, out = invoke(cli, "apps", "create", "--name", "Shop", "--amplitude-api-key", "amp-key-1",
                       "--naming", "onesignal-current", "--event-name", "message.live_activity.sent=Live Activity Sent")
    assert code == 0, out
    app_id = json.loads(out)["app_id"]
    code, out = invoke(cli, "apps", "update", app_id, "--event-name", "message.iam.pagedisplayed=IAM Page Viewed",
                       "--event-name", "message.push.clicked=Notification Opened")
    assert code == 0, out
    listed = json.loads(invoke(cli, "apps", "list")[1])[0]
    assert listed["naming"] == "onesignal-current"
    assert listed["event_names"] == {"message.iam.page_displayed": "IAM Page Viewed",
                                     "message.live_activity.sent": "Live Activity Sent",
                                     "message.push.clicked": "Notification Opened"}
    assert listed["enabled_kinds"] is None
    assert listed["event_types"]["message.push.clicked"] == "Notification Opened"
    assert listed["event_types"]["message.push.sent"] == "[Onesignal] Push Delivered"
    assert listed["event_types"]["message.live_activity.sent"] == "Live Activity Sent"
    assert "message.live_activity.failed" not in listed["event_types"]
    # KIND= removes the app's own name: the profile's applies again
    code, out = invoke(cli, "apps", "update", app_id, "--event-name", "message.push.clicked=")
    assert code == 0 and json.loads(out)["event_types"]["message.push.clicked"] == "[Onesignal] Push Clicked"


@pytest.mark.parametrize(("args", "error"), [
    (["--naming", "onesignal-2019"], "Invalid value for '--naming'"),
    (["--event-name", "message.push.sent"], "expected KIND=NAME"),
    (["--event-name", "=Push"], "expected KIND=NAME"),
    (["--event-name", "message.push.exploded=X"], "unknown event kind 'message.push.exploded'"),
    (["--event-name", "message.push.sent=$identify"], "Amplitude's own"),
    (["--event-name", "message.push.sent=" + "x" * 1025], "at most 1,024 characters"),
    (["--kinds", "message.push.failed"], "message.push.failed: no event_type under onesignal-2022"),
    (["--naming", "onesignal-2022", "--kinds", "message.sms.delivered"], "message.sms.delivered: no event_type"),
    (["--kinds", ""], "'all' for every kind"),
    (["--event-name", "message.push.clicked= "], "message.push.clicked: an event_type must not be blank"),
])
def test_the_cli_refuses_a_bad_vocabulary_and_changes_nothing(cli, runtime, tenant, args, error):
    with runtime.session() as session:
        before = {k: v for k, v in vars(session.get(App, tenant.app_id)).items() if not k.startswith("_")}
    code, out = invoke(cli, "apps", "update", tenant.app_id, "--name", "Renamed", *args)
    assert code != 0 and error in out
    with runtime.session() as session:
        after = {k: v for k, v in vars(session.get(App, tenant.app_id)).items() if not k.startswith("_")}
    assert after == before


def test_switching_to_a_profile_that_does_not_name_an_enabled_kind_is_refused(cli, runtime):
    tenant = new_tenant(runtime, naming="onesignal-current", enabled_kinds=["message.sms.delivered"])
    code, out = invoke(cli, "apps", "update", tenant.app_id, "--naming", "onesignal-2022")
    assert code != 0 and "message.sms.delivered: no event_type under onesignal-2022" in out
    code, out = invoke(cli, "apps", "update", tenant.app_id, "--naming", "onesignal-2022",
                       "--event-name", "message.sms.delivered=SMS Delivered")
    assert code == 0, out
    assert json.loads(out)["event_types"] == {"message.sms.delivered": "SMS Delivered"}


def test_the_api_shows_the_app_and_every_kind_as_it_is_treated(client, runtime):
    tenant = new_tenant(runtime, naming="onesignal-2022", event_names={"message.push.failed": "Push Failed"})
    response = client.get(f"/v1/apps/{tenant.app_id}", headers=tenant.auth)
    assert response.status_code == 200
    body = response.json
    assert (body["app_id"], body["naming"], body["event_names"]) == (tenant.app_id, "onesignal-2022",
                                                                     {"message.push.failed": "Push Failed"})
    assert "api_key" not in body and tenant.amplitude_api_key not in json.dumps(body)
    kinds = {row["kind"]: row for row in body["kinds"]}
    assert [row["kind"] for row in body["kinds"]] == list(mapping.KINDS)
    assert kinds["message.push.failed"] == {"kind": "message.push.failed", "event_type": "Push Failed",
                                            "named_by": "override", "sent": True}
    assert kinds["message.push.sent"] == {"kind": "message.push.sent", "event_type": "Push Pending Delivery",
                                          "named_by": "profile", "sent": True}
    assert kinds["message.sms.delivered"] == {"kind": "message.sms.delivered", "event_type": None,
                                              "named_by": None, "sent": False}
    other = new_tenant(runtime, "Other")
    assert client.get(f"/v1/apps/{tenant.app_id}", headers=other.auth).status_code == 401
