"""Run the benchmarks and print one table (also written to bench/results/latest.md).

Needs the local PostgreSQL and Redis (BRIDGE_BENCH_POSTGRES_URL / BRIDGE_BENCH_REDIS_URL to point
elsewhere), and wrk for the stream scenarios (installed with apt-get if missing). Each figure is the
median of --repeat runs; comparisons are ratios taken in the same run. BRIDGE_BENCH_SERVER_TREE=/path
runs the stream and fairness scenarios' server from another checkout, to measure an older commit side by side.
BRIDGE_BENCH_QUICK=1 is --quick: how the tests run a command the README shows, as written, on tiny sizes.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"
SCENARIOS = ("intake", "delivery", "latency", "stream", "slow", "cohorts", "import", "fairness", "idle", "platform",
             "metrics")
TARGETS = {
    "intake, durable (events/s)": "≥ 10,000",
    "intake p50 / p99 per 100-event request (ms)": "p99 < 100",
    "delivery, 1 worker (events/s)": "≥ 40,000 (best of 1 or 2 workers)",
    "delivery, 2 workers (events/s)": "≥ 40,000 (best of 1 or 2 workers)",
    "bridge (best) / SDK defaults": "≥ 5x",
    "bridge (best) / SDK 2,000 batches": "≥ 5x",
    "end to end at 2,000 events/s: p50 / p99 from 202 to sink (ms)": "p99 < 2,000",
    "dashboard: cohort page / app page (s)": "< 1",
    "single event, recurring subscriptions (requests/s)": "≥ 1,000 (aim 3,000)",
    "single event p50 / p90 / p99 (ms)": "p99 < 50",
    "web CPU per single-event request (ms)": "< 0.5 (aim)",
    "single event non-2xx answers": "0",
    "embedded, single event p50 / p99 (ms)": "p99 < 100",
    "embedded, single event non-2xx answers": "0",
    "100 new subscriptions per request (events/s)": "≥ 10,000",
    "100 new subscriptions p50 / p99 per request (ms)": "p99 < 100",
    "100 new subscriptions non-2xx answers": "0",
    "100 new subscriptions at 10,000 events/s: p50 / p99 per request (ms)": "p99 < 100",
    "trickle at 1,000 events/s: Amplitude requests / events per request": "≥ 200 events per request",
    "trickle: p50 / p99 from 202 to sink (ms)": "p99 < 2,000",
    "trickle: achieved send rate (events/s)": "≥ 990 (1,000 scheduled)",
    "trickle non-2xx answers": "0",
    "cohort webhook ack, 10,000-user batch: p50 / p99 (ms)": "p99 < 100",
    "report / aggregate": "≤ 2x",
    "CSV import (rows/s)": "≥ 50,000",
    "fairness, with A's cohort sync: app B p50 / p95 / p99 / max from 202 to sink (ms)": "p99 < 5,000",
    "fairness, cohort sync off: app B p50 / p95 / p99 / max from 202 to sink (ms)": "p99 < 5,000",
    "idle worker: from 202 to sink after a quiet spell (ms)": "< 2,000 each",
    "platform sync, first sync of 100,000 users (requests/s)": "≥ 800 sustained",
    "platform sync: fewest seconds between two requests for one user": "≥ 1",
    "platform sync: worker RSS at 10% / 100% of the users (MB)": "flat",
    "scrape of /metrics, big database (ms)": "< 1,000",
}


class Rows(list):
    """The table's rows, also printed as each scenario completes (a long run keeps what it measured)."""

    def __iadd__(self, new):
        for name, value, note in new:
            print(f"  {name}: {value}  {note}", flush=True)
        return super().__iadd__(new)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))) // 1024 // 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="bin/bench", description=__doc__)
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only these scenarios (repeatable)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: checks the suite still works")
    args = parser.parse_args()
    quick = args.quick or os.environ.get("BRIDGE_BENCH_QUICK") == "1"
    repeat = 1 if quick else args.repeat
    chosen = args.only or SCENARIOS
    started = time.time()
    rows = Rows()
    if "intake" in chosen:
        from bench import intake

        rows += intake.run(requests=20 if quick else 300, repeat=repeat)
    if "delivery" in chosen:
        from bench import delivery

        rows += delivery.run(10_000 if quick else 200_000, repeat)
    if "latency" in chosen:
        from bench import latency

        rows += latency.run(seconds=2 if quick else 20, repeat=repeat)
    if "stream" in chosen:
        from bench import stream

        rows += stream.run(seconds=2 if quick else 20, known=2000 if quick else 50_000, repeat=repeat)
    if "slow" in chosen:
        from bench import slow_clients

        rows += slow_clients.run(counts=(0, 5) if quick else (0, 50, 200), seconds=2 if quick else 10,
                                  repeat=repeat)
    if "cohorts" in chosen:
        from bench import cohorts

        rows += cohorts.run(users=10_000 if quick else 1_000_000, records=30_000 if quick else 3_000_000,
                            batches=3 if quick else 30, repeat=repeat)
    if "import" in chosen:
        from bench import importer

        rows += importer.run(8000 if quick else 1_000_000)
    if "fairness" in chosen:
        from bench import fairness

        rows += fairness.run(backlog=20_000 if quick else 500_000, cohort_users=20_000 if quick else 1_000_000,
                             rate=5, seconds=3 if quick else 60, repeat=repeat)
    if "idle" in chosen:
        from bench import idle

        rows += idle.run(gaps=(1, 7) if quick else idle.GAPS, repeat=repeat)
    if "platform" in chosen:
        from bench import platform_sync

        rows += platform_sync.run(users=3000 if quick else 100_000, repeat=repeat)
    if "metrics" in chosen:
        from bench import metrics

        rows += metrics.run(pending=20_000 if quick else 1_000_000, tags=20_000 if quick else 1_000_000, repeat=repeat)
    lines = [f"Machine: {machine()}; PostgreSQL 15 and Redis 7 on the same machine.",
             f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, median of {repeat} run(s), "
             f"{time.time() - started:.0f} s in all.", "",
             "| figure | value | target | notes |", "|---|---|---|---|"]
    lines += [f"| {name} | {value} | {TARGETS.get(name, '')} | {note} |" for name, value, note in rows]
    text = "\n".join(lines)
    print(text)
    if not quick and not args.only:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
