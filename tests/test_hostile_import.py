"""Import files built to hurt the importer (issue 10, item 4): decompression bombs that expand to one
endless line, to more rows or bytes than any export holds, or to a flood of bad rows for the errors
file; and damaged or foreign compressed files. Each stops, or is refused, with one line naming what
was passed, within bounded memory and time, on both databases. (Each test failed before the caps.)"""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from bridge.cli import main
from bridge.registry.models import Subscription

pytestmark = pytest.mark.hostile

HEADER = b"id,device_type,notification_types,invalid_identifier\n"
MiB = 1024 * 1024


def rows(count: int, start: int = 0, device_type: str = "1") -> bytes:
    """`count` legacy-export rows under HEADER: good ones with device type 1, rejected ones with 99."""
    return b"".join(f"s-{i},{device_type},1,f\n".encode() for i in range(start, start + count))


def gzipped(path: Path, *parts: bytes, repeat_last: int = 1) -> Path:
    """A gzip file of `parts`, the last one written `repeat_last` times (a bomb: it compresses to little)."""
    with gzip.open(path, "wb", compresslevel=9) as out:
        for part in parts[:-1]:
            out.write(part)
        for _ in range(repeat_last):
            out.write(parts[-1])
    return path


def run(cli, tenant, path: Path, *options: str, **env: str):
    """`bridge subscriptions import` of `path`, with `env` added to the settings."""
    return cli.invoke(main, ["subscriptions", "import", "--app", tenant.app_id, str(path), "--quiet", *options], env=env)


def stored(runtime, tenant) -> set[str]:
    with runtime.session() as session:
        return set(session.scalars(select(Subscription.subscription_id).where(Subscription.app_id == tenant.app_id)))


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(("env", "cap"), [({}, "131,072"), ({"IMPORT_MAX_LINE_BYTES": "65536"}, "65,536")])
def test_a_line_bomb_stops_at_the_line_cap_without_holding_the_line(cli, tenant, runtime, tmp_path, env, cap):
    bomb = gzipped(tmp_path / "bomb.csv.gz", HEADER, rows(2), b"s-x,1,", b"0" * MiB, repeat_last=64)  # 64 MiB line
    assert bomb.stat().st_size < MiB
    tracemalloc.start()
    try:
        result = run(cli, tenant, bomb, **env)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert one_line_error(result) == (
        f"Error: {bomb}: stopped at line 4: the row is longer than {cap} bytes (IMPORT_MAX_LINE_BYTES); "
        "the 2 rows before it were imported (added 2, updated 0, unchanged 0, rejected 0); "
        "importing the file again is safe")
    assert stored(runtime, tenant) == {"s-0", "s-1"}
    assert peak < 16 * MiB  # the 64 MiB line was never held (it was, twice over, before the cap)


@pytest.mark.parametrize("filler", [rows(10_000, start=1000), b"\n" * 2_000_000], ids=["rows", "blank lines"])
def test_a_file_past_the_row_cap_stops_there_and_a_rerun_with_a_higher_cap_completes_it(cli, tenant, runtime, tmp_path,
                                                                                       filler):
    path = gzipped(tmp_path / "many.csv.gz", HEADER + rows(1000) + filler)
    error = one_line_error(run(cli, tenant, path, "--chunk-size", "300", IMPORT_MAX_ROWS="1000"))
    assert error == (f"Error: {path}: stopped at line 1002: the file has more than 1,000 rows (IMPORT_MAX_ROWS); "
                     "the 1,000 rows before it were imported (added 1,000, updated 0, unchanged 0, rejected 0); "
                     "importing the file again is safe")
    assert stored(runtime, tenant) == {f"s-{i}" for i in range(1000)}  # every row before the cap, the last chunk too

    again = run(cli, tenant, path, IMPORT_MAX_ROWS="3000000")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert (summary["unchanged"], summary["added"]) == (1000, len(stored(runtime, tenant)) - 1000)


@pytest.mark.parametrize("packed", [True, False], ids=["gzip", "plain"])
def test_a_file_past_the_byte_cap_is_refused_before_any_row(cli, tenant, runtime, tmp_path, packed):
    content = HEADER + rows(20_000)
    path = tmp_path / "big.csv"
    if packed:
        path = gzipped(tmp_path / "big.csv.gz", content)
    else:
        path.write_bytes(content)
    error = one_line_error(run(cli, tenant, path, IMPORT_MAX_BYTES="65536"))
    assert error == (f"Error: {path}: stopped before reading a row: the file holds more than 65,536 bytes once "
                     "decompressed (IMPORT_MAX_BYTES); no row was imported")
    assert stored(runtime, tenant) == set()


def test_rejected_rows_past_the_errors_file_cap_are_counted_not_written(cli, tenant, runtime, tmp_path):
    bad_rows = gzipped(tmp_path / "bad.csv.gz", HEADER + rows(5) + rows(20_000, start=5, device_type="99"))
    errors_file = tmp_path / "rejected.csv"
    result = run(cli, tenant, bad_rows, "--errors-file", str(errors_file), IMPORT_MAX_ERRORS_FILE_ROWS="100")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["added"], summary["rejected"], summary["rejections_not_written"]) == (5, 20_000, 19_900)
    assert len(errors_file.read_text().splitlines()) == 1 + 100  # the header, then the first 100 rejected rows
    assert errors_file.stat().st_size < 20_000
    assert result.stderr.splitlines() == [
        f"Warning: {errors_file} holds the first 100 rejected rows (IMPORT_MAX_ERRORS_FILE_ROWS); "
        "19,900 more were counted, not written."]


def _zip(content: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("players.csv", content)
    return out.getvalue()


CONTENT = HEADER + rows(3000)
MEMBERS = gzip.compress(CONTENT[:20_000]) + gzip.compress(CONTENT[20_000:])  # two gzip members, as `cat a.gz b.gz`


@pytest.mark.parametrize(("content", "message"), [
    (MEMBERS[: len(MEMBERS) - 100], "the gzip data ends before its end marker (a truncated file?); nothing was imported"),
    (MEMBERS[:-8] + bytes([MEMBERS[-8] ^ 1]) + MEMBERS[-7:], "the gzip data is corrupt (CRC check failed"),
    (MEMBERS + b"trailing bytes", "the gzip data is corrupt (Not a gzipped file (b'tr')); nothing was imported"),
    (bz2.compress(CONTENT), "the file is bzip2, not CSV or gzipped CSV (.csv.gz); unpack it first; nothing was imported"),
    (lzma.compress(CONTENT), "the file is xz, not CSV or gzipped CSV (.csv.gz); unpack it first; nothing was imported"),
    (_zip(CONTENT), "the file is a zip archive, not CSV or gzipped CSV (.csv.gz); unpack it first"),
    (b"\x28\xb5\x2f\xfd" + CONTENT, "the file is zstd, not CSV"),  # zstd's magic number; no zstd in the stdlib
    (b"7z\xbc\xaf\x27\x1c" + CONTENT, "the file is a 7-Zip archive, not CSV"),
], ids=["truncated gzip", "gzip with a bad CRC", "gzip with trailing bytes", "bzip2", "xz", "zip", "zstd", "7-Zip"])
def test_a_damaged_or_foreign_compressed_file_is_refused_whole(cli, tenant, runtime, tmp_path, content, message):
    path = tmp_path / "players.csv.gz"
    path.write_bytes(MEMBERS)
    assert run(cli, tenant, path).exit_code == 0  # the whole file, both members, imports
    assert len(stored(runtime, tenant)) == 3000
    with runtime.session() as session:
        session.execute(delete(Subscription).where(Subscription.app_id == tenant.app_id))
        session.commit()

    path.write_bytes(content)
    error = one_line_error(run(cli, tenant, path))
    assert error.startswith(f"Error: {path}: {message}")
    assert stored(runtime, tenant) == set()  # not a row of a damaged file, not even those before the damage
