"""POST /v1/apps/<app_id>/subscriptions (bulk upsert with per-item errors) and GET .../<subscription_id>."""
from __future__ import annotations

from sqlalchemy import func, select

from bridge.registry.models import Subscription


def post(client, tenant, body, headers=None):
    return client.post(f"/v1/apps/{tenant.app_id}/subscriptions", json=body,
                       headers=tenant.auth if headers is None else headers)


def get(client, tenant, subscription_id):
    return client.get(f"/v1/apps/{tenant.app_id}/subscriptions/{subscription_id}", headers=tenant.auth)


IOS = {"subscription_id": "sub-ios", "type": "iOSPush", "identifier": "apns-token-1", "external_id": "user-1",
       "notification_types": 1, "device_model": "iPhone15,2", "device_os": "17.1", "language": "en",
       "timezone": "Europe/Berlin", "country": "DE", "last_active": "2025-11-20T10:11:12Z", "created_at": 1706774400}


def test_valid_records_are_stored_and_invalid_ones_reported_by_index_and_field(client, tenant):
    body = [
        IOS,
        {"subscription_id": "sub-mail", "type": "email", "identifier": "Ana@Example.COM", "subscribed": True},
        {"subscription_id": "bad-type", "type": "Pager"},
        {"subscription_id": "bad-mail", "type": "Email", "identifier": "ana-at-example"},
        {"subscription_id": "bad-sms", "type": "SMS", "identifier": "555-0100"},
        {"type": "AndroidPush", "notification_types": "many", "last_active": "last tuesday"},
        "not an object",
        {"subscription_id": "sub-sms", "type": "SMS", "identifier": "+49 151 1234 5678", "notification_types": -2},
    ]
    response = post(client, tenant, body)
    assert response.status_code == 200
    assert response.json["added"] == 3 and response.json["updated"] == response.json["unchanged"] == 0
    assert response.json["rejected"] == [
        {"index": 2, "errors": {"type": "Unknown type 'Pager'; expected one of iOSPush, AndroidPush, FireOSPush, "
                                        "WindowsPhonePush, ChromeExtensionPush, ChromePush, WindowsPush, SafariPush, "
                                        "FirefoxPush, macOSPush, AlexaPush, HuaweiPush, Email, SMS."}},
        {"index": 3, "errors": {"identifier": "'ana-at-example' is not an e-mail address."}},
        {"index": 4, "errors": {"identifier": "'555-0100' is not an E.164 phone number (+ and 8 to 15 digits)."}},
        {"index": 5, "errors": {"subscription_id": "Missing data for required field.",
                                "notification_types": "Not a valid integer.",
                                "last_active": "'last tuesday' is not a date-time (ISO 8601) or epoch seconds."}},
        {"index": 6, "errors": {"_item": "Each record must be a JSON object."}},
    ]

    ios = get(client, tenant, "sub-ios").json
    assert ios | {"recorded_at": None, "updated_at": None} == {
        "subscription_id": "sub-ios", "channel": "push", "type": "iOSPush", "identifier": "apns-token-1",
        "external_id": "user-1", "notification_types": 1, "invalid_identifier": False, "subscribed": True,
        "device_model": "iPhone15,2", "device_os": "17.1", "language": "en", "timezone": "Europe/Berlin",
        "country": "DE", "last_active": "2025-11-20T10:11:12+00:00", "created_at": "2024-02-01T08:00:00+00:00",
        "recorded_at": None, "updated_at": None}
    mail = get(client, tenant, "sub-mail").json
    assert (mail["channel"], mail["identifier"], mail["subscribed"]) == ("email", "ana@example.com", True)
    sms = get(client, tenant, "sub-sms").json
    assert (sms["identifier"], sms["subscribed"]) == ("+4915112345678", False)


def test_an_upsert_merges_what_it_is_given_and_counts_what_changed(client, tenant, runtime):
    post(client, tenant, IOS)
    again = post(client, tenant, [IOS, {"subscription_id": "sub-ios", "type": "iOS", "external_id": "user-2"}])
    assert again.json == {"added": 0, "updated": 1, "unchanged": 1, "rejected": []}
    ios = get(client, tenant, "sub-ios").json
    assert (ios["external_id"], ios["device_model"], ios["subscribed"]) == ("user-2", "iPhone15,2", True)

    assert post(client, tenant, {"subscription_id": "sub-ios", "type": "iOSPush", "invalid_identifier": True}).json["updated"] == 1
    assert get(client, tenant, "sub-ios").json["subscribed"] is False  # recomputed: the token is now invalid
    post(client, tenant, {"subscription_id": "sub-ios", "type": "iOSPush", "subscribed": True})
    assert get(client, tenant, "sub-ios").json["subscribed"] is True  # an explicit value overrides
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(Subscription)) == 1


def test_the_subscription_state_is_unknown_until_something_says_it(client, tenant):
    post(client, tenant, [
        {"subscription_id": "sub-new", "type": "AndroidPush", "identifier": "fcm-1"},
        {"subscription_id": "sub-invalid", "type": "AndroidPush", "invalid_identifier": True},
        {"subscription_id": "sub-valid", "type": "AndroidPush", "invalid_identifier": False},
        {"subscription_id": "sub-never", "type": "AndroidPush", "notification_types": 0},
    ])
    states = {s: get(client, tenant, s).json["subscribed"] for s in ("sub-new", "sub-invalid", "sub-valid", "sub-never")}
    assert states == {"sub-new": None, "sub-invalid": False, "sub-valid": None, "sub-never": False}

    post(client, tenant, {"subscription_id": "sub-new", "type": "AndroidPush", "external_id": "user-1"})
    assert get(client, tenant, "sub-new").json["subscribed"] is None  # nothing said yet
    post(client, tenant, {"subscription_id": "sub-new", "type": "AndroidPush", "notification_types": 1})
    assert get(client, tenant, "sub-new").json["subscribed"] is True
    post(client, tenant, {"subscription_id": "sub-valid", "type": "AndroidPush", "subscribed": False})
    assert get(client, tenant, "sub-valid").json["subscribed"] is False


def test_a_request_with_no_valid_record_is_a_400_with_the_same_details(client, tenant):
    response = post(client, tenant, [{"subscription_id": "x"}, {"subscription_id": " ", "type": "SMS"}])
    assert response.status_code == 400
    assert response.json["error"] == "invalid_subscriptions"
    assert response.json["details"] == {"added": 0, "updated": 0, "unchanged": 0, "rejected": [
        {"index": 0, "errors": {"type": "Missing data for required field."}},
        {"index": 1, "errors": {"subscription_id": "Must not be blank."}},
    ]}


def test_more_than_a_thousand_records_are_refused(client, tenant):
    body = [{"subscription_id": f"s-{i}", "type": "AndroidPush"} for i in range(1001)]
    response = post(client, tenant, body)
    assert response.status_code == 413 and response.json["details"] == {"limit": 1000, "received": 1001}
    assert post(client, tenant, body[:1000]).json["added"] == 1000


def test_the_api_key_of_the_app_is_required(client, tenant):
    assert post(client, tenant, IOS, headers={}).status_code == 401
    assert post(client, tenant, IOS, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/v1/apps/no-such-app/subscriptions", json=IOS, headers=tenant.auth).status_code == 401  # an unknown app: as a wrong token
    assert client.get(f"/v1/apps/{tenant.app_id}/subscriptions/sub-ios").status_code == 401
    missing = get(client, tenant, "sub-ios")
    assert missing.status_code == 404 and missing.json["error"] == "subscription_not_found"
