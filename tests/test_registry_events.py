"""The event stream keeps the channel registry current: POST /v1/apps/<app_id>/events records unknown
subscriptions and learns External User IDs, which then attribute later events that lack one."""
from __future__ import annotations

from sqlalchemy import select

from bridge.delivery.models import OutboxEvent
from bridge.registry.models import Subscription

T0 = 1763856000


def event(event_id: str, kind: str, subscription_id: str, external_id: str | None, device: str | None = "iOS", at: int = 0):
    return {
        "event": {"id": event_id, "kind": kind, "timestamp": T0 + at, "subscription_id": subscription_id,
                  "subscription_device_type": device, "external_id": external_id},
        "message": {"id": "msg-1", "name": "Spring sale"},
    }


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
    send(client, tenant, event("e1", "message.push.received", "sub-1", "user-123"))
    learned = record(runtime, "sub-1")
    assert (learned.channel, learned.type, learned.external_id, learned.subscribed) == ("push", "iOSPush", "user-123", True)

    send(client, tenant, event("e2", "message.push.clicked", "sub-1", "", at=60))
    assert outbox_user(runtime, "e2") == ("user-123", "pending")
    assert record(runtime, "sub-1").external_id == "user-123"  # an event without one never blanks it


def test_new_records_are_subscribed_when_an_event_proves_delivery_and_else_of_unknown_state(client, tenant, runtime):
    send(client, tenant,
         event("e1", "message.push.sent", "sub-sent", None, device="AndroidPush"),
         event("e2", "message.iam.displayed", "sub-iam", None, device="Android"),
         event("e3", "message.email.opened", "sub-mail", "user-9", device="Email"),
         event("e4", "message.sms.sent", "sub-sms", "user-9", device="SMS"))
    created = {s: record(runtime, s) for s in ("sub-sent", "sub-iam", "sub-mail", "sub-sms")}
    assert {s: (r.type, r.channel, r.subscribed) for s, r in created.items()} == {
        "sub-sent": ("AndroidPush", "push", None),  # sent is not received: unknown, not unsubscribed
        "sub-iam": ("AndroidPush", "push", None),  # the app is in use; push may still be off
        "sub-mail": ("Email", "email", True),
        "sub-sms": ("SMS", "sms", None),
    }
    assert created["sub-sent"].external_id is None and created["sub-mail"].external_id == "user-9"


def test_known_records_keep_their_kind_and_subscription_state_and_the_newest_external_id_wins(client, tenant, runtime):
    imported = {"subscription_id": "sub-1", "type": "ChromePush", "external_id": "old-user", "notification_types": -2}
    assert client.post(f"/v1/apps/{tenant.app_id}/subscriptions", json=imported, headers=tenant.auth).status_code == 200

    send(client, tenant,
         event("e2", "message.push.clicked", "sub-1", "newest-user", device="iOS", at=20),
         event("e1", "message.push.received", "sub-1", "older-user", device="iOS", at=10),
         event("e3", "message.push.received", "sub-1", None, device="iOS", at=30))
    known = record(runtime, "sub-1")
    assert (known.type, known.subscribed, known.external_id) == ("ChromePush", False, "newest-user")


def test_an_unknown_device_type_updates_a_known_record_but_creates_none(client, tenant, runtime):
    client.post(f"/v1/apps/{tenant.app_id}/subscriptions", json={"subscription_id": "sub-1", "type": "SafariPush"},
                headers=tenant.auth)
    send(client, tenant,
         event("e1", "message.push.received", "sub-1", "user-1", device="Smartwatch"),
         event("e2", "message.push.received", "sub-2", "user-2", device=None))
    assert (record(runtime, "sub-1").type, record(runtime, "sub-1").external_id) == ("SafariPush", "user-1")
    assert record(runtime, "sub-2") is None
    assert outbox_user(runtime, "e2") == ("user-2", "pending")


def test_an_event_that_proves_delivery_turns_an_unknown_state_subscribed_and_never_overrides_a_known_one(
        client, tenant, runtime):
    response = client.post(f"/v1/apps/{tenant.app_id}/subscriptions", headers=tenant.auth, json=[
        {"subscription_id": "unknown", "type": "iOSPush", "external_id": "user-1"},
        {"subscription_id": "unknown-odd", "type": "iOSPush"},
        {"subscription_id": "off", "type": "iOSPush", "notification_types": -2},
        {"subscription_id": "still-unknown", "type": "iOSPush"}])
    assert response.json["added"] == 4
    send(client, tenant,
         event("e1", "message.push.received", "unknown", None),
         event("e2", "message.push.clicked", "unknown-odd", "user-2", device="SmartFridge"),
         event("e3", "message.push.received", "off", None),
         event("e4", "message.iam.displayed", "still-unknown", None))
    states = {s: (record(runtime, s).subscribed, record(runtime, s).external_id)
              for s in ("unknown", "unknown-odd", "off", "still-unknown")}
    assert states == {"unknown": (True, "user-1"), "unknown-odd": (True, "user-2"), "off": (False, None),
                      "still-unknown": (None, None)}


def test_a_late_event_older_than_the_one_that_named_the_user_does_not_replace_it(client, tenant, runtime):
    client.post(f"/v1/apps/{tenant.app_id}/subscriptions", headers=tenant.auth,
                json=[{"subscription_id": "odd", "type": "iOSPush"}])  # known, of a type events cannot name
    send(client, tenant, event("e1", "message.push.received", "shared", "u-ana", at=500),
         event("e2", "message.push.received", "odd", "u-ana", device="SmartFridge", at=500))
    send(client, tenant, event("e3", "message.push.clicked", "shared", "u-ben", at=200),  # a retried request
         event("e4", "message.push.clicked", "odd", "u-ben", device="SmartFridge", at=200))
    assert (record(runtime, "shared").external_id, record(runtime, "odd").external_id) == ("u-ana", "u-ana")
    send(client, tenant, event("e5", "message.push.clicked", "odd", "u-carl", device="SmartFridge", at=900))
    assert record(runtime, "odd").external_id == "u-carl"

    send(client, tenant, event("e6", "message.push.clicked", "shared", "u-carl", at=900))
    assert (record(runtime, "shared").external_id, record(runtime, "shared").external_id_at) == ("u-carl", (T0 + 900) * 1000)
    # An import or the API always sets the user; events then compete with the newest event seen.
    client.post(f"/v1/apps/{tenant.app_id}/subscriptions", headers=tenant.auth,
                json=[{"subscription_id": "shared", "type": "iOSPush", "external_id": "u-dave"}])
    send(client, tenant, event("e7", "message.push.clicked", "shared", "u-eve", at=800))
    assert record(runtime, "shared").external_id == "u-dave"
    send(client, tenant, event("e8", "message.push.clicked", "shared", "u-frank", at=1000))
    assert record(runtime, "shared").external_id == "u-frank"
