"""Delivery: events/s from the outbox to a local Amplitude-compatible server, with 1 and 2 worker
processes, next to the official amplitude-analytics SDK sending the same events to the same server."""
from __future__ import annotations

import sys
import time

import orjson

from bench.common import (BENCH_SECRET_KEY, REDIS_URL, Proc, analyze, flush_redis, median, scratch_database, sink_stats, start_sink,
                          wait_for_ingested)
from bridge.apps.service import create_app_record, vocabulary_of
from bridge.intake.service import ingest
from bridge.runtime import Runtime
from bridge.settings import Settings

KINDS = ["message.push.sent", "message.push.received", "message.push.clicked", "message.email.opened",
         "message.iam.clicked", "message.sms.sent"]


LATE_EVERY = 8  # in source_events, of every 8 events one is a late click of a message the stream described, one of a message it never did
MESSAGES = 20  # the messages source_events' events describe
OLD_MESSAGES = 1000  # the messages of source_events' late clicks that none of its events describe (older campaigns)


def source_events(n: int, offset: int = 0) -> list[dict]:
    """`n` realistic event-stream items over 50,000 users with two devices each. Of every LATE_EVERY
    events, LATE_EVERY - 2 carry their message's details (one of MESSAGES messages: they teach the
    message catalog), one is a late push click with only the id of such a message (completed from the
    catalog), and one a late push click with only the id of one of OLD_MESSAGES messages the stream never
    described (campaigns older than the catalog: left blank, counted unseen). bench/wrk_events.lua builds
    the same items."""
    out = []
    for i in range(offset, offset + n):
        user = i % 50_000
        kind = KINDS[i % len(KINDS)]
        message: dict[str, object] = {"id": f"3f1c2b9e-8d7a-4b6c-9e5f-{i % MESSAGES:012d}", "name": "Spring sale reminder",
                                      "title": {"en": "50% off today", "de": "Heute 50% Rabatt"},
                                      "contents": {"en": "Open the app to claim your discount before midnight"}}
        if i % LATE_EVERY == LATE_EVERY - 2:
            kind, message = "message.push.clicked", {"id": message["id"]}
        elif i % LATE_EVERY == LATE_EVERY - 1:
            kind, message = "message.push.clicked", {"id": f"9e0d5a71-2c4b-4f3e-8a6d-{i // LATE_EVERY % OLD_MESSAGES:012d}"}
        out.append({
            "event": {"id": f"bench-{i:09d}", "kind": kind, "timestamp": 1763856000 + i // 100,
                      "subscription_id": f"0b7c{user:08d}-5b6a-4978-8695-a4b3c2d1e0f{i % 2}",
                      "subscription_device_type": "AndroidPush" if i % 2 else "iOS", "external_id": f"user-{user:06d}"},
            "message": message,
            "data": {"target_id": "cta-upgrade"},
        })
    return out


def fill_outbox(database_url: str, n: int) -> str:
    """Accept `n` events through the intake service (no HTTP); returns the app id."""
    runtime = Runtime(Settings.from_env({"DATABASE_URL": database_url, "JOB_RUNNER": "manual"}))
    with runtime.session() as session:
        app, _ = create_app_record(session, name="bench", amplitude_api_key="bench-amplitude-key")
        session.commit()
        for start in range(0, n, 1000):
            ingest(session, app.id, vocabulary_of(app), source_events(min(1000, n - start), start))
            session.commit()
    runtime.close()
    return app.id


def bridge_rate(template: str, n: int, workers: int) -> tuple[float, float]:
    """Events/s from a full outbox (a copy of `template`) to the sink with `workers` processes; and
    their peak RSS (MB)."""
    with scratch_database("bridge_bench_delivery", template=template) as database_url:
        flush_redis()
        sink, sink_url = start_sink()
        env = {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "SECRET_KEY": BENCH_SECRET_KEY, "AMPLITUDE_BASE_URL": sink_url,
               "SWEEP_INTERVAL_SECONDS": "0.2", "LOG_LEVEL": "WARNING"}
        procs = [Proc([sys.executable, "-m", "bridge", "worker"], env) for _ in range(workers)]
        try:
            rate = wait_for_ingested(sink_url, n)
        finally:
            rss = max(p.stop() for p in procs)
            sink.stop()
        return rate, rss


def sdk_rate(n: int, flush_queue_size: int) -> float:
    """Events/s through the official SDK (in-memory queue, its own worker threads) to the same sink."""
    from amplitude import Amplitude, BaseEvent, Config

    events = [orjson.loads(orjson.dumps(_sdk_event(item))) for item in source_events(n)]
    sink, sink_url = start_sink()
    try:
        client = Amplitude("bench-amplitude-key", Config(server_url=f"{sink_url}/2/httpapi", flush_queue_size=flush_queue_size,
                                                         flush_interval_millis=1000, min_id_length=1))
        start = time.perf_counter()
        for e in events:
            client.track(BaseEvent(**e))
        client.shutdown()  # flushes everything still in memory
        elapsed = time.perf_counter() - start
        received = sink_stats(sink_url)["events_ingested"]
    finally:
        sink.stop()
    if received != n:
        raise RuntimeError(f"the SDK delivered {received} of {n} events")
    return n / elapsed


def _sdk_event(item: dict) -> dict:
    from bridge.mapping import to_amplitude
    from bridge.intake.schemas import ITEM_SCHEMA

    out = to_amplitude(ITEM_SCHEMA.load(item), item["event"]["external_id"])
    return {"event_type": out["event_type"], "user_id": out["user_id"], "device_id": out["device_id"],
            "time": out["time"], "insert_id": out["insert_id"], "event_properties": out["event_properties"],
            "platform": out.get("platform")}


def run(n: int, repeat: int) -> list[tuple[str, str, str]]:
    """Rows (figure, value, note) for the report table."""
    rows = []
    template = "bridge_bench_outbox"
    with scratch_database(template) as database_url:
        fill_outbox(database_url, n)
        analyze(database_url)
        one = [bridge_rate(template, n, 1) for _ in range(repeat)]
        two = [bridge_rate(template, n, 2) for _ in range(repeat)]
    sdk_default = [sdk_rate(n, 200) for _ in range(repeat)]
    sdk_2000 = [sdk_rate(n, 2000) for _ in range(repeat)]
    r1, r2 = median([r for r, _ in one]), median([r for r, _ in two])
    s200, s2000 = median(sdk_default), median(sdk_2000)
    rows.append(("delivery, 1 worker (events/s)", f"{r1:,.0f}", f"{n:,} events, 2,000-event batches, durable outbox"))
    rows.append(("delivery, 2 workers (events/s)", f"{r2:,.0f}", ""))
    rows.append(("official SDK, defaults (events/s)", f"{s200:,.0f}", "amplitude-analytics, 200-event batches, in memory"))
    rows.append(("official SDK, 2,000-event batches (events/s)", f"{s2000:,.0f}", ""))
    rows.append(("bridge (best) / SDK defaults", f"{max(r1, r2) / s200:.1f}x", ""))
    rows.append(("bridge (best) / SDK 2,000 batches", f"{max(r1, r2) / s2000:.1f}x", ""))
    rows.append(("worker peak RSS (MB)", f"{max(r for _, r in one + two):.0f}", ""))
    return rows
