"""`bridge demo`: the whole outbound pipeline on the embedded default, shown end to end.

A throwaway SQLite database is migrated, an app is created, the realistic event stream in
fixtures/ is posted (twice, to show idempotency) to the real HTTP API, the in-process delivery
thread sends it to a local Amplitude-compatible server, and what that server received is printed.
"""
from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import click
import httpx
import orjson
from werkzeug.serving import make_server

from bridge.amplitude.sink import AmplitudeSink
from bridge.apps.models import App
from bridge.apps.service import create_app_record
from bridge.delivery.stats import delivery_stats
from bridge.migrate import upgrade
from bridge.runtime import Runtime, install
from bridge.settings import Settings
from bridge.shipped import shipped_dir
from bridge.web import create_app

DEFAULT_EVENTS = shipped_dir("fixtures") / "onesignal-events.json"


def run_demo(events_file: Path, timeout: float = 60.0) -> dict[str, object]:
    """Run the demo; returns what the sink received and the bridge's own delivery stats."""
    items = orjson.loads(events_file.read_bytes())
    with tempfile.TemporaryDirectory(prefix="bridge-demo-") as tmp, AmplitudeSink(api_keys={"demo-amplitude-key"}) as sink:
        database_url = f"sqlite:///{Path(tmp) / 'bridge.db'}"
        upgrade(database_url)
        settings = Settings.from_env({"DATABASE_URL": database_url, "AMPLITUDE_BASE_URL": sink.url,
                                      "SWEEP_INTERVAL_SECONDS": "0.2", "LOG_LEVEL": "WARNING"})
        runtime = install(Runtime(settings))
        with runtime.session() as session:
            app, tokens = create_app_record(session, name="Demo", amplitude_api_key="demo-amplitude-key")
            session.commit()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log lines in the demo's output
        server = make_server("127.0.0.1", 0, create_app(runtime=runtime), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_port}/v1/apps/{app.id}/events"
            headers = {"Authorization": f"Bearer {tokens.api_key}"}
            first = httpx.post(url, json=items, headers=headers, timeout=30).json()
            again = httpx.post(url, json=items, headers=headers, timeout=30).json()
            deadline = time.monotonic() + timeout
            while True:
                with runtime.session() as session:
                    stats = delivery_stats(session, session.get(App, app.id))
                if stats["pending"] == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            server.shutdown()
            runtime.close()
        return {"first_post": first, "second_post": again, "stats": stats, "sink": sink.stats(), "received": sink.events()}


def print_demo(events_file: Path) -> None:
    """Run the demo and print what the local Amplitude-compatible server received, next to the bridge's stats."""
    out = run_demo(events_file)
    first, again, stats, sink = out["first_post"], out["second_post"], out["stats"], out["sink"]
    click.echo(f"Posted {sum(len(v) if isinstance(v, list) else v for v in first.values())} events to the bridge: "
               f"{first['accepted']} accepted, {first['skipped']} skipped (no External User ID), "
               f"{first['ignored']} ignored (kinds not sent to Amplitude), {len(first['rejected'])} rejected.")
    click.echo(f"Posted them again: {again['duplicates']} duplicates, {again['accepted']} accepted (idempotent).")
    click.echo("")
    click.echo("Delivered to the local Amplitude-compatible server (HTTP V2 contract):")
    by_type = Counter(e["event_type"] for e in out["received"])
    width = max(len(t) for t in by_type) if by_type else 10
    click.echo(f"  {'event_type'.ljust(width)}  events  example properties")
    for event_type, count in sorted(by_type.items()):
        example = next(e for e in out["received"] if e["event_type"] == event_type)["event_properties"]
        click.echo(f"  {event_type.ljust(width)}  {count:6d}  {orjson.dumps(example).decode()[:90]}")
    click.echo("")
    click.echo(f"Bridge stats: {stats['delivered']} delivered, {stats['pending']} pending, {stats['dead']['total']} dead, "
               f"skipped {stats['skipped']['reasons']}")
    click.echo(f"Sink: {sink['events_ingested']} events ingested, {sink['unique_insert_ids']} unique insert_ids, "
               f"{sink['duplicates']} duplicates ignored, requests by status {sink['requests']}")
