"""The local Amplitude sink: the contract it enforces, its fault injection and its control endpoints."""
from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from http.client import HTTPConnection
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from bridge.amplitude.client import (
    BAD_REQUEST, HIDDEN_KEY, INVALID_KEY, OK, THROTTLED, TOO_LARGE, TRANSIENT, AmplitudeClient,
)
from bridge.amplitude.sink import AmplitudeSink

KEY = "app-key-1"
OTHER_KEY = "app-key-2"


def event(user_id: str | None = "user-00001", device_id: str | None = None, **fields) -> dict:
    out = {"event_type": "message_delivered", "time": 1_763_856_073_000, **fields}
    if user_id is not None:
        out["user_id"] = user_id
    if device_id is not None:
        out["device_id"] = device_id
    return out


def body(events: list, api_key: str | None = KEY, **extra) -> bytes:
    payload = {"events": events, **extra}
    if api_key is not None:
        payload["api_key"] = api_key
    return orjson.dumps(payload)


def no_event_problems(**fields) -> dict:
    return {"events_with_invalid_fields": {}, "events_with_missing_fields": {}, "events_with_invalid_id_lengths": {},
            "silenced_devices": [], "silenced_events": [], **fields}


@pytest.fixture
def sink():
    with AmplitudeSink(api_keys={KEY, OTHER_KEY}) as running:
        yield running


@pytest.fixture
def http(sink):
    with httpx.Client(base_url=sink.url, timeout=5) as client:
        yield client


def post(http: httpx.Client, content: bytes, path: str = "/2/httpapi", **headers) -> httpx.Response:
    return http.post(path, content=content, headers={"Content-Type": "application/json", **headers})


def test_valid_request_is_ingested_and_counted(sink, http):
    events = [event(insert_id="a"), event("user-00002", "device-0002", insert_id="b"), event(device_id="device-0003")]
    content = body(events)

    response = post(http, content)

    assert response.status_code == 200
    answer = response.json()
    assert {k: v for k, v in answer.items() if k != "server_upload_time"} == {
        "code": 200, "events_ingested": 3, "payload_size_bytes": len(content)}
    assert isinstance(answer["server_upload_time"], int)
    assert sink.events() == events
    assert sink.stats() == {"requests": {200: 1}, "events_received": 3, "events_ingested": 3, "duplicates": 0,
                            "unique_insert_ids": 2, "resets": 0, "faults_pending": 0}


def test_batch_endpoint_ingests_too(sink, http):
    assert post(http, body([event()]), path="/batch").status_code == 200
    assert len(sink.events()) == 1


def test_repeated_insert_id_for_the_same_device_or_user_is_ignored(sink, http):
    first = [
        event("user-00001", "device-A", insert_id="i1"),
        event("user-00002", "device-A", insert_id="i1"),  # same device, same insert_id: duplicate
        event("user-00001", "device-B", insert_id="i1"),  # other device: kept
        event("user-00009", None, insert_id="i2"),
        event("user-00009", None),  # no insert_id: never a duplicate
        event("user-00009", None),
    ]
    second = [
        event("user-00009", None, insert_id="i2"),  # same user without device: duplicate
        event("user-00008", None, insert_id="i2"),  # other user: kept
        event("user-00001", "device-B", insert_id="i1"),  # duplicate of an earlier request
    ]

    assert post(http, body(first)).json()["events_ingested"] == 6
    assert post(http, body(second)).status_code == 200
    assert post(http, body([event("user-00001", "device-A", insert_id="i1")], api_key=OTHER_KEY)).status_code == 200

    assert sink.events(KEY) == [first[0], first[2], first[3], first[4], first[5], second[1]]
    assert len(sink.events(OTHER_KEY)) == 1, "deduplication is per Amplitude project (api key)"
    stats = sink.stats()
    assert (stats["events_received"], stats["events_ingested"], stats["duplicates"]) == (10, 7, 3)
    assert stats["unique_insert_ids"] == 5


@pytest.mark.parametrize(("content", "expected"), [
    (b"{not json", {"code": 400, "error": "Invalid JSON request body"}),
    (b"[1, 2]", {"code": 400, "error": "Invalid JSON request body"}),
    (body([event()], api_key=None),
     {"code": 400, "error": "Request missing required field", "missing_field": "api_key", **no_event_problems()}),
    (body([]), {"code": 400, "error": "Request missing required field", "missing_field": "events", **no_event_problems()}),
    (orjson.dumps({"api_key": KEY}),
     {"code": 400, "error": "Request missing required field", "missing_field": "events", **no_event_problems()}),
    (body([event()], api_key="not-a-key"), {"code": 400, "error": "Invalid API key: not-a-key"}),
], ids=["not-json", "not-an-object", "no-api-key", "empty-events", "no-events", "invalid-api-key"])
def test_request_level_400s(sink, http, content, expected):
    response = post(http, content)

    assert response.status_code == 400
    assert response.json() == expected
    assert sink.events() == []


def test_any_invalid_event_rejects_the_whole_request_with_indices_by_field(sink, http):
    events = [
        event(),                                       # 0 valid
        {"user_id": "user-00001"},                     # 1 no event_type
        {"event_type": "x"},                           # 2 neither user_id nor device_id
        event("abc"),                                  # 3 user_id too short
        event(None, "dev"),                            # 4 device_id too short
        event("Anonymous"),                            # 5 placeholder user_id
        event("user-00001", "NULL"),                   # 6 placeholder device_id
        event(time="1763856073000"),                   # 7 time not an integer
        event(time=1.5),                               # 8 time not an integer
        {"user_id": "-1", "time": "now"},              # 9 several problems at once
    ]

    response = post(http, body(events))

    assert response.status_code == 400
    assert response.json() == {
        "code": 400, "error": "Request missing required field",
        "events_with_invalid_fields": {"user_id": [5, 9], "device_id": [6], "time": [7, 8, 9]},
        "events_with_missing_fields": {"event_type": [1, 9], "user_id": [2]},
        "events_with_invalid_id_lengths": {"user_id": [3], "device_id": [4]},
        "silenced_devices": [], "silenced_events": [],
    }
    assert sink.events() == []
    assert sink.stats()["requests"] == {400: 1}


def test_min_id_length_option_allows_short_ids_but_not_placeholders(sink, http):
    options = {"min_id_length": 1}

    assert post(http, body([event("7"), event(None, "d")], options=options)).status_code == 200
    rejected = post(http, body([event("7"), event("0")], options=options))

    assert rejected.status_code == 400
    assert rejected.json() == {"code": 400, "error": "Invalid field values on some events",
                               **no_event_problems(events_with_invalid_fields={"user_id": [1]})}


def test_invalid_api_key_through_the_client():
    with AmplitudeSink(api_keys={KEY}) as sink, amplitude_client() as client:
        answer = client.send(sink.url, "wrong-key", [orjson.dumps(event())])

    assert (answer.outcome, answer.error) == (INVALID_KEY, f"Invalid API key: {HIDDEN_KEY}")  # never the key itself


@contextmanager
def amplitude_client():
    client = AmplitudeClient(timeout=5)
    try:
        yield client
    finally:
        client.close()


def padded_body(size: int) -> bytes:
    """A valid one-event request body of exactly `size` bytes."""
    base = body([event(padding="")])
    return body([event(padding="x" * (size - len(base)))])


def test_413_from_one_million_bytes_on_http_v2_but_not_on_batch(sink, http):
    assert post(http, padded_body(999_999)).status_code == 200
    too_large = post(http, padded_body(1_000_000))
    assert (too_large.status_code, too_large.json()) == (413, {"code": 413, "error": "Payload too large"})
    assert post(http, padded_body(1_000_000), path="/batch").status_code == 200
    assert sink.stats()["events_ingested"] == 2


@pytest.mark.parametrize("path", ["/2/httpapi", "/batch"])
def test_413_from_2001_events(sink, http, path):
    events = [event(insert_id=str(i)) for i in range(2001)]

    assert post(http, body(events[:2000]), path=path).status_code == 200
    too_many = post(http, body(events), path=path)

    assert (too_many.status_code, too_many.json()) == (413, {"code": 413, "error": "Payload too large"})
    assert sink.stats()["events_ingested"] == 2000


def test_gzip_body_is_accepted_and_limited_on_its_decompressed_size(sink, http):
    content = body([event()])

    accepted = post(http, gzip.compress(content), **{"Content-Encoding": "gzip"})
    too_large = post(http, gzip.compress(padded_body(1_000_000)), **{"Content-Encoding": "gzip"})
    corrupt = post(http, b"not gzip at all", **{"Content-Encoding": "gzip"})

    assert (accepted.status_code, accepted.json()["payload_size_bytes"]) == (200, len(content))
    assert too_large.status_code == 413
    assert (corrupt.status_code, corrupt.json()) == (400, {"code": 400, "error": "Invalid gzip request body"})
    assert len(sink.events()) == 1


def test_throttled_users_and_devices_get_429_and_nothing_is_ingested(sink, http):
    sink.throttle(users={"user-slow"}, devices={"device-slow"})
    events = [event("user-00001"), event("user-slow"), event(None, "device-slow"), event("user-slow", "device-slow")]

    response = post(http, body(events))

    assert response.status_code == 429
    assert response.json() == {
        "code": 429, "error": "Too many requests for some devices and users", "eps_threshold": 30,
        "throttled_users": {"user-slow": 2}, "throttled_devices": {"device-slow": 2}, "throttled_events": [1, 2, 3],
        "exceeded_daily_quota_users": {}, "exceeded_daily_quota_devices": {},
    }
    assert sink.events() == []

    sink.unthrottle()
    assert post(http, body(events)).status_code == 200


def test_daily_quota_shape(sink, http):
    sink.throttle(daily_quota_users={"user-heavy"}, daily_quota_devices={"device-heavy"})

    response = post(http, body([event("user-heavy"), event(), event(None, "device-heavy")]), path="/batch")

    assert response.status_code == 429
    assert response.json() == {
        "code": 429, "error": "Too many requests for some devices and users", "eps_threshold": 1000,
        "throttled_users": {}, "throttled_devices": {}, "throttled_events": [0, 2],
        "exceeded_daily_quota_users": {"user-heavy": 1}, "exceeded_daily_quota_devices": {"device-heavy": 1},
    }
    assert sink.events() == []


def test_fault_that_ingests_then_answers_500(sink, http):
    sink.add_faults([{"status": 500, "ingest": True}])
    content = body([event(insert_id="once")])

    failed = post(http, content)
    retried = post(http, content)

    assert (failed.status_code, failed.json()) == (500, {"code": 500, "error": "Internal Server Error"})
    assert retried.status_code == 200
    assert len(sink.events()) == 1
    assert sink.stats()["duplicates"] == 1
    assert sink.stats()["requests"] == {500: 1, 200: 1}


def test_fault_times_and_order(sink, http):
    sink.add_faults([{"status": 503, "times": 2}, {"status": 429}, {"status": 400, "body": {"code": 400, "error": "nope"}}])
    content = body([event()])

    statuses = [post(http, content).status_code for _ in range(5)]

    assert statuses == [503, 503, 429, 400, 200]
    assert len(sink.events()) == 1, "only the request past the faults was ingested"
    assert sink.stats()["faults_pending"] == 0


def test_reset_fault_drops_the_connection(sink, http):
    sink.add_faults([{"reset": True}])

    with pytest.raises(httpx.TransportError):
        post(http, body([event()]))

    assert post(http, body([event()])).status_code == 200
    assert sink.stats()["resets"] == 1
    assert len(sink.events()) == 1


def test_every_request_is_logged_with_its_path_arrival_and_answer(sink, http):
    sink.add_faults([{"status": 413}, {"reset": True}])
    before = time.time()
    assert post(http, body([event()])).status_code == 413
    with pytest.raises(httpx.TransportError):
        post(http, body([event()]), path="/batch")
    assert post(http, body([event()])).status_code == 200
    after = time.time()

    log = sink.requests()
    assert [(r["path"], r["status"]) for r in log] == [("/2/httpapi", 413), ("/batch", None), ("/2/httpapi", 200)]
    assert before <= log[0]["at"] <= log[1]["at"] <= log[2]["at"] <= after
    assert http.get("/_sink/requests").json() == log
    sink.reset()
    assert sink.requests() == []


def test_delay_fault_outlasts_a_client_timeout(sink):
    sink.add_faults([{"status": 503, "delay": 0.3}])

    with httpx.Client(base_url=sink.url, timeout=0.05) as impatient, pytest.raises(httpx.TimeoutException):
        post(impatient, body([event()]))

    assert sink.stats()["faults_pending"] == 0


@pytest.mark.parametrize("fault", [
    {"status": 200}, {"status": 600}, {"times": 1}, {"status": 503, "times": 0}, {"status": 503, "bogus": 1},
    {"status": 503, "delay": "1"}, {"status": 503, "body": [1]}, {"reset": "yes"}, "503",
])
def test_malformed_faults_are_refused_and_nothing_is_queued(sink, fault):
    with pytest.raises(ValueError):
        sink.add_faults([{"status": 500}, fault])

    assert sink.stats()["faults_pending"] == 0


def test_the_client_classifies_every_kind_of_answer(sink):
    """The sink and the client agree on the contract."""
    sink.add_faults([{"status": 413}, {"status": 502}])
    payloads = [orjson.dumps(event()), orjson.dumps(event("null")), orjson.dumps(event("user-slow"))]

    with amplitude_client() as client:
        too_large = client.send(sink.url, KEY, payloads)
        transient = client.send(sink.url, KEY, payloads)
        bad = client.send(sink.url, KEY, payloads)
        sink.throttle(users={"user-slow"})
        throttled = client.send(sink.url, KEY, [payloads[0], payloads[2]])
        ok = client.send(sink.url, KEY, payloads[:1])

    assert [a.outcome for a in (too_large, transient, bad, throttled, ok)] == [TOO_LARGE, TRANSIENT, BAD_REQUEST, THROTTLED, OK]
    assert bad.invalid_events == {1: "invalid_fields: user_id"}
    assert (throttled.throttled_users, throttled.throttled_events) == ({"user-slow"}, {1})


def test_control_endpoints_over_http(sink, http):
    assert http.post("/_sink/faults", json=[{"status": 504}]).status_code == 200
    assert post(http, body([event()])).status_code == 504
    assert http.post("/_sink/throttle", json={"users": ["user-00001"]}).status_code == 200
    assert post(http, body([event()])).status_code == 429
    assert http.post("/_sink/throttle", json={}).status_code == 200
    assert post(http, body([event()])).status_code == 200
    assert post(http, body([event("user-other")], api_key=OTHER_KEY)).status_code == 200

    assert http.get("/_sink/stats").json() == {
        "requests": {"504": 1, "429": 1, "200": 2}, "events_received": 3, "events_ingested": 2, "duplicates": 0,
        "unique_insert_ids": 0, "resets": 0, "faults_pending": 0}
    assert http.get("/_sink/events").json() == [event(), event("user-other")]
    assert http.get("/_sink/events", params={"api_key": OTHER_KEY}).json() == [event("user-other")]

    assert http.post("/_sink/faults", json=[{"status": 42}]).status_code == 400
    assert http.post("/_sink/throttle", json={"people": ["x"]}).status_code == 400
    assert http.post("/_sink/faults", content=b"{oops").status_code == 400
    assert http.get("/nowhere").status_code == 404

    assert http.post("/_sink/reset").status_code == 200
    assert http.get("/_sink/events").json() == []
    assert http.get("/_sink/stats").json()["requests"] == {}


def test_without_recording_events_counters_and_dedup_still_work():
    with AmplitudeSink(record_events=False) as sink, httpx.Client(base_url=sink.url) as http:
        post(http, body([event(insert_id="a"), event(insert_id="a"), event()]))

        assert sink.events() == [] and sink.requests() == []
        assert (sink.stats()["events_ingested"], sink.stats()["duplicates"]) == (2, 1)


def test_connections_are_kept_alive(sink):
    address = urlsplit(sink.url)
    connection = HTTPConnection(address.hostname, address.port, timeout=5)
    try:
        answers, sockets = [], set()
        for _ in range(3):
            connection.request("POST", "/2/httpapi", body=body([event()]), headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            answers.append((answer.status, answer.will_close, len(answer.read()) == int(answer.headers["Content-Length"])))
            sockets.add(id(connection.sock))
        assert answers == [(200, False, True)] * 3
        assert len(sockets) == 1, "one connection carried every request"
    finally:
        connection.close()


def test_runs_standalone_until_sigterm():
    command = [sys.executable, "-m", "bridge.amplitude.sink", "--port", "0", "--api-key", KEY]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            url = process.stdout.readline().strip()
            assert httpx.post(url + "/2/httpapi", content=body([event()])).status_code == 200
            assert httpx.post(url + "/2/httpapi", content=body([event()], api_key=OTHER_KEY)).status_code == 400
            assert httpx.get(url + "/_sink/stats").json()["events_ingested"] == 1
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0


def test_arrival_times_are_kept_per_insert_id_when_asked():
    import time as _time

    with AmplitudeSink(track_arrivals=True) as sink:
        before = _time.time()
        body = {"api_key": "k", "events": [{"event_type": "e", "user_id": "user-1", "insert_id": "a"},
                                            {"event_type": "e", "user_id": "user-1", "insert_id": "b"}]}
        assert httpx.post(f"{sink.url}/2/httpapi", json=body).status_code == 200
        arrivals = httpx.get(f"{sink.url}/_sink/arrivals").json()
    assert set(arrivals) == {"a", "b"} and all(before <= t <= _time.time() for t in arrivals.values())
