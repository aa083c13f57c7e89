"""Slow clients (issue 10, item 3): `bridge web` as the Procfile runs it (WEB_CONCURRENCY=2, PostgreSQL,
Redis) while N connections send their headers one line per 5 s and N more send an authenticated intake
body one byte per 5 s, as the attack that took the API down did. Meanwhile a probe opens a new
connection every PROBE_INTERVAL seconds for `/healthz`, then another for a one-event intake POST, each
with a PROBE_TIMEOUT; the figures are how many answered 2xx in time, and their latency.

The server runs from SERVER_TREE (BRIDGE_BENCH_SERVER_TREE=/path/to/checkout), so an older commit can be
measured side by side.
"""
from __future__ import annotations

import http.client
import socket
import threading
import time

import orjson

from bench.common import BENCH_SECRET_KEY, REDIS_URL, flush_redis, percentile, scratch_database, server_app, server_upgrade, start_bridge_web

DRIP_SECONDS = 5  # one header line, or one body byte, per connection every 5 s
PROBE_INTERVAL = 0.5
PROBE_TIMEOUT = 2.0


def run(counts: tuple[int, ...], seconds: int, repeat: int) -> list[tuple[str, str, str]]:
    """Rows (figure, value, note) for the report table: per count of slow connections of each kind, the
    probes of `repeat` runs pooled (answered / sent, and the answered ones' latency)."""
    rows = []
    for count in counts:
        runs = [measure(count, seconds) for _ in range(repeat)]
        probes = sum(r["probes"] for r in runs)
        health = [ms for r in runs for ms in r["health"]]
        intake = [ms for r in runs for ms in r["intake"]]
        rows.append((f"{count} + {count} slow connections: /healthz answered, p50 / max (ms)",
                     f"{len(health)}/{probes}, {_latencies(health)}",
                     f"{count} stalled in headers + {count} in an intake body, dripping every {DRIP_SECONDS} s; "
                     f"a new connection per probe, every {PROBE_INTERVAL} s for {seconds} s, {PROBE_TIMEOUT:g} s timeout; "
                     f"{repeat} run(s) pooled"))
        rows.append((f"{count} + {count} slow connections: intake POST answered, p50 / max (ms)",
                     f"{len(intake)}/{probes}, {_latencies(intake)}", "one event per request, 202 expected"))
    return rows


def measure(count: int, seconds: int) -> dict:
    """Probe a fresh `bridge web` for `seconds` while `count` + `count` slow connections drip."""
    with scratch_database("bridge_bench_slow", migrate=server_upgrade) as database_url:
        flush_redis()
        app_id, api_key = server_app(database_url)
        web, base = start_bridge_web({"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "SECRET_KEY": BENCH_SECRET_KEY,
                                      "WEB_CONCURRENCY": "2",
                                      "AMPLITUDE_BASE_URL": "http://127.0.0.1:9", "LOG_LEVEL": "WARNING"})
        host, port = base.removeprefix("http://").split(":")
        stop = threading.Event()
        slow: list[tuple[socket.socket, bytes]] = []
        try:
            slow += _open_slow(host, int(port), count, app_id, api_key)
            dripping = threading.Thread(target=_drip, args=(slow, stop), daemon=True)
            dripping.start()
            result = _probe(host, int(port), app_id, api_key, seconds)
        finally:
            stop.set()
            web.stop()
        for connection, _ in slow:
            connection.close()
    return result


def _open_slow(host: str, port: int, count: int, app_id: str, api_key: str) -> list[tuple[socket.socket, bytes]]:
    """`count` connections that have sent a request line and one header, and `count` that have sent an
    intake request's headers (Content-Length 100,000) and one byte of its body; with what each drips."""
    headers = b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n"
    body = (f"POST /v1/apps/{app_id}/events HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer {api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n[").encode()
    slow = []
    for start, drip in [(headers, b"X-Slow: 1\r\n")] * count + [(body, b" ")] * count:
        connection = socket.create_connection((host, port), timeout=5)
        connection.sendall(start)
        slow.append((connection, drip))
    return slow


def _drip(slow: list[tuple[socket.socket, bytes]], stop: threading.Event) -> None:
    while not stop.wait(DRIP_SECONDS):
        for connection, drip in slow:
            try:
                connection.sendall(drip)
            except OSError:  # closed by the server: that is its read timeout at work
                pass


def _probe(host: str, port: int, app_id: str, api_key: str, seconds: int) -> dict:
    health: list[float] = []
    intake: list[float] = []
    probes = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        probes += 1
        _timed(health, host, port, "GET", "/healthz", None, {})
        body = orjson.dumps({"event": {"id": f"probe-{probes}", "kind": "message.push.sent", "timestamp": 1764000000,
                                       "subscription_id": f"sub-{probes}", "subscription_device_type": "iOSPush",
                                       "external_id": f"user-{probes}"}, "message": {"id": "m-1"}})
        _timed(intake, host, port, "POST", f"/v1/apps/{app_id}/events", body,
               {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
        time.sleep(max(0.0, PROBE_INTERVAL - (time.monotonic() - started)))
    return {"probes": probes, "health": health, "intake": intake}


def _timed(latencies: list[float], host: str, port: int, method: str, path: str, body: bytes | None,
           headers: dict[str, str]) -> None:
    """One request on a new connection; its latency (ms) is appended to `latencies` if it answered 2xx
    within PROBE_TIMEOUT."""
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=PROBE_TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        answer.read()
        if 200 <= answer.status < 300 and time.monotonic() - started <= PROBE_TIMEOUT:
            latencies.append((time.monotonic() - started) * 1000)
    except OSError:  # refused, reset or timed out: not answered
        pass
    finally:
        connection.close()


def _latencies(values: list[float]) -> str:
    if not values:
        return "- / -"
    return f"{percentile(sorted(values), 50):,.0f} / {max(values):,.0f}"
