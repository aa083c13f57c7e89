"""Message-lifecycle events → Amplitude events, under the names of Amplitude's OneSignal integration.

Pure functions: no database, no I/O. The intake validates the source event first; this module only
translates it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bridge import times

AMPLITUDE_STRING_LIMIT = 1024  # Amplitude cuts longer strings; cutting here keeps batches small.

# Ids Amplitude rejects as placeholders: such an External User ID is treated as absent.
PLACEHOLDER_IDS = frozenset(
    {"", "null", "none", "nil", "undefined", "anonymous", "0", "-1", "unknown", "[]", "{}",
     "00000000-0000-0000-0000-000000000000"}
)


@dataclass(frozen=True)
class Rule:
    event_type: str
    message_type: str
    properties: str  # which property set the kind carries: push | iam_display | iam_click | email | sms


RULES: dict[str, Rule] = {
    "message.push.sent": Rule("Push Pending Delivery", "push", "push"),
    "message.push.received": Rule("Push Confirmed Delivery", "push", "push"),
    "message.push.clicked": Rule("Push Clicked", "push", "push"),
    "message.iam.displayed": Rule("IAM Displayed", "in-app", "iam_display"),
    "message.iam.impression": Rule("IAM Displayed", "in-app", "iam_display"),
    "message.iam.clicked": Rule("In-App Message Clicked", "in-app", "iam_click"),
    "message.email.sent": Rule("Email Pending Delivery", "email", "email"),
    "message.email.opened": Rule("Email Opened", "email", "email"),
    "message.email.clicked": Rule("Email Clicked", "email", "email"),
    "message.sms.sent": Rule("SMS Pending Delivery", "sms", "sms"),
}
MAPPED_KINDS = frozenset(RULES)
# Kinds whose events must name the message they belong to (delivery_id is required).
KINDS_REQUIRING_MESSAGE_ID = frozenset(k for k, r in RULES.items() if r.properties in ("push", "email", "sms"))

_PLATFORMS = (
    ("ios", "iOS"), ("android", "Android"), ("huawei", "Android"), ("amazon", "Android"),
    ("chrome", "Web"), ("firefox", "Web"), ("safari", "Web"), ("edge", "Web"), ("web", "Web"),
    ("macos", "macOS"), ("windows", "Windows"), ("email", "Email"), ("sms", "SMS"),
)


def localized(value: object) -> str | None:
    """A title/contents value: a string as is, or a per-language object's `en` text, else its first."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value:
        text = value.get("en")
        if text is None:
            text = next(iter(value.values()))
        return text if isinstance(text, str) else None
    return None


def non_placeholder_id(value: str | None) -> str | None:
    """`value` stripped, or None when it is empty or a placeholder Amplitude would reject."""
    if value is None:
        return None
    value = value.strip()
    return None if value.lower() in PLACEHOLDER_IDS else value


def platform_for(device_type: str | None) -> str | None:
    """Amplitude's `platform` for a subscription device type (iOS, AndroidPush, ChromePush, Email, ...)."""
    if not device_type:
        return None
    lowered = device_type.lower()
    for needle, platform in _PLATFORMS:
        if needle in lowered:
            return platform
    return device_type


def epoch_millis(timestamp: float | None, iso: datetime | None) -> int:
    """Event time in epoch milliseconds. `timestamp` (seconds, or milliseconds: `bridge.times`) wins
    when both are given: it is the platform's own number; `iso` (event.datetime) is used without it."""
    if timestamp is not None:
        return times.epoch_millis(timestamp)
    assert iso is not None
    return int(iso.timestamp() * 1000)


def to_amplitude(item: dict, user_id: str) -> dict:
    """The Amplitude event for a validated source `item` (see intake.schemas) attributed to `user_id`."""
    event, message, data = item["event"], item.get("message") or {}, item.get("data") or {}
    rule = RULES[event["kind"]]
    props: dict[str, object] = {"message_type": rule.message_type}
    _put(props, "message_name", message.get("name"))
    if rule.properties == "push":
        _put(props, "message", message.get("title"))
        _put(props, "message_contents", message.get("contents"))
    elif rule.properties == "email":
        _put(props, "message", message.get("title"))
    elif rule.properties == "sms":
        text = message.get("contents") or message.get("title")
        _put(props, "message", text)
        _put(props, "message_contents", text)
    elif rule.properties == "iam_click":
        _put(props, "click_action_id", data.get("target_id"))
    _put(props, "delivery_id", message.get("id"))

    out: dict[str, object] = {
        "event_type": rule.event_type,
        "user_id": user_id,
        "device_id": event["subscription_id"],
        "time": epoch_millis(event.get("timestamp"), event.get("datetime")),
        "insert_id": insert_id_for(event["id"]),
        "event_properties": props,
    }
    platform = platform_for(event.get("subscription_device_type"))
    if platform:
        out["platform"] = platform
    return out


def insert_id_for(source_event_id: str) -> str:
    """Amplitude's dedup key: the platform's own event id, so a re-post or a retry can never count twice."""
    return source_event_id


def _put(props: dict[str, object], key: str, value: object) -> None:
    """Set a property, cut to Amplitude's limit; a missing or blank value is left out, never sent empty."""
    if value is None or (isinstance(value, str) and (not value or value.isspace())):
        return
    if isinstance(value, str) and len(value) > AMPLITUDE_STRING_LIMIT:
        value = value[:AMPLITUDE_STRING_LIMIT]
    props[key] = value
