"""End to end: time from the intake's 202 to Amplitude (the local sink) receiving each event, at a
steady load, through gunicorn, PostgreSQL, Redis and one `bridge worker`."""
from __future__ import annotations

import sys
import threading
import time

import httpx
import orjson

from bench.common import BENCH_SECRET_KEY, REDIS_URL, Proc, flush_redis, new_app, scratch_database, start_web
from bench.delivery import source_events


def measure(rate: int, seconds: int, per_request: int = 100) -> dict[str, float]:
    """Post `rate` events/s for `seconds`; returns median and p99 latency (ms) from 202 to the sink."""
    with scratch_database("bridge_bench_latency") as database_url:
        app_id, tokens = new_app(database_url)
        flush_redis()
        sink = Proc([sys.executable, "-m", "bridge.amplitude.sink", "--port", "0", "--no-record-events", "--track-arrivals"],
                    read_stdout=True)
        sink_url = sink.popen.stdout.readline().strip()
        env = {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "SECRET_KEY": BENCH_SECRET_KEY, "AMPLITUDE_BASE_URL": sink_url, "LOG_LEVEL": "WARNING"}
        worker = Proc([sys.executable, "-m", "bridge", "worker"], env)  # booting while gunicorn starts
        web, base = start_web(env)
        url = f"{base}/v1/apps/{app_id}/events"
        headers = {"Authorization": f"Bearer {tokens.api_key}", "Content-Type": "application/json"}
        total = rate * seconds // per_request
        bodies = [orjson.dumps(source_events(per_request, i * per_request)) for i in range(total)]
        acked: dict[int, float] = {}
        interval = per_request / rate
        start = time.perf_counter()

        def post(i: int) -> None:
            with httpx.Client(timeout=30) as http:
                response = http.post(url, content=bodies[i], headers=headers)
            if response.status_code != 202:
                raise RuntimeError(response.text)
            acked[i] = time.time()

        threads = []
        for i in range(total):  # open loop: requests go out on schedule whatever the answers' pace
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            threads.append(threading.Thread(target=post, args=(i,)))
            threads[-1].start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            arrivals = httpx.get(f"{sink_url}/_sink/arrivals", timeout=30).json()
            if len(arrivals) >= total * per_request:
                break
            time.sleep(0.5)
        rss = {"web": web.stop(), "worker": worker.stop()}
        sink.stop()
    latencies = sorted(arrivals[f"bench-{i * per_request + j:09d}"] - acked[i]
                       for i in range(total) for j in range(per_request))
    return {"p50": latencies[len(latencies) // 2] * 1000, "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
            "worker_rss": rss["worker"]}


def run(seconds: int, repeat: int) -> list[tuple[str, str, str]]:
    from bench.common import median

    runs = [measure(2000, seconds) for _ in range(repeat)]
    return [("end to end at 2,000 events/s: p50 / p99 from 202 to sink (ms)",
             f"{median([r['p50'] for r in runs]):.0f} / {median([r['p99'] for r in runs]):.0f}",
             f"{seconds}s steady load, 1 worker, sweep every 5 s")]
