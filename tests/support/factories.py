"""Test data, built in one place: event items as the platform posts them, cohort batches as Amplitude
posts them, channel records as the registry API takes them, and tenants (apps with their tokens).

Each factory returns plain data with sensible defaults; a test names only the values it is about.
A field passed as OMIT is left out of the item altogether (None sends JSON null).
"""
from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bridge.apps.service import create_app_record
from bridge.cohorts.schemas import BatchUsers
from bridge.cohorts.webhook import store_batch

T0 = 1763856000  # 2025-11-23T00:00:00Z: when the test events happened, in epoch seconds
COHORT_ID = "7b2k9xq"  # the cohort id of Amplitude's sample webhook bodies (fixtures/cohort-*.json)


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT = _Omit()  # a field left out of the built item


def _present(fields: dict) -> dict:
    return {name: value for name, value in fields.items() if value is not OMIT}


# -- the platform's event stream: POST /v1/apps/<app_id>/events ---------------------------------------

MESSAGE = {"id": "msg-1", "name": "Campaign", "title": "Hi", "contents": {"en": "Hello"}}


def event_item(event_id: object = "evt-1", kind: object = "message.push.sent", subscription_id: object = "sub-1",
               external_id: object = "user-1", *, timestamp: object = T0, device_type: object = "iOS",
               message: object = MESSAGE, data: object = OMIT, **event_fields: object) -> dict:
    """One item of an events request body, as the platform sends it:
    `{"event": {...}, "message": {...}, "data": {...}}`.

    `device_type` is the event's `subscription_device_type` ("iOS", "Android", "Email", … as the
    platform names them); `event_fields` are further keys of `event` (`datetime`, …). Any argument may
    be a value the intake must refuse (a number for an id, a string for the timestamp), and OMIT leaves
    its key out."""
    event = _present({"id": event_id, "kind": kind, "timestamp": timestamp, "subscription_id": subscription_id,
                      "subscription_device_type": device_type, "external_id": external_id, **event_fields})
    return copy.deepcopy(_present({"event": event, "message": message, "data": data}))  # a test may edit its item


def event_items(n: int, *, start: int = 0, prefix: str = "evt", users: int = 5, subscriptions: int = 7,
                kinds: Sequence[str] = ("message.push.sent",), **fields: object) -> list[dict]:
    """`n` event items numbered i = start … start + n - 1: id `{prefix}-{i}`, timestamp T0 + i, kind
    `kinds[i % len(kinds)]`, on subscription `sub-{i % subscriptions}` of user `user-{i % users}`.
    `fields`, as `event_item` takes them, are the same for every item and win over these."""
    return [event_item(**{"event_id": f"{prefix}-{i}", "kind": kinds[i % len(kinds)], "timestamp": T0 + i,
                          "subscription_id": f"sub-{i % subscriptions}", "external_id": f"user-{i % users}", **fields})
            for i in range(start, start + n)]


def flattened(item: dict, prefix: str = "") -> dict:
    """`item` written with dotted keys, as a body of key/value pairs writes it (the Event Streams guide's
    recommended body): `{"event.id": ..., "event.data.page_id": ..., "message.title.en": ...}`. An empty
    object, and any value that is not an object, is one key's value."""
    flat: dict = {}
    for key, value in item.items():
        if isinstance(value, dict) and value:
            flat.update(flattened(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# -- Amplitude's cohort webhook: POST /v1/apps/<app_id>/amplitude/cohorts ----------------------------

def cohort_batch(users: int | Iterable[object] = 1, *, message_id: str | None = None, in_cohort: bool = True,
                 computed_time: int = T0, cohort_id: str = COHORT_ID, cohort_name: str = "Churn risk",
                 **fields: object) -> dict:
    """One cohort webhook body as Amplitude posts it. `users`: a count n (users `user-000000` …
    `user-{n-1:06d}`), user ids (each sent as `{"user_id": id}`), or entries sent as they are (a dict,
    None, …). `computed_time` (epoch seconds) is sent as a string, as Amplitude does. `message_id` is
    the batch's identity, the same one again being Amplitude's retry: a new one unless given."""
    if isinstance(users, int):
        users = [f"user-{i:06d}" for i in range(users)]
    entries = [{"user_id": user} if isinstance(user, str) else user for user in users]
    message_id = message_id or f"{cohort_id}::{'enter' if in_cohort else 'exit'}::{uuid.uuid4().hex[:12]}"
    return {"cohort_id": cohort_id, "cohort_name": cohort_name, "message_id": message_id, "in_cohort": in_cohort,
            "computed_time": str(computed_time), "users": entries, **fields}


def store_cohort_batch(runtime, app_id: str, message_id: str, user_ids: Iterable[str], *, in_cohort: bool = True,
                       computed_time: int = T0, cohort_id: str = COHORT_ID, cohort_name: str = "Churn risk") -> int:
    """Store one batch of `user_ids` for `app_id` as the webhook does, without applying it (no job runs);
    its batch id (`cohort_batches.id`)."""
    body = {"cohort_id": cohort_id, "cohort_name": cohort_name, "message_id": message_id, "in_cohort": in_cohort,
            "computed_time": computed_time, "users": BatchUsers(list(user_ids))}
    with runtime.session() as session:
        batch_id = store_batch(session, app_id, body).batch_id
        session.commit()
    return batch_id


# -- the channel registry: POST /v1/apps/<app_id>/subscriptions --------------------------------------

def channel_record(subscription_id: object = "sub-1", type: object = "iOSPush", **fields: object) -> dict:
    """One channel record as the registry API takes it; `fields`: `external_id`, `identifier`,
    `notification_types`, … (OMIT leaves a key out)."""
    return _present({"subscription_id": subscription_id, "type": type, **fields})


# -- tenants -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tenant:
    """An app as its operator holds it: its id, its two plaintext tokens and its Amplitude API key."""

    app_id: str
    api_key: str
    cohort_token: str
    amplitude_api_key: str

    @property
    def auth(self) -> dict[str, str]:
        """Headers of the platform's requests (events, registry, reports)."""
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def cohort_auth(self) -> dict[str, str]:
        """Headers of Amplitude's webhook requests."""
        return {"Authorization": f"Bearer {self.cohort_token}"}


def new_tenant(runtime, name: str = "Test app", *, amplitude_api_key: str | None = None, **options) -> Tenant:
    """Create an app (committed) in `runtime`'s database; `options` as `create_app_record` takes them
    (region, enabled_kinds). The Amplitude API key is unique unless given."""
    key = amplitude_api_key or f"amp-{name.lower().replace(' ', '-')}-{uuid.uuid4().hex[:8]}"
    with runtime.session() as session:
        record, issued = create_app_record(session, name=name, amplitude_api_key=key, **options)
        session.commit()
        return Tenant(record.id, issued.api_key, issued.cohort_token, record.amplitude_api_key)
