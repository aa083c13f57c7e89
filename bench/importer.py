"""Import: rows/s for a OneSignal legacy-export CSV into PostgreSQL, and the importer's peak RSS at
two sizes (memory must stay flat as the file grows)."""
from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

from bench.common import Proc, new_app, scratch_database

HEADER = ["id", "identifier", "session_count", "language", "timezone", "game_version", "device_os", "device_type",
          "device_model", "ad_id", "tags", "last_active", "playtime", "amount_spent", "created_at",
          "invalid_identifier", "badge_count", "external_user_id", "notification_types"]
TYPES = ["0", "1", "5", "11", "14"]


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(HEADER)
        for i in range(rows):
            device_type = TYPES[i % len(TYPES)]
            identifier = {"11": f"user{i}@example.com", "14": f"+1555{i:07d}"}.get(device_type, f"{i:064x}")
            out.writerow([f"{i:08x}-5b6a-4978-8695-a4b3c2d1e0f9", identifier, i % 50, "en", "-18000", "3.2.1", "17.1",
                          device_type, "iPhone15,2", "", '{"plan": "pro"}', "2025-11-20 10:11:12", 3600, "0.0",
                          "2024-02-01 08:00:00", "t" if i % 50 == 0 else "f", 0,
                          "" if i % 10 == 0 else f"user-{i // 3:08d}", "-2" if i % 7 == 0 else "1"])


def measure(rows: int) -> tuple[float, float]:
    """(rows/s, peak RSS MB) of `bridge subscriptions import` for a `rows`-row file."""
    with tempfile.TemporaryDirectory() as tmp, scratch_database("bridge_bench_import") as database_url:
        path = Path(tmp) / "players.csv"
        write_csv(path, rows)
        app_id, _ = new_app(database_url)
        proc = Proc([sys.executable, "-m", "bridge", "subscriptions", "import", "--app", app_id, str(path), "--quiet"],
                    {"DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"}, read_stdout=True)
        out = proc.popen.stdout.read()
        rss = proc.wait_rss_mb()
        summary = json.loads(out)
        if summary["rejected"]:
            raise RuntimeError(f"{summary['rejected']} rows rejected: {summary['errors'][:3]}")
        return summary["rows_per_second"], rss


def run(rows: int) -> list[tuple[str, str, str]]:
    small_rate, small_rss = measure(rows // 4)
    rate, rss = measure(rows)
    return [
        ("CSV import (rows/s)", f"{rate:,.0f}", f"{rows:,}-row legacy export into PostgreSQL (first import)"),
        ("importer peak RSS (MB)", f"{small_rss:.0f} → {rss:.0f}", f"{rows // 4:,} rows → {rows:,} rows"),
    ]
