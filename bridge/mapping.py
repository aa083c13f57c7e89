"""Message-lifecycle events → Amplitude events, under the names a naming profile gives them.

Pure functions: no database, no I/O. The intake validates the source event first; this module only
translates it.

Kinds are those of the platform's Event Streams (documentation.onesignal.com, "Event Stream data
reference": `event.kind`), older spellings included (`ALIASES`: the same kind). A *naming profile*
gives each kind Amplitude's `event_type` and the event's properties:

- `onesignal-2022`: the names of Amplitude's 2022 OneSignal integration (the default);
- `onesignal-current`: the names the platform's own Amplitude integration gives them now.

An app's `Vocabulary` is its profile plus its own overrides (an event_type per kind, which kinds it
sends); a kind with no event_type under either is ignored.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from bridge import times
from bridge.text import has_unprintable

AMPLITUDE_STRING_LIMIT = 1024  # Amplitude cuts longer strings; cutting here keeps batches small.

# Ids Amplitude rejects as placeholders: such an External User ID is treated as absent.
PLACEHOLDER_IDS = frozenset(
    {"", "null", "none", "nil", "undefined", "anonymous", "0", "-1", "unknown", "[]", "{}",
     "00000000-0000-0000-0000-000000000000"}
)

# Every kind the stream sends, by channel, in the platform's current spelling.
KINDS: tuple[str, ...] = (
    "message.push.sent", "message.push.received", "message.push.clicked", "message.push.failed",
    "message.push.unsubscribed",
    "message.iam.displayed", "message.iam.clicked", "message.iam.page_displayed",
    "message.email.sent", "message.email.received", "message.email.opened", "message.email.clicked",
    "message.email.unsubscribed", "message.email.reported_as_spam", "message.email.bounced",
    "message.email.failed", "message.email.suppressed",
    "message.sms.sent", "message.sms.delivered", "message.sms.failed", "message.sms.undelivered",
    "message.live_activity.sent", "message.live_activity.delivered", "message.live_activity.clicked",
    "message.live_activity.failed", "message.live_activity.unsubscribed",
)
# Older spellings the stream still sends: the same kind as the one they name.
ALIASES: dict[str, str] = {
    "message.iam.impression": "message.iam.displayed",
    "message.iam.pagedisplayed": "message.iam.page_displayed",
    "message.email.hardbounced": "message.email.bounced",
    "message.email.supressed": "message.email.suppressed",
}
KNOWN_KINDS = frozenset(KINDS) | frozenset(ALIASES)

# Amplitude's `message_type` property, by channel (the kind's second part).
MESSAGE_TYPES = {"push": "push", "iam": "in-app", "email": "email", "sms": "sms", "live_activity": "live_activity"}
# Kinds whose events must name the message they belong to (delivery_id is required).
KINDS_REQUIRING_MESSAGE_ID = frozenset(
    k for k in KNOWN_KINDS if k.split(".")[1] in ("push", "email", "sms"))

ONESIGNAL_2022 = "onesignal-2022"
ONESIGNAL_CURRENT = "onesignal-current"
DEFAULT_NAMING = ONESIGNAL_2022

# event_type per canonical kind, per profile. A kind a profile leaves out is not sent under it unless
# the app names it (`Vocabulary.event_names`).
PROFILES: dict[str, dict[str, str]] = {
    ONESIGNAL_2022: {
        "message.push.sent": "Push Pending Delivery",
        "message.push.received": "Push Confirmed Delivery",
        "message.push.clicked": "Push Clicked",
        "message.iam.displayed": "IAM Displayed",
        "message.iam.clicked": "In-App Message Clicked",
        "message.email.sent": "Email Pending Delivery",
        "message.email.opened": "Email Opened",
        "message.email.clicked": "Email Clicked",
        "message.sms.sent": "SMS Pending Delivery",
    },
    ONESIGNAL_CURRENT: {
        "message.push.sent": "[Onesignal] Push Delivered",
        "message.push.received": "[Onesignal] Push Confirmed delivery",
        "message.push.clicked": "[Onesignal] Push Clicked",
        "message.push.failed": "[Onesignal] Push Failed",
        "message.push.unsubscribed": "[Onesignal] Push Unsubscribed",
        "message.iam.displayed": "[Onesignal] IAM Displayed",
        "message.iam.clicked": "[Onesignal] IAM Clicked",
        "message.iam.page_displayed": "[Onesignal] IAM Page Displayed",
        "message.email.sent": "[Onesignal] Email Delivered",
        "message.email.received": "[Onesignal] Email Confirmed delivery",
        "message.email.opened": "[Onesignal] Email Opened",
        "message.email.clicked": "[Onesignal] Email Clicked",
        "message.email.unsubscribed": "[Onesignal] Email Unsubscribed",
        "message.email.reported_as_spam": "[Onesignal] Email Reported as SPAM",
        "message.email.bounced": "[Onesignal] Email Hard bounced",
        "message.email.failed": "[Onesignal] Email Failed delivery",
        "message.email.suppressed": "[Onesignal] Email Not delivering to suppressed email address",
        "message.sms.sent": "[Onesignal] SMS Delivered",
        "message.sms.delivered": "[Onesignal] SMS Confirmed delivery",
        "message.sms.failed": "[Onesignal] SMS Failed delivery",
        "message.sms.undelivered": "[Onesignal] SMS Failed delivery",
    },
}
NAMINGS = tuple(PROFILES)
# Every kind some profile names: what an app without overrides may ever send.
MAPPED_KINDS = frozenset(kind for names in PROFILES.values() for kind in names)

EVENT_TYPE_LIMIT = AMPLITUDE_STRING_LIMIT
# Amplitude's own events: an event_type of ours must not pose as one.
RESERVED_EVENT_TYPE_PREFIXES = ("$", "[Amplitude]")

_PLATFORMS = (
    ("ios", "iOS"), ("android", "Android"), ("huawei", "Android"), ("amazon", "Android"),
    ("chrome", "Web"), ("firefox", "Web"), ("safari", "Web"), ("edge", "Web"), ("web", "Web"),
    ("macos", "macOS"), ("windows", "Windows"), ("email", "Email"), ("sms", "SMS"),
)


class VocabularyError(ValueError):
    """A naming setting is invalid; the message names the kind or name and why."""


def canonical_kind(kind: str) -> str | None:
    """The kind `kind` spells (an older spelling gives its current one); None for a kind the stream
    does not send."""
    if kind in ALIASES:
        return ALIASES[kind]
    return kind if kind in KNOWN_KINDS else None


def check_event_type(name: object) -> str:
    """`name` as an Amplitude event_type: 1 to 1,024 printable characters, not blank, not one of
    Amplitude's reserved names (`$…`, `[Amplitude] …`). Raises VocabularyError."""
    if not isinstance(name, str) or not name.strip():
        raise VocabularyError("an event_type must not be blank")
    if len(name) > EVENT_TYPE_LIMIT:
        raise VocabularyError(f"an event_type has at most {EVENT_TYPE_LIMIT:,} characters (Amplitude's limit)")
    if has_unprintable(name):
        raise VocabularyError("an event_type must not hold control characters")
    if name.startswith(RESERVED_EVENT_TYPE_PREFIXES):
        raise VocabularyError(f"{name!r}: names starting with '$' or '[Amplitude]' are Amplitude's own")
    return name


def check_kind(kind: object) -> str:
    """The canonical kind of `kind`; raises VocabularyError naming it when the stream has no such kind."""
    known = canonical_kind(kind) if isinstance(kind, str) else None
    if known is None:
        raise VocabularyError(f"unknown event kind {kind!r} (known: {', '.join(KINDS)}, and the older "
                              f"spellings {', '.join(ALIASES)})")
    return known


@dataclass(frozen=True)
class Vocabulary:
    """What an app sends to Amplitude, and under which names.

    `naming`: a key of PROFILES. `event_names`: the app's own event_type per canonical kind, winning
    over the profile's. `enabled`: the canonical kinds the app sends; None = every kind with an
    event_type. Build it with `vocabulary(...)`, which checks all three."""

    naming: str
    event_names: tuple[tuple[str, str], ...]
    enabled: frozenset[str] | None
    # event_type of every kind sent, by every spelling: the intake's one lookup per event
    sent: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sent = {}
        for kind in KNOWN_KINDS:
            canonical = canonical_kind(kind)
            name = self.event_type(kind)
            if name is not None and (self.enabled is None or canonical in self.enabled):
                sent[kind] = name
        object.__setattr__(self, "sent", sent)

    def event_type(self, kind: str) -> str | None:
        """The event_type of `kind` (any spelling) for this app, sent or not; None when nothing names it."""
        kind = canonical_kind(kind) or kind
        return dict(self.event_names).get(kind) or PROFILES[self.naming].get(kind)

    def sends(self, kind: str) -> bool:
        """Whether events of `kind` (any spelling) are sent to Amplitude (else they are counted as ignored)."""
        return kind in self.sent

    def rows(self) -> list[dict[str, object]]:
        """Every canonical kind with its event_type, where that name comes from (`profile`,
        `override`, or None when nothing names it) and whether it is sent: the table the CLI and
        API show."""
        overrides = dict(self.event_names)
        return [{"kind": kind, "event_type": self.event_type(kind),
                 "named_by": "override" if kind in overrides else ("profile" if kind in PROFILES[self.naming] else None),
                 "sent": self.sends(kind)} for kind in KINDS]


@lru_cache(maxsize=1024)
def _cached(naming: str, names: tuple[tuple[str, str], ...], enabled: frozenset[str] | None) -> Vocabulary:
    return Vocabulary(naming, names, enabled)


def vocabulary(naming: str | None = None, event_names: Mapping[str, str] | None = None,
               enabled_kinds: Iterable[str] | None = None) -> Vocabulary:
    """An app's vocabulary from its settings (the defaults: `onesignal-2022`, no overrides, every named
    kind). Kinds may be given in any spelling; they are kept canonical. Raises VocabularyError for an
    unknown profile or kind, an invalid event_type, or an enabled kind that nothing names."""
    naming = naming or DEFAULT_NAMING
    if naming not in PROFILES:
        raise VocabularyError(f"unknown naming profile {naming!r} (one of {', '.join(NAMINGS)})")
    checked: dict[str, str] = {}
    for kind, name in (event_names or {}).items():
        canonical = check_kind(kind)
        try:
            checked[canonical] = check_event_type(name)
        except VocabularyError as exc:
            raise VocabularyError(f"{kind}: {exc}") from None
    names = tuple(sorted(checked.items()))
    enabled = None
    if enabled_kinds is not None:
        enabled = frozenset(check_kind(kind) for kind in enabled_kinds)
        if not enabled:
            raise VocabularyError("enabled kinds must not be empty (omit them to send every named kind)")
    result = _cached(naming, names, enabled)
    unnamed = sorted(kind for kind in enabled or () if result.event_type(kind) is None)
    if unnamed:
        raise VocabularyError(f"{', '.join(unnamed)}: no event_type under {naming}; give one "
                              f"(--event-name KIND=NAME) or stop sending it")
    return result


DEFAULT_VOCABULARY = vocabulary()


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


def to_amplitude(item: dict, user_id: str | None, vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> dict:
    """The Amplitude event for a validated source `item` (see intake.schemas) of a kind `vocabulary`
    sends, attributed to `user_id` (None: left out, for an event whose user is not known yet).
    Raises KeyError for a kind the vocabulary does not send."""
    event = item["event"]
    kind = canonical_kind(event["kind"]) or event["kind"]
    props = (_current_properties if vocabulary.naming == ONESIGNAL_CURRENT else _properties_2022)(kind, item)
    out: dict[str, object] = {
        "event_type": vocabulary.sent[event["kind"]],
        "user_id": user_id,
        "device_id": event["subscription_id"],
        "time": epoch_millis(event.get("timestamp"), event.get("datetime")),
        "insert_id": insert_id_for(event["id"]),
        "event_properties": props,
    }
    if user_id is None:
        del out["user_id"]
    platform = platform_for(event.get("subscription_device_type"))
    if platform:
        out["platform"] = platform
    return out


def detail(item: dict, key: str) -> object:
    """A channel-specific field (`failure_reason`, `page_id`, `target_id`, ...): from `event.data`,
    where the stream puts it, else from the item's top-level `data`; None when neither holds it."""
    for holder in (item["event"].get("data"), item.get("data")):
        if holder and holder.get(key) not in (None, ""):
            return holder[key]
    return None


def _properties_2022(kind: str, item: dict) -> dict[str, object]:
    """The 2022 integration's property sets: by channel, an in-app click adding its click action."""
    message = item.get("message") or {}
    channel = kind.split(".")[1]
    props: dict[str, object] = {"message_type": MESSAGE_TYPES[channel]}
    _put(props, "message_name", message.get("name"))
    if channel in ("push", "live_activity"):
        _put(props, "message", message.get("title"))
        _put(props, "message_contents", message.get("contents"))
    elif channel == "email":
        _put(props, "message", message.get("title"))
    elif channel == "sms":
        text = message.get("contents") or message.get("title")
        _put(props, "message", text)
        _put(props, "message_contents", text)
    elif kind == "message.iam.clicked":
        _put(props, "click_action_id", detail(item, "target_id"))
    _put(props, "delivery_id", message.get("id"))
    _channel_details(props, channel, item)
    return props


def _current_properties(kind: str, item: dict) -> dict[str, object]:
    """The platform's current integration's properties: the same set for every kind, each where present."""
    event, message, user = item["event"], item.get("message") or {}, item.get("user") or {}
    props: dict[str, object] = {"message_type": MESSAGE_TYPES[kind.split(".")[1]], "source": "onesignal"}
    _put(props, "message_name", message.get("name"))
    _put(props, "message_title", message.get("title"))
    _put(props, "message_contents", message.get("contents"))
    _put(props, "template_id", message.get("template_id"))
    _put(props, "subscription_id", event["subscription_id"])
    _put(props, "device_type", event.get("subscription_device_type"))
    _put(props, "language", user.get("language") if isinstance(user.get("language"), str) else None)
    _put(props, "delivery_id", message.get("id"))
    _put(props, "click_action_id", detail(item, "target_id"))
    _channel_details(props, kind.split(".")[1], item)
    return props


def _channel_details(props: dict[str, object], channel: str, item: dict) -> None:
    """What some kinds carry under `event.data`: why a message failed, which in-app page or element."""
    _put(props, "failure_reason", _scalar(detail(item, "failure_reason")))
    if channel == "iam":
        for key in ("page_id", "page_name", "target_name"):
            _put(props, key, _scalar(detail(item, key)))


def _scalar(value: object) -> object:
    """A free-form value fit for a property: a string or a number; anything else is left out."""
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


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
