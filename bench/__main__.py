"""Run the benchmarks and print one table (also written to bench/results/latest.md)."""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from bench import delivery

RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))) // 1024 // 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="bin/bench", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="events per delivery run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: checks the suite still works")
    args = parser.parse_args()
    if args.quick:
        args.events, args.repeat = 4000, 1
    started = time.time()
    rows = delivery.run(args.events, args.repeat)
    lines = [f"Machine: {machine()}", f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
             f"median of {args.repeat} run(s)", "", "| figure | value | notes |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
