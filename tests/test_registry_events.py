"""The event stream keeps the channel registry current: POST /v1/apps/<app_id>/events records unknown
subscriptions and learns External User IDs, which then attribute later events that lack one."""
from __future__ import annotations

from sqlalchemy import select

from bridge.delivery.models import OutboxEvent
from bridge.registry.models import Subscription
from support.factories import T0, channel_record, event_item

def send(client, tenant, *events):
    response = client.post(f"/v1/apps/{tenant.app_id}/events", json=list(events), headers=tenant.auth)
    assert response.status_code == 202, response.json
    return response.json


def record(runtime, subscription_id: str) -> Subscription | None:
    with runtime.session() as session:
        return session.scalars(select(Subscription).where(Subscription.subscription_id == subscription_id)).first()


def outbox_user(runtime, event_id: str) -> tuple[str | None, str]:
    with runtime.session() as session:
        row = session.scalars(select(OutboxEvent).where(OutboxEvent.source_event_id == event_id)).one()
        return row.user_id, row.state


def test_a_learned_external_id_attributes_later_events_without_one(client, tenant, runtime):
    send(client, tenant, event_item("e1", "message.push.received", "sub-1", "user-123"))
    learned = record(runtime, "sub-1")
    assert (learned.channel, learned.type, learned.external_id, learned.subscribed) == ("push", "iOSPush", "user-123", True)

    send(client, tenant, event_item("e2", "message.push.clicked", "sub-1", "", timestamp=T0 + 60))
    assert outbox_user(runtime, "e2") == ("user-123", "pending")
    assert record(runtime, "sub-1").external_id == "user-123"  # an event without one never blanks it


def test_new_records_are_subscribed_when_an_event_proves_delivery_and_else_of_unknown_state(client, tenant, runtime):
    send(client, tenant,
         event_item("e1", "message.push.sent", "sub-sent", None, device_type="AndroidPush"),
         event_item("e2", "message.iam.displayed", "sub-iam", None, device_type="Android"),
         event_item("e3", "message.email.opened", "sub-mail", "user-9", device_type="Email"),
         event_item("e4", "message.sms.sent", "sub-sms", "user-9", device_type="SMS"))
    created = {s: record(runtime, s) for s in ("sub-sent", "sub-iam", "sub-mail", "sub-sms")}
    assert {s: (r.type, r.channel, r.subscribed) for s, r in created.items()} == {
        "sub-sent": ("AndroidPush", "push", None),  # sent is not received: unknown, not unsubscribed
        "sub-iam": ("AndroidPush", "push", None),  # the app is in use; push may still be off
        "sub-mail": ("Email", "email", True),
        "sub-sms": ("SMS", "sms", None),
    }
    assert created["sub-sent"].external_id is None and created["sub-mail"].external_id == "user-9"


def test_known_records_keep_their_kind_and_subscription_state_and_the_newest_external_id_wins(client, tenant, runtime):
    imported = channel_record("sub-1", "ChromePush", external_id="old-user", notification_types=-2)
    assert client.post(f"/v1/apps/{tenant.app_id}/subscriptions", json=imported, headers=tenant.auth).status_code == 200

    send(client, tenant,
         event_item("e2", "message.push.clicked", "sub-1", "newest-user", timestamp=T0 + 20),
         event_item("e1", "message.push.received", "sub-1", "older-user", timestamp=T0 + 10),
         event_item("e3", "message.push.received", "sub-1", None, timestamp=T0 + 30))
    known = record(runtime, "sub-1")
    assert (known.type, known.subscribed, known.external_id) == ("ChromePush", False, "newest-user")


def test_an_unknown_device_type_updates_a_known_record_but_creates_none(client, tenant, runtime):
    client.post(f"/v1/apps/{tenant.app_id}/subscriptions", json=channel_record("sub-1", "SafariPush"),
                headers=tenant.auth)
    send(client, tenant,
         event_item("e1", "message.push.received", "sub-1", "user-1", device_type="Smartwatch"),
         event_item("e2", "message.push.received", "sub-2", "user-2", device_type=None))
    assert (record(runtime, "sub-1").type, record(runtime, "sub-1").external_id) == ("SafariPush", "user-1")
    assert record(runtime, "sub-2") is None
    assert outbox_user(runtime, "e2") == ("user-2", "pending")


def test_an_event_that_proves_delivery_turns_an_unknown_state_subscribed_and_never_overrides_a_known_one(
        client, tenant, runtime):
    response = client.post(f"/v1/apps/{tenant.app_id}/subscriptions", headers=tenant.auth, json=[
        channel_record("unknown", external_id="user-1"), channel_record("unknown-odd"),
        channel_record("off", notification_types=-2), channel_record("still-unknown")])
    assert response.json["added"] == 4
    send(client, tenant,
         event_item("e1", "message.push.received", "unknown", None),
         event_item("e2", "message.push.clicked", "unknown-odd", "user-2", device_type="SmartFridge"),
         event_item("e3", "message.push.received", "off", None),
         event_item("e4", "message.iam.displayed", "still-unknown", None))
    states = {s: (record(runtime, s).subscribed, record(runtime, s).external_id)
              for s in ("unknown", "unknown-odd", "off", "still-unknown")}
    assert states == {"unknown": (True, "user-1"), "unknown-odd": (True, "user-2"), "off": (False, None),
                      "still-unknown": (None, None)}


def test_a_late_event_older_than_the_one_that_named_the_user_does_not_replace_it(client, tenant, runtime):
    client.post(f"/v1/apps/{tenant.app_id}/subscriptions", headers=tenant.auth,
                json=[channel_record("odd")])  # known, of a type events cannot name
    send(client, tenant, event_item("e1", "message.push.received", "shared", "u-ana", timestamp=T0 + 500),
         event_item("e2", "message.push.received", "odd", "u-ana", device_type="SmartFridge", timestamp=T0 + 500))
    send(client, tenant, event_item("e3", "message.push.clicked", "shared", "u-ben", timestamp=T0 + 200),  # a retried request
         event_item("e4", "message.push.clicked", "odd", "u-ben", device_type="SmartFridge", timestamp=T0 + 200))
    assert (record(runtime, "shared").external_id, record(runtime, "odd").external_id) == ("u-ana", "u-ana")
    send(client, tenant,
         event_item("e5", "message.push.clicked", "odd", "u-carl", device_type="SmartFridge", timestamp=T0 + 900))
    assert record(runtime, "odd").external_id == "u-carl"

    send(client, tenant, event_item("e6", "message.push.clicked", "shared", "u-carl", timestamp=T0 + 900))
    assert (record(runtime, "shared").external_id, record(runtime, "shared").external_id_at) == ("u-carl", (T0 + 900) * 1000)
    # An import or the API always sets the user; events then compete with the newest event seen.
    client.post(f"/v1/apps/{tenant.app_id}/subscriptions", headers=tenant.auth,
                json=[channel_record("shared", external_id="u-dave")])
    send(client, tenant, event_item("e7", "message.push.clicked", "shared", "u-eve", timestamp=T0 + 800))
    assert record(runtime, "shared").external_id == "u-dave"
    send(client, tenant, event_item("e8", "message.push.clicked", "shared", "u-frank", timestamp=T0 + 1000))
    assert record(runtime, "shared").external_id == "u-frank"
