"""Event streams as the messaging platform sends them, against the bridge run the way the Procfile runs it:
`bridge web` (WEB_CONCURRENCY=2 processes x 8 threads) and one `bridge worker` draining meanwhile, on
PostgreSQL and Redis, delivering to the sink in Amplitude's place.

- Single events from recurring subscriptions (known to the registry beforehand), closed loop (wrk,
  16 connections): requests/s, latency, and the web tier's CPU time per request. The stream mixes in
  what the message catalog costs (bench.delivery.source_events): events describing their message,
  which teach it, and late clicks with only a message id, of described and of never-described messages. The same load in
  embedded mode too (SQLite, no Redis: one web process with a delivery thread).
- 100-event arrays whose every event comes from a subscription new to the registry (wrk, 4 connections).
- A trickle: a steady 1,000 single events/s from an open-loop client in its own process
  (bench.trickle_client), measuring how many events each Amplitude request carries and the time from
  each 202 to the event's arrival at the sink (its insert_id is the event id: bridge.mapping.insert_id_for).

The server runs from SERVER_TREE (BRIDGE_BENCH_SERVER_TREE=/path/to/checkout), so an older commit can be
measured side by side with this harness.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import sqlalchemy

from bench.common import (BENCH_METRICS_TOKEN, BENCH_SECRET_KEY, REDIS_URL, ROOT, Analyzer, ExitedEarly, Proc, analyze, ensure_wrk, flush_redis, median, percentile,
                          scratch_database, server_app, server_upgrade, sink_stats, start_bridge, start_bridge_web,
                          start_sink)
from bench.delivery import KINDS, source_events

WRK_SCRIPT = Path(__file__).with_name("wrk_events.lua")
RECORDS_PER_REQUEST = 1000  # the registry API's limit
TRICKLE_RATE = 1000  # single events per second
TRICKLE_CONNECTIONS = 16
PACED_REQUESTS = 100  # 100-event requests per second: 10,000 events/s


@dataclass
class Bridge:
    """A bridge under test: where it answers, its app, its database, its web process and its sink."""

    base: str
    app_id: str
    api_key: str
    database_url: str
    web: Proc
    sink_url: str

    def url(self, resource: str) -> str:
        return f"{self.base}/v1/apps/{self.app_id}/{resource}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}


@contextmanager
def production(known: int) -> Iterator[Bridge]:
    """The Procfile's processes on PostgreSQL and Redis, with `known` subscriptions registered; ANALYZE
    runs meanwhile, as autovacuum would."""
    with scratch_database("bridge_bench_stream", migrate=server_upgrade) as database_url:
        flush_redis()
        with serving(database_url, {"REDIS_URL": REDIS_URL, "SECRET_KEY": BENCH_SECRET_KEY, "WEB_CONCURRENCY": "2"}, known, worker=True) as bridge:
            analyze(database_url)
            with Analyzer(database_url):
                yield bridge


@contextmanager
def embedded(known: int) -> Iterator[Bridge]:
    """Embedded mode: a SQLite file and no Redis, so `bridge web` runs one process with a delivery thread."""
    with tempfile.TemporaryDirectory() as tmp:
        database_url = f"sqlite:///{tmp}/bridge.db"
        server_upgrade(database_url)
        with serving(database_url, {}, known, worker=False, start_web=start_embedded_web) as bridge:
            yield bridge


def start_embedded_web(env: dict[str, str]) -> tuple[Proc, str]:
    """`bridge web` in embedded mode; if it exits at start, with a warning, the gunicorn command it would
    run (1 process x 8 threads). At a828e48 it does exit: click types `--workers` (whose default is a
    callable) as a string, and `workers > 1` raises TypeError when the job runner is the thread."""
    try:
        return start_bridge_web(env)
    except ExitedEarly as exc:
        print(f"  WARNING: {exc}; embedded mode is measured with the gunicorn command it runs instead", flush=True)
        return start_bridge_web(env, gunicorn_workers=1)


@contextmanager
def serving(database_url: str, env: dict[str, str], known: int, worker: bool,
            start_web: Callable[[dict[str, str]], tuple[Proc, str]] = start_bridge_web) -> Iterator[Bridge]:
    """`bridge web` (`start_web`) and, with `worker`, one `bridge worker`, on `database_url` delivering
    to a new sink, for a new app with `known` subscriptions registered; every process stopped afterwards.
    With /metrics on, as a production deployment runs: every process counts into one directory (a server
    tree from before the metrics ignores both variables)."""
    app_id, api_key = server_app(database_url)
    with ExitStack() as running:
        sink, sink_url = start_sink()
        running.callback(sink.stop)
        metrics_dir = running.enter_context(tempfile.TemporaryDirectory(prefix="bench-metrics-"))
        env = {**env, "DATABASE_URL": database_url, "AMPLITUDE_BASE_URL": sink_url, "LOG_LEVEL": "WARNING",
               "METRICS_TOKEN": BENCH_METRICS_TOKEN, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        if worker:
            running.callback(start_bridge(["worker"], env).stop)  # booting while gunicorn starts
        web, base = start_web(env)
        running.callback(web.stop)
        bridge = Bridge(base, app_id, api_key, database_url, web, sink_url)
        register(bridge, known)
        yield bridge


def register(bridge: Bridge, known: int) -> None:
    """Record source_events' first `known` subscriptions, with their External User IDs, through the
    registry's bulk upsert API (so no event of theirs is delivered before the load)."""
    events = [item["event"] for item in source_events(known)]
    records = [{"subscription_id": e["subscription_id"], "type": e["subscription_device_type"],
                "external_id": e["external_id"]} for e in events]
    with httpx.Client(timeout=60) as http:
        for start in range(0, known, RECORDS_PER_REQUEST):
            chunk = records[start:start + RECORDS_PER_REQUEST]
            response = http.post(bridge.url("subscriptions"), content=orjson.dumps(chunk), headers=bridge.headers)
            if response.status_code != 200 or response.json()["added"] != len(chunk):
                raise RuntimeError(f"the registry answered {response.status_code}: {response.text[:200]}")


WARM_UP_SECONDS = 3  # the same load first, events distinct, figures not kept: a service runs warm


def warm_up(seconds: int) -> int:
    """Seconds of warm-up before a measured run of `seconds` (fresh database connections, prepared
    statements and caches cost the first second of a cold start up to a few hundred ms per request)."""
    return min(WARM_UP_SECONDS, seconds)


def closed_loop(setup: Callable[[int], AbstractContextManager[Bridge]], known: int, per_request: int,
                connections: int, seconds: int) -> dict[str, float]:
    """wrk's figures for `seconds` of `per_request`-event POSTs over `connections` (each sends its next
    request when the last is answered), after `warm_up` seconds of the same load, against a bridge from `setup`; `known` subscriptions are cycled
    over (0: every event's subscription is new). Also the web tier's CPU time per answered request, and
    a check that the database holds exactly the events answered 2xx."""
    wrk = ensure_wrk()
    threads = min(2, connections)

    def load(duration: float, prefix: str) -> subprocess.CompletedProcess:
        return subprocess.run([wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s", "--timeout", "10s",
                               "-s", str(WRK_SCRIPT), *(arg for name, value in bridge.headers.items()
                                                        for arg in ("-H", f"{name}: {value}")),
                               bridge.url("events"), "--", str(per_request), str(known), str(threads), ",".join(KINDS),
                               prefix], capture_output=True, text=True, timeout=duration + 120)

    with setup(known) as bridge:
        load(warm_up(seconds), "warm")
        stored = stored_events(bridge)
        cpu = bridge.web.tree_cpu_seconds()
        done = load(seconds, "wrk")
        cpu = bridge.web.tree_cpu_seconds() - cpu
        if done.returncode != 0:
            raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr[-2000:]}")
        out = orjson.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith("{")))
        stored = stored_events(bridge) - stored
        details = message_details(bridge)
    ok = out["requests"] - out["status"]
    unanswered = out["sent"] - out["requests"]  # written, not answered when wrk stopped: the server may have taken them
    consistent = ok * per_request <= stored <= (ok + unanswered) * per_request
    if not consistent:
        print(f"  WARNING: the database holds {stored:,} new events, but wrk got {ok:,} 2xx answers to "
              f"{per_request}-event requests ({unanswered} more requests unanswered when it stopped)", flush=True)
    socket_errors = out["connect"] + out["read"] + out["write"] + out["timeout"]
    if socket_errors:
        print(f"  WARNING: wrk saw {socket_errors} socket errors or timeouts: {done.stdout[-600:]}", flush=True)
    duration = out["duration_us"] / 1e6
    return {"rate": out["requests"] / duration, "events": ok * per_request / duration, "p50": out["p50_us"] / 1000,
            "p90": out["p90_us"] / 1000, "p99": out["p99_us"] / 1000, "non2xx": out["status"],
            "cpu_ms": cpu * 1000 / max(out["requests"], 1), "consistent": consistent, "cut_off": stored - ok * per_request,
            "details": details}


def message_details(bridge: Bridge) -> dict[str, int] | None:
    """The app's `message_details` stats (what the message catalog did, warm-up included); None from a
    server without the catalog (an older commit)."""
    answer = httpx.get(bridge.url("deliveries/stats"), headers=bridge.headers, timeout=30)
    answer.raise_for_status()
    return answer.json().get("message_details")


def stored_events(bridge: Bridge) -> int:
    """How many events the app has accepted (its event_receipts rows), once the count holds still for
    half a second: requests cut off at the end of a run may still be committing."""
    engine = sqlalchemy.create_engine(bridge.database_url)
    query = sqlalchemy.text("SELECT count(*) FROM event_receipts WHERE app_id = :app_id")
    try:
        previous = None
        while True:
            with engine.connect() as conn:
                count = conn.execute(query, {"app_id": bridge.app_id}).scalar_one()
            if count == previous:
                return count
            previous = count
            time.sleep(0.5)
    finally:
        engine.dispose()


def trickle(known: int, seconds: int) -> dict[str, float]:
    """TRICKLE_RATE single events/s for `seconds` (source_events, cycling over the `known` subscriptions)
    from bench.trickle_client; then, once the sink has every event answered 202, the Amplitude requests
    they took and the time from each 202 to the event's arrival at the sink. A bridge slower than the
    schedule shows as a send rate below TRICKLE_RATE and a long wait from due time to answer."""
    items = source_events(TRICKLE_RATE * seconds)
    with production(known) as bridge:
        client = open_loop(bridge, [orjson.dumps(item) for item in items], TRICKLE_RATE, seconds)
        acked = {item["event"]["id"]: at for item, at in zip(items, client["acked"]) if at is not None}
        arrivals = wait_for_arrivals(bridge.sink_url, acked)
        stats = sink_stats(bridge.sink_url)
    requests = sum(stats["requests"].values())
    latencies = sorted(arrivals[event_id] - at for event_id, at in acked.items() if event_id in arrivals)
    return {"amplitude_requests": requests, "per_request": stats["events_received"] / max(requests, 1),
            "p50": percentile(latencies, 50) * 1000, "p99": percentile(latencies, 99) * 1000,
            **_answers(client)}


def paced_arrays(seconds: int) -> dict[str, float]:
    """PACED_REQUESTS 100-event requests/s (10,000 events/s) for `seconds`, every subscription new to
    the registry, from bench.trickle_client, after `warm_up` seconds of the same: the answers' latency
    from each request's due time, at the target rate rather than at saturation (the closed loop's)."""
    warm = PACED_REQUESTS * 100 * warm_up(seconds)
    items = new_subscription_events(warm + PACED_REQUESTS * 100 * seconds)
    bodies = [orjson.dumps(items[start:start + 100]) for start in range(0, len(items), 100)]
    with production(0) as bridge:
        open_loop(bridge, bodies[:warm // 100], PACED_REQUESTS, warm_up(seconds))
        return _answers(open_loop(bridge, bodies[warm // 100:], PACED_REQUESTS, seconds))


def new_subscription_events(n: int) -> list[dict]:
    """source_events' items, each with a subscription and an External User ID the registry never saw."""
    items = source_events(n)
    for i, item in enumerate(items):
        item["event"].update(subscription_id=f"0b7c{i:08d}-0e3d-4a1b-9c2f-{i:012d}", external_id=f"new-user-{i:010d}")
    return items


def open_loop(bridge: Bridge, bodies: list[bytes], rate: int, seconds: int) -> dict:
    """bench.trickle_client's record of posting `bodies` at `rate` per second over TRICKLE_CONNECTIONS."""
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl") as file:
        file.write(b"\n".join(bodies))
        file.flush()
        done = subprocess.run([sys.executable, "-m", "bench.trickle_client", bridge.url("events"), bridge.api_key,
                               str(rate), str(TRICKLE_CONNECTIONS), file.name],
                              cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300)
    if done.returncode != 0:
        raise RuntimeError(f"the trickle client exited with {done.returncode}: {done.stderr[-2000:]}")
    return orjson.loads(done.stdout)


def _answers(client: dict) -> dict[str, float]:
    """The rate the client kept, its answers' latency from due time (ms), and the non-2xx answers."""
    return {"send_rate": (client["sent"] - 1) / (client["last_sent"] - client["first_sent"]),
            "answer_p50": percentile(client["latencies"], 50) * 1000, "answer_p99": percentile(client["latencies"], 99) * 1000,
            "non2xx": sum(n for status, n in client["statuses"].items() if not status.startswith("2"))}


def wait_for_arrivals(sink_url: str, event_ids: dict[str, float], timeout: float = 60) -> dict[str, float]:
    """insert_id → arrival time at the sink, once all of `event_ids` arrived; after `timeout`, a warning
    and the arrivals so far."""
    deadline = time.monotonic() + timeout
    while sink_stats(sink_url)["events_ingested"] < len(event_ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    arrivals = httpx.get(f"{sink_url}/_sink/arrivals", timeout=60).json()
    missing = sum(1 for event_id in event_ids if event_id not in arrivals)
    if missing:
        print(f"  WARNING: {missing:,} of {len(event_ids):,} events answered 202 had not reached the sink "
              f"after {timeout:.0f} s", flush=True)
    return arrivals


def run(seconds: int, known: int, repeat: int) -> list[tuple[str, str, str]]:
    """Rows (figure, value, note) for the report table."""
    single = [closed_loop(production, known, 1, 16, seconds) for _ in range(repeat)]
    local = [closed_loop(embedded, known, 1, 16, seconds) for _ in range(repeat)]
    new = [closed_loop(production, 0, 100, 4, seconds) for _ in range(repeat)]
    paced = [paced_arrays(seconds) for _ in range(repeat)]
    steady = [trickle(known, seconds) for _ in range(repeat)]
    return [
        ("single event, recurring subscriptions (requests/s)", f"{_median(single, 'rate'):,.0f}",
         f"wrk, 16 connections, {seconds} s; bridge web 2 processes x 8 threads + 1 worker; {known:,} known subscriptions"),
        ("single event p50 / p90 / p99 (ms)", _medians(single, "p50", "p90", "p99"), ""),
        ("single event non-2xx answers", f"{sum(r['non2xx'] for r in single):,}", _checked(single)),
        ("web CPU per single-event request (ms)", f"{_median(single, 'cpu_ms'):.1f}",
         "user + system, gunicorn master and workers"),
        ("single event: events completed from the message catalog / left unseen", _details(single),
         "1 event in 8 a late click of a described message, 1 in 8 of a message never described"),
        ("embedded, single event (requests/s)", f"{_median(local, 'rate'):,.0f}",
         "same load; SQLite, no Redis: 1 process x 8 threads with the delivery thread"),
        ("embedded, single event p50 / p99 (ms)", _medians(local, "p50", "p99"), ""),
        ("embedded, single event non-2xx answers", f"{sum(r['non2xx'] for r in local):,}", _checked(local)),
        ("100 new subscriptions per request (events/s)", f"{_median(new, 'events'):,.0f}",
         f"wrk, 4 connections, {seconds} s; 100-event arrays, every subscription new to the registry"),
        ("100 new subscriptions p50 / p99 per request (ms)", _medians(new, "p50", "p99"), ""),
        ("100 new subscriptions non-2xx answers", f"{sum(r['non2xx'] for r in new):,}", _checked(new)),
        ("100 new subscriptions at 10,000 events/s: p50 / p99 per request (ms)", _medians(paced, "answer_p50", "answer_p99"),
         f"open loop, {PACED_REQUESTS} requests/s over {TRICKLE_CONNECTIONS} connections, {seconds} s; "
         f"kept {_median(paced, 'send_rate') * 100:,.0f} events/s; {sum(r['non2xx'] for r in paced):,} non-2xx"),
        ("trickle at 1,000 events/s: Amplitude requests / events per request",
         f"{_median(steady, 'amplitude_requests'):,.0f} / {_median(steady, 'per_request'):,.1f}",
         f"{seconds} s of single events, open loop over {TRICKLE_CONNECTIONS} connections, 1 worker"),
        ("trickle: p50 / p99 from 202 to sink (ms)", _medians(steady, "p50", "p99"), ""),
        ("trickle: achieved send rate (events/s)", f"{_median(steady, 'send_rate'):,.0f}",
         f"due time to answer p50 / p99: {_medians(steady, 'answer_p50', 'answer_p99')} ms"),
        ("trickle non-2xx answers", f"{sum(r['non2xx'] for r in steady):,}", f"over {repeat} run(s)"),
    ]


def _median(runs: list[dict], key: str) -> float:
    return median([r[key] for r in runs])


def _medians(runs: list[dict], *keys: str) -> str:
    """Medians of latencies in ms, a decimal kept under 10 ms."""
    values = [_median(runs, key) for key in keys]
    return " / ".join(f"{v:.1f}" if v < 10 else f"{v:,.0f}" for v in values)


def _details(runs: list[dict]) -> str:
    """The message catalog's counts of the last run (warm-up included), or why there are none."""
    details = runs[-1]["details"]
    return f"{details['enriched']:,} / {details['unseen']:,}" if details else "no catalog (older server)"


def _checked(runs: list[dict]) -> str:
    """Whether the database held the events answered 2xx in every run (closed_loop's check)."""
    if not all(r["consistent"] for r in runs):
        return f"over {len(runs)} run(s); the database disagrees with the 2xx answers (see the warnings)"
    cut_off = sum(r["cut_off"] for r in runs)
    return (f"over {len(runs)} run(s); events stored = events answered 2xx"
            + (f" + {cut_off:,} of requests cut off at the end" if cut_off else ""))
