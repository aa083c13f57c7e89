"""Slow clients against the real `bridge web` (issue 10, item 3): connections that send their headers,
or their body, a little at a time and then nothing. Before the fix, 50 of them took every gunicorn
thread and `/healthz` stopped answering.

Each test opens N connections stalled in their headers and N stalled in an authenticated intake body
(the app reads that body: the worst case), then checks that `/healthz` and an intake POST still answer
at once while every slow connection is still open, and that the server closes them all once
WEB_READ_TIMEOUT_SECONDS (short here) has passed without a byte from them."""
from __future__ import annotations

import errno
import json
import socket
import time

import httpx
import pytest

from support.factories import event_item
from support.processes import SECRET_KEY, bridge_cli, log_records, start_web, wait_until

pytestmark = pytest.mark.hostile

READ_TIMEOUT_SECONDS = 4  # long enough to probe while the slow connections are open, short for the test
PROMPT_SECONDS = 2.0  # "answers at once": the longest a probe may take with the slow connections open


@pytest.fixture
def bridge(database_url, tmp_path, request):
    """`bridge web` as the Procfile runs it, on the parametrized database: PostgreSQL with Redis (2
    processes), or embedded SQLite (1 process); with an app and its api_key."""
    env = {"DATABASE_URL": database_url.replace("+psycopg", ""), "AMPLITUDE_BASE_URL": "http://127.0.0.1:9",
           "LOG_LEVEL": "INFO", "WEB_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT_SECONDS), "REDIS_URL": ""}
    if database_url.startswith("postgresql"):
        env.update(REDIS_URL=request.getfixturevalue("redis_url"), SECRET_KEY=SECRET_KEY)
    app = bridge_cli({**env, "JOB_RUNNER": "manual"}, "apps", "create", "--name", "Slow", "--amplitude-api-key", "k")
    web, url = start_web(env, tmp_path / "web.log")
    yield web, url, app
    web.stop()


def open_slow_connections(url: str, count: int, app: dict) -> list[socket.socket]:
    """`count` connections stalled in their headers and `count` stalled in an intake body."""
    host, port = url.removeprefix("http://").split(":")
    stalled_headers = b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nX-Slow: "
    stalled_body = (f"POST /v1/apps/{app['app_id']}/events HTTP/1.1\r\nHost: bridge\r\n"
                    f"Authorization: Bearer {app['api_key']}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: 100000\r\n\r\n[{{").encode()
    connections = []
    for request_start in [stalled_headers] * count + [stalled_body] * count:
        connection = socket.create_connection((host, int(port)), timeout=5)
        connection.sendall(request_start)
        connection.settimeout(None)  # blocking: closed_by_server's MSG_DONTWAIT then peeks without waiting
        connections.append(connection)
    return connections


def closed_by_server(connection: socket.socket) -> bool:
    """Whether the server has closed `connection` (without waiting)."""
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError as exc:
        return exc.errno in (errno.ECONNRESET, errno.EPIPE)


@pytest.mark.slow
@pytest.mark.parametrize("count", [50, 200])
def test_slow_clients_cannot_starve_the_web_tier(bridge, count):
    web, url, app = bridge
    slow = open_slow_connections(url, count, app)
    try:
        with httpx.Client(timeout=PROMPT_SECONDS) as client:
            for n in range(5):
                started = time.monotonic()
                health = client.get(f"{url}/healthz")
                intake = client.post(f"{url}/v1/apps/{app['app_id']}/events", content=json.dumps(event_item(f"slow-{n}")),
                                     headers={"Authorization": f"Bearer {app['api_key']}",
                                              "Content-Type": "application/json", "X-Request-ID": f"probe-{n}"})
                assert health.status_code == 200 and intake.status_code == 202, (health.text, intake.text)
                assert intake.json()["accepted"] == 1 and intake.headers["X-Request-ID"] == f"probe-{n}"
                assert time.monotonic() - started < PROMPT_SECONDS
        assert not any(closed_by_server(c) for c in slow), "the probes ran while every slow connection was open"

        # The server closes what stays silent past the read timeout (checked every half timeout).
        wait_until(lambda: all(closed_by_server(c) for c in slow), READ_TIMEOUT_SECONDS * 4,
                   f"the server to close {len(slow)} silent connections")
    finally:
        for connection in slow:
            connection.close()
    # The access log keeps its format, one line per answered request, with the id each probe sent.
    wait_until(lambda: web.output().count('path=/v1/apps/') >= 5, 5, "the access log lines of the probes")
    probes = [r for r in log_records(web.output(), "text") if r["logger"] == "gunicorn.access" and r["method"] == "POST"]
    assert [(r["req"], r["status"]) for r in probes] == [(f"probe-{n}", "202") for n in range(5)]
