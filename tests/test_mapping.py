"""Every row of the mapping table, exactly as Amplitude users know it from the OneSignal integration."""
from __future__ import annotations

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


def test_the_table_covers_every_mapped_kind():
    assert {row[0] for row in ROWS} == mapping.MAPPED_KINDS


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
