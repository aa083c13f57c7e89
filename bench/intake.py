"""Intake: events/s accepted durably over HTTP (gunicorn, 100-event requests, concurrent clients),
with p50 / p99 request latency and the web processes' peak RSS."""
from __future__ import annotations

import threading
import time

import httpx
import orjson

from bench.common import Analyzer, median, new_app, scratch_database, start_web
from bench.delivery import source_events


def measure(requests: int, clients: int, per_request: int = 100) -> dict[str, float]:
    """Post `requests` bodies of `per_request` events from `clients` threads; returns rate and latencies."""
    with scratch_database("bridge_bench_intake") as database_url:
        app_id, tokens = new_app(database_url)
        # No queue at all: intake must not depend on it (the sweep would deliver later).
        web, base = start_web({"DATABASE_URL": database_url, "JOB_RUNNER": "manual", "LOG_LEVEL": "WARNING"})
        url = f"{base}/v1/apps/{app_id}/events"
        headers = {"Authorization": f"Bearer {tokens.api_key}", "Content-Type": "application/json"}
        bodies = [orjson.dumps(source_events(per_request, i * per_request)) for i in range(requests)]
        latencies: list[float] = []
        lock = threading.Lock()
        next_index = iter(range(requests))

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                for i in next_index:
                    start = time.perf_counter()
                    response = http.post(url, content=bodies[i], headers=headers)
                    elapsed = time.perf_counter() - start
                    if response.status_code != 202 or response.json()["accepted"] != per_request:
                        raise RuntimeError(f"intake answered {response.status_code}: {response.text[:200]}")
                    with lock:
                        latencies.append(elapsed)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        with Analyzer(database_url):
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - started
        rss = web.tree_peak_rss_mb()
        web.stop()
    latencies.sort()
    return {"rate": requests * per_request / wall, "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000, "rss": rss}


def run(requests: int, repeat: int) -> list[tuple[str, str, str]]:
    runs = [measure(requests, clients=4) for _ in range(repeat)]
    return [
        ("intake, durable (events/s)", f"{median([r['rate'] for r in runs]):,.0f}",
         f"{requests:,} requests of 100 events, 4 clients, gunicorn 2 processes x 4 threads"),
        ("intake p50 / p99 per 100-event request (ms)",
         f"{median([r['p50'] for r in runs]):.0f} / {median([r['p99'] for r in runs]):.0f}", ""),
        ("web peak RSS, intake (MB)", f"{max(r['rss'] for r in runs):.0f}", "largest gunicorn process"),
    ]
