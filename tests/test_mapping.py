"""Every row of the mapping table, exactly as Amplitude users know it from the OneSignal integration."""
from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from bridge import mapping
from bridge.intake.schemas import ITEM_SCHEMA
from support.factories import OMIT, event_item

SUB = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"


SPRING_SALE = {"id": "msg-1", "name": "Spring sale", "title": {"en": "50% off", "de": "50% Rabatt"},
               "contents": {"de": "Öffnen", "en": "Open the app"}}
AT = 1763856123  # 2025-11-23T00:02:03Z


PUSH = {"message_name": "Spring sale", "message": "50% off", "message_contents": "Open the app", "delivery_id": "msg-1"}
EMAIL = {"message_name": "Spring sale", "message": "50% off", "delivery_id": "msg-1"}
SMS = {"message_name": "Spring sale", "message": "Open the app", "message_contents": "Open the app", "delivery_id": "msg-1"}
IAM_DISPLAY = {"message_name": "Spring sale", "delivery_id": "msg-1"}
IAM_CLICK = {"message_name": "Spring sale", "click_action_id": "cta-upgrade", "delivery_id": "msg-1"}

ROWS = [
    ("message.push.sent", "Push Pending Delivery", "push", PUSH),
    ("message.push.received", "Push Confirmed Delivery", "push", PUSH),
    ("message.push.clicked", "Push Clicked", "push", PUSH),
    ("message.iam.displayed", "IAM Displayed", "in-app", IAM_DISPLAY),
    ("message.iam.impression", "IAM Displayed", "in-app", IAM_DISPLAY),
    ("message.iam.clicked", "In-App Message Clicked", "in-app", IAM_CLICK),
    ("message.email.sent", "Email Pending Delivery", "email", EMAIL),
    ("message.email.opened", "Email Opened", "email", EMAIL),
    ("message.email.clicked", "Email Clicked", "email", EMAIL),
    ("message.sms.sent", "SMS Pending Delivery", "sms", SMS),
]


def test_the_2022_table_is_every_kind_the_default_profile_sends():
    assert {row[0] for row in ROWS} == set(mapping.DEFAULT_VOCABULARY.sent)


@pytest.mark.parametrize(("kind", "event_type", "message_type", "props"), ROWS, ids=[r[0] for r in ROWS])
def test_mapping_row(kind, event_type, message_type, props):
    raw = event_item(f"ev-{kind}", kind, SUB, "user-000123", timestamp=AT, message=SPRING_SALE,
                     data={"target_id": "cta-upgrade"})
    out = mapping.to_amplitude(ITEM_SCHEMA.load(raw), "user-000123")
    assert out["event_type"] == event_type
    assert out["event_properties"] == {**props, "message_type": message_type}
    assert out["user_id"] == "user-000123"
    assert out["device_id"] == SUB
    assert out["time"] == AT * 1000
    assert out["insert_id"] == f"ev-{kind}"
    assert out["platform"] == "iOS"


# -- onesignal-current: the names the platform's own Amplitude integration gives its events now --------

CURRENT_ROWS = [
    ("message.push.sent", "[Onesignal] Push Delivered", "push"),
    ("message.push.received", "[Onesignal] Push Confirmed delivery", "push"),
    ("message.push.clicked", "[Onesignal] Push Clicked", "push"),
    ("message.push.failed", "[Onesignal] Push Failed", "push"),
    ("message.push.unsubscribed", "[Onesignal] Push Unsubscribed", "push"),
    ("message.iam.displayed", "[Onesignal] IAM Displayed", "in-app"),
    ("message.iam.impression", "[Onesignal] IAM Displayed", "in-app"),
    ("message.iam.clicked", "[Onesignal] IAM Clicked", "in-app"),
    ("message.iam.page_displayed", "[Onesignal] IAM Page Displayed", "in-app"),
    ("message.iam.pagedisplayed", "[Onesignal] IAM Page Displayed", "in-app"),
    ("message.email.sent", "[Onesignal] Email Delivered", "email"),
    ("message.email.received", "[Onesignal] Email Confirmed delivery", "email"),
    ("message.email.opened", "[Onesignal] Email Opened", "email"),
    ("message.email.clicked", "[Onesignal] Email Clicked", "email"),
    ("message.email.unsubscribed", "[Onesignal] Email Unsubscribed", "email"),
    ("message.email.reported_as_spam", "[Onesignal] Email Reported as SPAM", "email"),
    ("message.email.bounced", "[Onesignal] Email Hard bounced", "email"),
    ("message.email.hardbounced", "[Onesignal] Email Hard bounced", "email"),
    ("message.email.failed", "[Onesignal] Email Failed delivery", "email"),
    ("message.email.suppressed", "[Onesignal] Email Not delivering to suppressed email address", "email"),
    ("message.email.supressed", "[Onesignal] Email Not delivering to suppressed email address", "email"),
    ("message.sms.sent", "[Onesignal] SMS Delivered", "sms"),
    ("message.sms.delivered", "[Onesignal] SMS Confirmed delivery", "sms"),
    ("message.sms.failed", "[Onesignal] SMS Failed delivery", "sms"),
    ("message.sms.undelivered", "[Onesignal] SMS Failed delivery", "sms"),
]
LIVE_ACTIVITY = ["message.live_activity.sent", "message.live_activity.delivered", "message.live_activity.clicked",
                 "message.live_activity.failed", "message.live_activity.unsubscribed"]
CURRENT = mapping.vocabulary(mapping.ONESIGNAL_CURRENT)
TEMPLATED = {**SPRING_SALE, "template_id": "tmpl-7"}


def test_the_current_table_is_every_kind_the_current_profile_sends_and_live_activities_are_not():
    assert {row[0] for row in CURRENT_ROWS} == set(CURRENT.sent)
    assert {row[0] for row in CURRENT_ROWS} | set(LIVE_ACTIVITY) == mapping.KNOWN_KINDS
    assert not any(CURRENT.sends(kind) or mapping.DEFAULT_VOCABULARY.sends(kind) for kind in LIVE_ACTIVITY)


@pytest.mark.parametrize(("kind", "event_type", "message_type"), CURRENT_ROWS, ids=[r[0] for r in CURRENT_ROWS])
def test_current_mapping_row(kind, event_type, message_type):
    raw = event_item(f"ev-{kind}", kind, SUB, "user-000123", timestamp=AT, message=TEMPLATED)
    raw["user"] = {"language": "de", "tags": {"plan": "pro"}}
    out = mapping.to_amplitude(ITEM_SCHEMA.load(raw), "user-000123", CURRENT)
    assert out["event_type"] == event_type
    assert out["event_properties"] == {
        "message_name": "Spring sale", "message_title": "50% off", "message_contents": "Open the app",
        "message_type": message_type, "template_id": "tmpl-7", "subscription_id": SUB, "device_type": "iOS",
        "language": "de", "source": "onesignal", "delivery_id": "msg-1"}
    assert (out["user_id"], out["device_id"], out["time"], out["insert_id"], out["platform"]) == (
        "user-000123", SUB, AT * 1000, f"ev-{kind}", "iOS")


@pytest.mark.parametrize("vocabulary", [CURRENT, mapping.vocabulary(event_names={
    "message.push.failed": "Push Failed", "message.email.failed": "Email Failed", "message.sms.failed": "SMS Failed"})],
    ids=["onesignal-current", "onesignal-2022 with names"])
@pytest.mark.parametrize("kind", ["message.push.failed", "message.email.failed", "message.sms.failed"])
def test_a_failure_carries_its_reason_from_event_data(vocabulary, kind):
    raw = event_item("ev-1", kind, SUB, "u1", message=SPRING_SALE)
    raw["event"]["data"] = {"failure_reason": "InvalidRegistration"}
    out = mapping.to_amplitude(ITEM_SCHEMA.load(raw), "u1", vocabulary)
    assert out["event_properties"]["failure_reason"] == "InvalidRegistration"


@pytest.mark.parametrize("vocabulary", [CURRENT, mapping.DEFAULT_VOCABULARY], ids=["onesignal-current", "onesignal-2022"])
def test_in_app_pages_and_targets_are_carried_from_event_data_or_the_items_data(vocabulary):
    click = event_item("ev-1", "message.iam.clicked", SUB, "u1", message={"id": "iam-1", "name": "Tips"},
                       data={"target_id": "cta-upgrade", "target_name": "Upgrade now"})
    click["event"]["data"] = {"page_id": "p2", "page_name": "Pricing", "target_name": "Upgrade!"}
    props = mapping.to_amplitude(ITEM_SCHEMA.load(click), "u1", vocabulary)["event_properties"]
    # event.data wins over the item's data; each field is carried from wherever it is
    assert {k: props.get(k) for k in ("click_action_id", "target_name", "page_id", "page_name")} == {
        "click_action_id": "cta-upgrade", "target_name": "Upgrade!", "page_id": "p2", "page_name": "Pricing"}


def test_an_empty_failure_reason_in_event_data_does_not_hide_the_items_data():
    raw = event_item("ev-1", "message.push.failed", SUB, "u1", message=SPRING_SALE, data={"failure_reason": "Expired"})
    raw["event"]["data"] = {"failure_reason": ""}
    assert mapping.to_amplitude(ITEM_SCHEMA.load(raw), "u1", CURRENT)["event_properties"]["failure_reason"] == "Expired"


def test_under_current_naming_the_language_comes_from_the_user_only_when_it_is_text():
    raw = event_item("ev-1", "message.push.clicked", SUB, "u1", message=SPRING_SALE)
    for user, expected in [(None, None), ({"language": "fr"}, "fr"), ({"language": 3}, None), ({"tags": {}}, None)]:
        raw["user"] = user
        assert mapping.to_amplitude(ITEM_SCHEMA.load(raw), "u1", CURRENT)["event_properties"].get("language") == expected


# -- the app's own names: which kinds, under which event_type -------------------------------------------

def test_an_apps_own_name_wins_over_its_profiles_and_sends_a_kind_the_profile_leaves_out():
    vocab = mapping.vocabulary(mapping.ONESIGNAL_2022, {"message.push.clicked": "Notification Opened",
                                                        "message.email.hardbounced": "Email Bounced",
                                                        "message.live_activity.sent": "Live Activity Sent"})
    assert dict(vocab.event_names) == {"message.push.clicked": "Notification Opened",
                                       "message.email.bounced": "Email Bounced",
                                       "message.live_activity.sent": "Live Activity Sent"}
    assert vocab.sent["message.push.clicked"] == "Notification Opened"
    # an older spelling of a named kind is named too
    assert vocab.sent["message.email.bounced"] == vocab.sent["message.email.hardbounced"] == "Email Bounced"
    assert vocab.sent["message.push.sent"] == "Push Pending Delivery"
    assert not vocab.sends("message.push.failed")
    live = event_item("ev-1", "message.live_activity.sent", SUB, "u1", message=SPRING_SALE)
    out = mapping.to_amplitude(ITEM_SCHEMA.load(live), "u1", vocab)
    assert out["event_type"] == "Live Activity Sent"
    assert out["event_properties"] == {**PUSH, "message_type": "live_activity"}


def test_enabled_kinds_narrow_what_is_sent_in_any_spelling():
    vocab = mapping.vocabulary(mapping.ONESIGNAL_CURRENT, None, ["message.iam.impression", "message.email.supressed"])
    assert vocab.enabled == {"message.iam.displayed", "message.email.suppressed"}
    assert set(vocab.sent) == {"message.iam.displayed", "message.iam.impression", "message.email.suppressed",
                               "message.email.supressed"}


@pytest.mark.parametrize(("naming", "names", "kinds", "error"), [
    ("onesignal-2019", None, None, "unknown naming profile 'onesignal-2019'"),
    (None, {"message.push.exploded": "X"}, None, "unknown event kind 'message.push.exploded'"),
    (None, None, ["message.push.sent", "push.sent"], "unknown event kind 'push.sent'"),
    (None, None, [], "enabled kinds must not be empty"),
    (None, {"message.push.sent": ""}, None, "an event_type must not be blank"),
    (None, {"message.push.sent": "   "}, None, "an event_type must not be blank"),
    (None, {"message.push.sent": "x" * 1025}, None, "at most 1,024 characters"),
    (None, {"message.push.sent": "Push\nSent"}, None, "control characters"),
    (None, {"message.push.sent": "$identify"}, None, "Amplitude's own"),
    (None, {"message.push.sent": "[Amplitude] Start Session"}, None, "Amplitude's own"),
    ("onesignal-2022", None, ["message.push.failed"], "message.push.failed: no event_type under onesignal-2022"),
])
def test_invalid_vocabularies_are_refused_naming_the_fault(naming, names, kinds, error):
    with pytest.raises(mapping.VocabularyError, match=re.escape(error)):
        mapping.vocabulary(naming, names, kinds)


def test_the_longest_event_type_amplitude_keeps_is_accepted():
    assert mapping.vocabulary(None, {"message.push.sent": "x" * 1024}).sent["message.push.sent"] == "x" * 1024


def test_in_app_events_without_a_message_id_carry_no_delivery_id():
    raw = event_item("e1", "message.iam.displayed", SUB, OMIT, device_type=OMIT, message={"name": "Welcome"})
    out = mapping.to_amplitude(ITEM_SCHEMA.load(raw), "u1")
    assert out["event_properties"] == {"message_name": "Welcome", "message_type": "in-app"}


@pytest.mark.parametrize(("value", "expected"), [
    ("plain", "plain"), ({"en": "hello", "fr": "salut"}, "hello"), ({"fr": "salut", "de": "hallo"}, "salut"),
    ({}, None), (None, None),
])
def test_localized_text_takes_english_else_the_first(value, expected):
    assert mapping.localized(value) == expected


def test_time_from_iso_datetime_and_from_milliseconds():
    assert mapping.epoch_millis(None, datetime(2025, 11, 23, 0, 2, 3, tzinfo=UTC)) == 1763856123000
    assert mapping.epoch_millis(1763856123456, None) == 1763856123456
    assert mapping.epoch_millis(1763856123.5, None) == 1763856123500


@pytest.mark.parametrize(("device_type", "platform"), [
    ("iOS", "iOS"), ("iOSPush", "iOS"), ("Android", "Android"), ("AndroidPush", "Android"), ("HuaweiPush", "Android"),
    ("ChromePush", "Web"), ("FirefoxPush", "Web"), ("SafariPush", "Web"), ("Email", "Email"), ("SMS", "SMS"),
    ("macOSPush", "macOS"), (None, None),
])
def test_platform_from_device_type(device_type, platform):
    assert mapping.platform_for(device_type) == platform


@pytest.mark.parametrize("placeholder", ["", "  ", "null", "NULL", "anonymous", "0", "-1", "undefined"])
def test_placeholder_external_ids_count_as_absent(placeholder):
    assert mapping.non_placeholder_id(placeholder) is None
    assert mapping.non_placeholder_id(" user-1 ") == "user-1"


def test_long_strings_are_cut_at_amplitudes_limit():
    raw = event_item(message={**SPRING_SALE, "contents": "x" * 5000})
    out = mapping.to_amplitude(ITEM_SCHEMA.load(raw), "u1")
    assert len(out["event_properties"]["message_contents"]) == 1024
