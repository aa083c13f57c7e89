"""An idle worker: how long an event posted after a quiet spell takes to reach Amplitude. Run the way
the Procfile runs the bridge, on PostgreSQL and Redis: the release (`bridge db upgrade`), one app,
`bridge web` and one `bridge worker`, delivering to the local Amplitude-compatible sink.

After each quiet spell of GAPS seconds (nothing posted, nothing pending: the worker waits on Redis),
one event is posted through the real intake; the figure is the time from its 202 to its arrival at the
sink. Before the fix, redis-py 8's 5 s socket timeout made an idle worker fail its wait every few
seconds and back off for up to a minute, so the later an event came in a quiet spell, the longer it
could wait. The server runs from SERVER_TREE.
"""
from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from bench.common import (BENCH_SECRET_KEY, REDIS_URL, Proc, flush_redis, median, run_bridge, scratch_database,
                          server_upgrade, start_bridge, start_bridge_web, start_sink)
from bench.delivery import source_events

GAPS = (10, 30, 60, 90)  # seconds of quiet before each event


ERROR_LINE = re.compile(r"\bERROR\b")  # a line the worker logged at ERROR, in either log format


def measure(gaps: tuple[float, ...]) -> tuple[list[float], int]:
    """One run: for each gap, the seconds from the event's 202 to its arrival at the sink; and how many
    lines the worker logged at ERROR meanwhile (it logs to stdout, at LOG_LEVEL=WARNING here)."""
    items = source_events(len(gaps))
    worker_log = Path(tempfile.mkdtemp(prefix="bridge-bench-idle-")) / "worker.log"
    with scratch_database("bridge_bench_idle", migrate=server_upgrade) as database_url:
        flush_redis()
        app = orjson.loads(run_bridge(["apps", "create", "--name", "idle", "--amplitude-api-key", "idle-key"],
                                      {"DATABASE_URL": database_url, "JOB_RUNNER": "manual"}))
        sink, sink_url = start_sink()
        env = {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "SECRET_KEY": BENCH_SECRET_KEY,
               "AMPLITUDE_BASE_URL": sink_url, "WEB_CONCURRENCY": "1", "LOG_LEVEL": "WARNING"}
        procs: list[Proc] = [sink]
        delays = []
        try:
            procs.append(start_bridge(["worker"], env, log=worker_log))
            web, base = start_bridge_web(env)
            procs.append(web)
            headers = {"Authorization": f"Bearer {app['api_key']}", "Content-Type": "application/json"}
            with httpx.Client(timeout=30) as http:
                for gap, item in zip(gaps, items):
                    time.sleep(gap)
                    answer = http.post(f"{base}/v1/apps/{app['app_id']}/events", content=orjson.dumps(item),
                                       headers=headers)
                    acked = time.time()
                    if answer.status_code != 202:
                        raise RuntimeError(f"the intake answered {answer.status_code}: {answer.text}")
                    deadline = time.monotonic() + 300
                    while (arrived := http.get(f"{sink_url}/_sink/arrivals").json().get(item["event"]["id"])) is None:
                        if time.monotonic() > deadline:
                            raise TimeoutError("an event posted to an idle worker did not arrive in 300 s")
                        time.sleep(0.02)
                    delays.append(arrived - acked)
        finally:
            for proc in reversed(procs):
                proc.stop()
    errors = sum(1 for line in worker_log.read_text(errors="replace").splitlines() if ERROR_LINE.search(line))
    return delays, errors


def run(gaps: tuple[float, ...], repeat: int) -> list[tuple[str, str, str]]:
    measured = [measure(gaps) for _ in range(repeat)]
    runs = [delays for delays, _ in measured]
    per_gap = [median([r[i] for r in runs]) * 1000 for i in range(len(gaps))]
    worst = max(max(r) for r in runs) * 1000
    return [("idle worker: from 202 to sink after a quiet spell (ms)",
             " / ".join(f"{ms:,.0f}" for ms in per_gap),
             f"one event after {' / '.join(f'{g:g}' for g in gaps)} s of quiet; worst of {repeat} run(s): "
             f"{worst:,.0f} ms; 1 worker, bridge web 1 x 8"),
            ("idle worker: ERROR lines in its log per run",
             " / ".join(str(errors) for _, errors in measured),
             f"over the {sum(gaps):g} s of quiet and the {len(gaps)} events of each run")]
