"""The local messaging platform: OneSignal's user-tag contract, its users and keys, fault injection, the
arrival record and its per-user spacing, the limits it can enforce, and its control endpoints."""
from __future__ import annotations

from http.client import HTTPConnection
from urllib.parse import quote, urlsplit

import httpx
import pytest

from bridge.platforms.server import PlatformServer
from support.platform import API_KEY, APP_ID, OTHER_APP_ID, ManualClock

USER = "user-1"


def user_path(external_id: str = USER, app_id: str = APP_ID) -> str:
    return f"/apps/{app_id}/users/by/external_id/{quote(external_id, safe='')}"


def tags_body(tags: dict) -> dict:
    return {"properties": {"tags": tags}}


@pytest.fixture
def http(platform_server):
    with httpx.Client(base_url=platform_server.url, headers={"Authorization": f"Key {API_KEY}"}, timeout=5) as client:
        yield client


def patch(http: httpx.Client, tags: dict, external_id: str = USER, app_id: str = APP_ID, **headers) -> httpx.Response:
    return http.patch(user_path(external_id, app_id), json=tags_body(tags), headers=headers)


def test_known_users_get_their_tags_set_and_removed(platform_server, http):
    platform_server.add_users(APP_ID, [USER, "user 2/b"])

    first = patch(http, {"cohort_vip": "1", "cohort_new": "1"})
    second = patch(http, {"cohort_new": "", "cohort_churn": "1", "never_set": ""})
    other = patch(http, {"cohort_vip": "1"}, external_id="user 2/b")

    assert (first.status_code, first.json()) == (202, {"properties": {"tags": {"cohort_vip": "1", "cohort_new": "1"}}})
    assert (second.status_code, other.status_code) == (202, 202)
    assert platform_server.tags(APP_ID, USER) == {"cohort_vip": "1", "cohort_churn": "1"}
    assert platform_server.all_tags(APP_ID) == {USER: {"cohort_vip": "1", "cohort_churn": "1"},
                                                "user 2/b": {"cohort_vip": "1"}}
    assert platform_server.all_tags(OTHER_APP_ID) == {}


def test_unknown_users_and_users_of_another_app_get_404(platform_server, http):
    platform_server.add_users(OTHER_APP_ID, [USER])

    response = patch(http, {"cohort_vip": "1"})

    assert (response.status_code, response.json()) == (404, {"errors": [{"title": "User not found"}]})
    assert platform_server.all_tags(APP_ID) == {} and platform_server.tags(OTHER_APP_ID, USER) == {}


def test_every_user_known():
    with PlatformServer(every_user_known=True) as server:
        response = httpx.patch(server.url + user_path("anyone"), json=tags_body({"a": "1"}),
                               headers={"Authorization": "Key whatever"})
        assert response.status_code == 202
        assert server.tags(APP_ID, "anyone") == {"a": "1"}


@pytest.mark.parametrize(("authorization", "status"), [
    (None, 401), ("Basic " + API_KEY, 401), ("Key", 401), ("Key not-the-key", 403), ("key " + API_KEY, 202),
])
def test_the_api_key_is_checked(platform_server, authorization, status):
    platform_server.add_users(APP_ID, [USER])
    headers = {} if authorization is None else {"Authorization": authorization}

    response = httpx.patch(platform_server.url + user_path(), json=tags_body({"a": "1"}), headers=headers)

    assert response.status_code == status
    assert platform_server.tags(APP_ID, USER) == ({"a": "1"} if status == 202 else {})


def test_more_than_100_tags_or_a_bad_body_is_refused_and_nothing_is_applied(platform_server, http):
    platform_server.add_users(APP_ID, [USER])

    assert patch(http, {f"t{i}": "1" for i in range(100)}).status_code == 202
    platform_server.reset()
    platform_server.add_users(APP_ID, [USER])
    too_many = patch(http, {f"t{i}": "1" for i in range(101)})
    not_json = http.patch(user_path(), content=b"{oops")
    no_tags = http.patch(user_path(), json={"properties": {"language": "en"}})
    not_strings = patch(http, {"a": 1, "b": None, "c": "ok"})

    assert (too_many.status_code, too_many.json()) == (400, {"errors": [{"title": "At most 100 tags in one request, not 101"}]})
    assert [r.status_code for r in (not_json, no_tags, not_strings)] == [400, 400, 400]
    assert not_strings.json()["errors"][0]["meta"] == {"tags": ["a", "b"]}
    assert platform_server.all_tags(APP_ID) == {}


def test_faults_answer_in_order_then_normal_handling_resumes(platform_server, http):
    platform_server.add_users(APP_ID, [USER])
    platform_server.add_faults([{"status": 503, "times": 2}, {"status": 409, "message": "Alias conflict"},
                                {"status": 429, "retry_after": 7}])

    answers = [patch(http, {"a": "1"}) for _ in range(5)]

    assert [a.status_code for a in answers] == [503, 503, 409, 429, 202]
    assert answers[2].json() == {"errors": [{"title": "Alias conflict"}]}
    assert answers[3].headers["Retry-After"] == "7"
    assert "Retry-After" not in answers[0].headers
    assert platform_server.stats()["faults_pending"] == 0


def test_a_fault_limited_to_users_answers_only_their_requests(platform_server, http):
    platform_server.add_users(APP_ID, ["user-a", "user-b"])
    platform_server.add_faults([{"status": 500, "users": ["user-b"], "times": 2}])

    statuses = [patch(http, {"a": "1"}, external_id=user).status_code for user in ("user-a", "user-b", "user-a", "user-b")]

    assert statuses == [202, 500, 202, 500]
    assert platform_server.all_tags(APP_ID) == {"user-a": {"a": "1"}}


def test_a_fault_can_apply_the_tags_before_failing(platform_server, http):
    platform_server.add_users(APP_ID, [USER])
    platform_server.add_faults([{"status": 500, "apply": True}, {"reset": True, "apply": True}])

    assert patch(http, {"a": "1"}).status_code == 500
    with pytest.raises(httpx.TransportError):
        patch(http, {"b": "1"})

    assert platform_server.tags(APP_ID, USER) == {"a": "1", "b": "1"}


def test_a_2xx_with_errors_fails_the_whole_request_or_the_tags_it_names(platform_server, http):
    platform_server.add_users(APP_ID, [USER])
    platform_server.add_faults([{"status": 200, "message": "Tags limit reached"},
                                {"status": 202, "failed_tags": ["bad"], "message": "Tag value too long"}])

    whole = patch(http, {"a": "1"})
    named = patch(http, {"bad": "x" * 300, "good": "1"})

    assert (whole.status_code, whole.json()) == (200, {"errors": [{"title": "Tags limit reached"}]})
    assert (named.status_code, named.json()) == (202, {
        "properties": {"tags": {"good": "1"}},
        "errors": [{"title": "Tag value too long", "meta": {"tags": ["bad"]}}]})
    assert platform_server.tags(APP_ID, USER) == {"good": "1"}


def test_a_reset_drops_the_connection_and_is_recorded(platform_server, http):
    platform_server.add_users(APP_ID, [USER])
    platform_server.add_faults([{"reset": True}])

    with pytest.raises(httpx.TransportError):
        patch(http, {"a": "1"})
    assert patch(http, {"a": "1"}).status_code == 202

    assert [r["status"] for r in platform_server.requests()] == [None, 202]
    assert platform_server.stats()["resets"] == 1


def test_a_delay_outlasts_a_client_timeout(platform_server):
    platform_server.add_faults([{"status": 503, "delay": 0.3}])

    with httpx.Client(base_url=platform_server.url, timeout=0.05) as impatient, pytest.raises(httpx.TimeoutException):
        impatient.patch(user_path(), json=tags_body({"a": "1"}), headers={"Authorization": f"Key {API_KEY}"})

    assert platform_server.stats()["faults_pending"] == 0


@pytest.mark.parametrize("fault", [
    {"status": 200}, {"status": 204, "message": "x"}, {"status": 302}, {"times": 1}, {"status": 503, "times": 0},
    {"status": 503, "bogus": 1}, {"status": 503, "delay": "1"}, {"reset": "yes"}, {"reset": True, "status": 500},
    {"status": 503, "users": "user-1"}, {"status": 503, "failed_tags": ["a"]}, {"status": 200, "failed_tags": []},
    {"status": 200, "message": "x", "apply": True}, {"status": 429, "retry_after": -1}, "503",
])
def test_malformed_faults_are_refused_and_nothing_is_queued(platform_server, fault):
    with pytest.raises(ValueError):
        platform_server.add_faults([{"status": 500}, fault])

    assert platform_server.stats()["faults_pending"] == 0


def test_arrivals_give_the_per_user_spacing_and_the_busiest_second_per_app():
    clock = ManualClock()
    with PlatformServer(every_user_known=True, clock=clock) as server, httpx.Client(base_url=server.url) as http:
        def at(offset: float, external_id: str, app_id: str = APP_ID) -> None:
            clock.now = 1000.0 + offset
            assert patch(http, {"a": "1"}, external_id, app_id, Authorization="Key k").status_code == 202

        at(0.0, "a")
        at(0.2, "b")
        at(0.6, "a")  # 0.6 s after a's first: a violation
        at(0.9, "c")
        at(1.6, "a")  # 1.0 s after: allowed
        at(1.7, "b", OTHER_APP_ID)  # another app: another user, another window
        at(2.95, "b")

        stats = server.stats()
        log = server.requests()

    assert stats["min_user_spacing"] == pytest.approx(0.6)
    assert stats["user_spacing_violations"] == 1
    assert stats["max_requests_per_second"] == {APP_ID: 4, OTHER_APP_ID: 1}  # a, b, a and c within 0.9 s
    assert (stats["users"], stats["over_app_rate"], stats["requests"]) == (4, 0, {202: 7})
    assert [(r["external_id"], r["monotonic"] - 1000.0) for r in log][:3] == [("a", 0.0), ("b", pytest.approx(0.2)),
                                                                              ("a", pytest.approx(0.6))]
    assert all(r["tags"] == {"a": "1"} and isinstance(r["at"], float) for r in log)


def test_enforced_limits_answer_429_to_a_user_asked_twice_within_a_second():
    clock = ManualClock()
    with PlatformServer(every_user_known=True, enforce_limits=True, clock=clock) as server, \
            httpx.Client(base_url=server.url, headers={"Authorization": "Key k"}) as http:
        first = patch(http, {"a": "1"})
        clock.advance(0.999)
        too_soon = patch(http, {"b": "1"})
        other_user = patch(http, {"b": "1"}, external_id="user-2")
        clock.advance(1.0)
        later = patch(http, {"c": "1"})

        assert [r.status_code for r in (first, too_soon, other_user, later)] == [202, 429, 202, 202]
        assert (too_soon.headers["Retry-After"], too_soon.json()) == ("1", {"errors": [{"title": "API rate limit exceeded"}]})
        assert server.tags(APP_ID, USER) == {"a": "1", "c": "1"}
        assert server.stats()["user_spacing_violations"] == 1


def test_enforced_limits_answer_429_past_1000_requests_in_a_second_for_an_app():
    clock = ManualClock()
    with PlatformServer(every_user_known=True, enforce_limits=True, clock=clock) as server, \
            httpx.Client(base_url=server.url, headers={"Authorization": "Key k"}) as http:
        statuses = [patch(http, {"a": "1"}, external_id=f"user-{i}").status_code for i in range(1001)]
        other_app = patch(http, {"a": "1"}, app_id=OTHER_APP_ID)
        clock.advance(1.0)
        next_second = patch(http, {"a": "1"}, external_id="user-1001")

        assert statuses.count(202) == 1000 and statuses[-1] == 429
        assert (other_app.status_code, next_second.status_code) == (202, 202)
        stats = server.stats()
        assert (stats["over_app_rate"], stats["max_requests_per_second"][APP_ID]) == (1, 1001)


def test_control_endpoints_over_http(platform_server, http):
    assert http.post("/_platform/users", json={"app_id": APP_ID, "external_ids": [USER, "user/2"]}).status_code == 200
    assert http.post("/_platform/faults", json=[{"status": 502, "users": ["user/2"]}]).status_code == 200
    assert patch(http, {"a": "1", "b": "1"}).status_code == 202
    assert patch(http, {"a": "1"}, external_id="user/2").status_code == 502
    assert patch(http, {"b": ""}).status_code == 202

    assert http.get("/_platform/tags", params={"app_id": APP_ID, "external_id": USER}).json() == {"a": "1"}
    assert http.get("/_platform/tags", params={"app_id": APP_ID}).json() == {USER: {"a": "1"}}
    assert [(r["external_id"], r["status"]) for r in http.get("/_platform/requests").json()] == [
        (USER, 202), ("user/2", 502), (USER, 202)]
    stats = http.get("/_platform/stats").json()
    assert (stats["requests"], stats["users"], stats["faults_pending"]) == ({"202": 2, "502": 1}, 2, 0)
    assert stats["max_requests_per_second"] == {APP_ID: 3}

    assert http.post("/_platform/faults", json=[{"status": 42}]).status_code == 400
    assert http.post("/_platform/faults", content=b"{oops").status_code == 400
    assert http.post("/_platform/users", json={"app_id": APP_ID}).status_code == 400
    assert http.post("/_platform/users", json={"app_id": APP_ID, "external_ids": [""]}).status_code == 400
    assert http.get("/_platform/tags").status_code == 404
    assert http.get("/nowhere").status_code == 404
    assert http.patch("/apps/x/users/by/onesignal_id/y", json=tags_body({"a": "1"})).status_code == 404

    assert http.post("/_platform/reset").status_code == 200
    assert http.get("/_platform/requests").json() == []
    assert patch(http, {"a": "1"}).status_code == 404, "reset forgets the users too"


def test_connections_are_kept_alive(platform_server):
    platform_server.add_users(APP_ID, [USER])
    address = urlsplit(platform_server.url)
    connection = HTTPConnection(address.hostname, address.port, timeout=5)
    try:
        answers, sockets = [], set()
        for status in (202, 404, 202):
            connection.request("PATCH", user_path(USER if status == 202 else "nobody"), body=b'{"properties":{"tags":{"a":"1"}}}',
                               headers={"Content-Type": "application/json", "Authorization": f"Key {API_KEY}"})
            answer = connection.getresponse()
            answers.append((answer.status, answer.will_close, len(answer.read()) == int(answer.headers["Content-Length"])))
            sockets.add(id(connection.sock))
        assert answers == [(202, False, True), (404, False, True), (202, False, True)]
        assert len(sockets) == 1, "one connection carried every request"
    finally:
        connection.close()
