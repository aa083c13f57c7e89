"""The OneSignal adapter: the request it sends, and every answer classified, against the local platform
server and, for what that server does not send, against scripted answers (httpx.MockTransport)."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from freezegun import freeze_time

from bridge.platforms import PLATFORMS, connect
from bridge.platforms.base import (
    APPLIED, CONFLICT, NOT_ON_PLATFORM, REJECTED, RETRY, THROTTLED, TagOutcome, retry_after_seconds,
)
from bridge.platforms.onesignal import HIDDEN_KEY, OneSignal
from bridge.platforms.server import PlatformServer
from support.platform import API_KEY, APP_ID, ManualClock

USER = "user-1"


@pytest.fixture
def onesignal(platform_server):
    platform_server.add_users(APP_ID, [USER, "team/a b"])
    with connect("onesignal", app_id=APP_ID, api_key=API_KEY, base_url=platform_server.url, timeout=5) as adapter:
        yield adapter


def scripted(handler) -> OneSignal:
    """The adapter, its requests answered by `handler(request) -> httpx.Response` (or raising)."""
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return OneSignal(app_id=APP_ID, api_key=API_KEY, base_url="https://api.example.test/", client=client)


def answering(status: int, body: object = None, headers: dict | None = None, content: bytes | None = None) -> OneSignal:
    if content is None:
        content = b"" if body is None else json.dumps(body).encode()
    return scripted(lambda request: httpx.Response(status, content=content, headers=headers))


# -- against the local platform server ---------------------------------------------------------------

def test_tags_are_set_and_removed_on_the_platform(onesignal, platform_server):
    assert onesignal.set_tags(USER, {"cohort_vip": "1", "cohort_new": "1"}) == TagOutcome(APPLIED, http_status=202)
    assert onesignal.set_tags(USER, {"cohort_new": ""}).status == APPLIED
    assert onesignal.set_tags("team/a b", {"cohort_vip": "1"}).status == APPLIED

    assert platform_server.all_tags(APP_ID) == {USER: {"cohort_vip": "1"}, "team/a b": {"cohort_vip": "1"}}
    assert [(r["external_id"], r["tags"]) for r in platform_server.requests()] == [
        (USER, {"cohort_vip": "1", "cohort_new": "1"}), (USER, {"cohort_new": ""}), ("team/a b", {"cohort_vip": "1"})]


def test_a_user_the_platform_does_not_know_is_not_on_platform(onesignal, platform_server):
    assert onesignal.set_tags("stranger", {"cohort_vip": "1"}) == TagOutcome(NOT_ON_PLATFORM, "User not found", http_status=404)
    assert platform_server.all_tags(APP_ID) == {}


@pytest.mark.parametrize(("fault", "expected"), [
    ({"status": 409, "message": "User is being merged"}, TagOutcome(CONFLICT, "User is being merged", http_status=409)),
    ({"status": 429, "retry_after": 12}, TagOutcome(THROTTLED, "API rate limit exceeded", retry_after=12.0, http_status=429)),
    ({"status": 429}, TagOutcome(THROTTLED, "API rate limit exceeded", retry_after=1.0, http_status=429)),
    ({"status": 500}, TagOutcome(RETRY, "Internal Server Error", http_status=500)),
    ({"status": 503, "message": "Try later"}, TagOutcome(RETRY, "Try later", http_status=503)),
    ({"status": 400, "message": "Bad tags"}, TagOutcome(REJECTED, "Bad tags", http_status=400)),
    ({"status": 200, "message": "Tags limit reached"}, TagOutcome(REJECTED, "Tags limit reached", http_status=200)),
    ({"status": 202, "failed_tags": ["cohort_b"], "message": "Too long"},
     TagOutcome(APPLIED, "Too long", failed_tags=frozenset({"cohort_b"}), http_status=202)),
    ({"status": 202, "failed_tags": ["cohort_a", "cohort_b"], "message": "Too long"},
     TagOutcome(REJECTED, "Too long", failed_tags=frozenset({"cohort_a", "cohort_b"}), http_status=202)),
], ids=["409", "429-retry-after", "429-default", "500", "503", "400", "200-errors", "202-some-tags", "202-every-tag"])
def test_every_answer_of_the_platform_is_classified(onesignal, platform_server, fault, expected):
    platform_server.add_faults([fault])

    assert onesignal.set_tags(USER, {"cohort_a": "1", "cohort_b": "1"}) == expected
    assert platform_server.tags(APP_ID, USER) == ({"cohort_a": "1"} if fault.get("failed_tags") == ["cohort_b"] else {})


def test_a_key_the_platform_refuses_is_rejected(platform_server):
    platform_server.add_users(APP_ID, [USER])
    with connect("onesignal", app_id=APP_ID, api_key="revoked", base_url=platform_server.url) as adapter:
        outcome = adapter.set_tags(USER, {"cohort_vip": "1"})

    assert (outcome.status, outcome.http_status) == (REJECTED, 403)


def test_a_dropped_connection_and_a_slow_answer_are_retried(onesignal, platform_server):
    platform_server.add_faults([{"reset": True, "apply": True}, {"status": 503, "delay": 2}])
    impatient = OneSignal(app_id=APP_ID, api_key=API_KEY, base_url=platform_server.url, timeout=0.2)

    dropped = onesignal.set_tags(USER, {"cohort_vip": "1"})
    slow = impatient.set_tags(USER, {"cohort_vip": "1"})
    impatient.close()

    assert (dropped.status, dropped.http_status) == (RETRY, None)
    assert dropped.message.startswith("connection error: RemoteProtocolError")
    assert (slow.status, slow.message, slow.http_status) == (RETRY, "timeout: ReadTimeout", None)
    assert platform_server.tags(APP_ID, USER) == {"cohort_vip": "1"}, "the dropped request had applied: resending is harmless"


def test_the_platform_enforcing_its_per_user_limit_throttles_for_a_second():
    clock = ManualClock()
    with PlatformServer(api_keys={API_KEY}, every_user_known=True, enforce_limits=True, clock=clock) as server, \
            OneSignal(app_id=APP_ID, api_key=API_KEY, base_url=server.url) as adapter:
        first = adapter.set_tags(USER, {"cohort_vip": "1"})
        clock.advance(0.5)
        second = adapter.set_tags(USER, {"cohort_new": "1"})

    assert (first.status, second.status, second.retry_after) == (APPLIED, THROTTLED, 1.0)


# -- the request, and answers the local server does not give ------------------------------------------

def test_the_request_is_a_patch_of_the_user_by_external_id_with_the_key_and_the_tags():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"properties": {"tags": {}}})

    with scripted(handler) as adapter:
        assert adapter.set_tags("team/a b?c#d%e", {"cohort_vip": "1", "cohort_old": ""}).status == APPLIED

    [request] = seen
    assert request.method == "PATCH"
    assert request.url.raw_path == f"/apps/{APP_ID}/users/by/external_id/team%2Fa%20b%3Fc%23d%25e".encode()
    assert request.url.host == "api.example.test"
    assert request.headers["Authorization"] == f"Key {API_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"properties": {"tags": {"cohort_vip": "1", "cohort_old": ""}}}


@freeze_time("2026-11-30 12:00:00")
@pytest.mark.parametrize(("headers", "seconds"), [
    ({"Retry-After": format_datetime(datetime(2026, 11, 30, 12, 0, 30, tzinfo=UTC), usegmt=True)}, 30.0),
    ({"Retry-After": format_datetime(datetime(2026, 11, 30, 11, 59, tzinfo=UTC), usegmt=True)}, 0.0),  # already past
    ({"Retry-After": "2.5"}, 2.5),
    ({"RetryAfter": "4"}, 4.0),  # the spelling of OneSignal's older reference
    ({"Retry-After": "soon"}, 1.0),
    ({}, 1.0),
], ids=["http-date", "http-date-past", "seconds", "legacy-header", "unreadable", "absent"])
def test_throttled_waits_as_long_as_retry_after_says(headers, seconds):
    with answering(429, {"errors": ["API rate limit exceeded."]}, headers) as adapter:
        assert adapter.set_tags(USER, {"a": "1"}) == TagOutcome(THROTTLED, "API rate limit exceeded.", seconds, http_status=429)


@freeze_time("2026-11-30 12:00:00")
def test_retry_after_as_an_http_date_counts_from_now():
    later = datetime.now(UTC) + timedelta(minutes=2)
    assert retry_after_seconds(format_datetime(later, usegmt=True), default=1.0) == 120.0
    assert retry_after_seconds("inf", default=1.0) == 1.0


@pytest.mark.parametrize(("error", "message"), [
    (httpx.ReadError("[Errno 104] Connection reset by peer"), "connection error: ReadError: [Errno 104] Connection reset by peer"),
    (httpx.ConnectError("[Errno -2] Name or service not known"), "connection error: ConnectError: [Errno -2] Name or service not known"),
    (httpx.ConnectTimeout("timed out"), "timeout: ConnectTimeout"),
    (httpx.ReadTimeout("timed out"), "timeout: ReadTimeout"),
], ids=["reset", "dns", "connect-timeout", "read-timeout"])
def test_no_answer_at_all_is_retry_with_the_reason(error, message):
    def handler(request):
        raise error

    with scripted(handler) as adapter:
        assert adapter.set_tags(USER, {"a": "1"}) == TagOutcome(RETRY, message)


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, {"errors": ["Tags limit reached", "Try fewer"]}, TagOutcome(REJECTED, "Tags limit reached; Try fewer", http_status=200)),
    (200, {"errors": [{"title": "Bad key", "meta": {"tag": "a"}}, {"title": "Bad", "meta": {"tags": ["zz"]}}]},
     TagOutcome(REJECTED, "Bad key; Bad", http_status=200)),  # one error names no tag sent: the whole request
    (202, {"errors": [{"code": "tag-invalid", "meta": {"tag": "a"}}]},
     TagOutcome(APPLIED, "tag-invalid", failed_tags=frozenset({"a"}), http_status=202)),
    (200, {"errors": []}, TagOutcome(APPLIED, http_status=200)),
    (200, {"errors": "everything failed"}, TagOutcome(REJECTED, "everything failed", http_status=200)),
    (204, None, TagOutcome(APPLIED, http_status=204)),
    (404, {"errors": [{"title": "User not found"}]}, TagOutcome(NOT_ON_PLATFORM, "User not found", http_status=404)),
    (409, {"errors": [{"code": "user-2", "title": "Alias already assigned"}]},
     TagOutcome(CONFLICT, "Alias already assigned", http_status=409)),
    (503, {"errors": ["Service unavailable, try later"]}, TagOutcome(RETRY, "Service unavailable, try later", http_status=503)),
    (408, None, TagOutcome(RETRY, "Request Timeout", http_status=408)),
    (502, b"<html>Bad gateway</html>", TagOutcome(RETRY, "Bad Gateway", http_status=502)),
    (401, {"errors": [f"Invalid key {API_KEY}"]}, TagOutcome(REJECTED, f"Invalid key {HIDDEN_KEY}", http_status=401)),
    (301, None, TagOutcome(REJECTED, "Moved Permanently", http_status=301)),
], ids=["2xx-strings", "2xx-unnamed", "2xx-code-named", "2xx-empty-errors", "2xx-errors-string", "204", "404", "409", "503", "408",
        "502-html", "401-key-hidden", "301"])
def test_scripted_answers_are_classified(status, body, expected):
    content = body if isinstance(body, bytes) else None
    with answering(status, None if content else body, content=content) as adapter:
        assert adapter.set_tags(USER, {"a": "1", "b": "1"}) == expected


@pytest.mark.parametrize(("external_id", "tags"), [
    ("", {"a": "1"}), (USER, {}), (USER, {f"t{i}": "1" for i in range(101)}), (USER, {"a": 1}), (USER, {"": "1"}),
    (USER, {"a": None}),
], ids=["no-external-id", "no-tags", "101-tags", "int-value", "empty-key", "none-value"])
def test_arguments_no_request_can_carry_are_refused_before_sending(external_id, tags):
    def handler(request):
        raise AssertionError("nothing is sent")

    with scripted(handler) as adapter, pytest.raises(ValueError):
        adapter.set_tags(external_id, tags)


def test_connect_makes_the_named_platforms_adapter():
    shared = httpx.Client()
    adapter = connect("onesignal", app_id=APP_ID, api_key=API_KEY, client=shared)
    adapter.close()

    assert PLATFORMS == {"onesignal": OneSignal} and type(adapter) is OneSignal
    assert adapter.base_url == "https://api.onesignal.com"
    assert not shared.is_closed, "a shared client is the caller's to close"
    with connect("onesignal", app_id=APP_ID, api_key=API_KEY) as own:
        pass
    assert own.http.is_closed
    with pytest.raises(ValueError, match="unknown platform 'braze': one of onesignal"):
        connect("braze", app_id=APP_ID, api_key=API_KEY)
    with pytest.raises(ValueError):
        connect("onesignal", app_id="", api_key=API_KEY)
    shared.close()
