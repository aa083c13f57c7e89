"""Importing channel records from OneSignal CSV files, plain or gzipped, in either of its two formats:
the legacy subscriptions export (numeric device_type, one row per subscription) and the newer import
format (one e-mail address or phone number per row, `subscribed` yes/no). The header tells them apart.

The legacy export's default columns hold `timezone`, a UTC offset in seconds ("-18000"); its extra
fields (notification_types, external_user_id, country, timezone_id, ...) are there only when asked
for. A record's timezone is timezone_id (an IANA name, "Europe/Berlin") when the row has one, else the
offset as given.

The file is streamed and merged into the registry chunk by chunk, so memory stays flat whatever the
file's size, and importing the same file again changes nothing. The caller owns the transactions: it
passes `checkpoint=session.commit` (as `bridge subscriptions import` does) for one transaction per
chunk. What one import reads is capped (bridge.registry.csvfile): past a cap it stops, the rows before
it merged (and, committed by chunk, staying imported).
"""
from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple, TextIO

from sqlalchemy.orm import Session

from bridge.mapping import non_placeholder_id
from bridge.registry.csvfile import CapReached, CsvFile, ImportLimits, UnreadableFile, field_size_limit, open_csv
from bridge.registry.schemas import (
    CHANNEL_OF_TYPE,
    LEGACY_DEVICE_TYPES,
    MAX_LENGTH,
    clean_id,
    clean_identifier,
    clean_path_id,
    clean_text,
    parse_int32,
)
from bridge.registry.service import UNKNOWN, UpsertCounts, upsert_records
from bridge.settings import Settings
from bridge.spreadsheet import safe_row
from bridge.times import parse_time

REPORTED_ERRORS = 20  # rejected rows listed in the summary; an errors file gets more (ImportLimits)
_TRUE, _FALSE = frozenset({"t", "true", "yes", "y", "1"}), frozenset({"f", "false", "no", "n", "0"})
_MEMO_SIZE = 4096
_TYPE_OF_CHANNEL = {"email": "Email", "sms": "SMS"}
_KNOWN_DEVICE_TYPES = ", ".join(str(n) for n in LEGACY_DEVICE_TYPES)  # in a rejected row's reason


class ImportStopped(UnreadableFile):
    """A cap was reached (ImportLimits): the import stopped there. The message names the cap, its setting
    and its value, and says what the rows before it did: they are imported, and importing the file
    again is safe."""


@dataclass
class ImportSummary(UpsertCounts):
    """What an import did: each data row counts once in added, updated, unchanged or rejected.

    `warnings` name each column the file lacks whose absence leaves records with an unknown
    subscription state: [{"column", "rows": how many of the file's records are left unknown,
    "message"}]. A column whose absence changes no record's state is not warned about.
    """

    rejected: int = 0
    rejections_not_written: int = 0  # rejected rows past the errors file's cap (IMPORT_MAX_ERRORS_FILE_ROWS)
    rows: int = 0
    seconds: float = 0.0
    errors: list[dict] = field(default_factory=list)  # the first REPORTED_ERRORS [{"line", "reason"}]
    warnings: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            **super().as_dict(), "rejected": self.rejected,
            "rejections_not_written": self.rejections_not_written, "rows": self.rows, "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows / self.seconds) if self.seconds else None,
            "errors": self.errors, "warnings": self.warnings,
        }


def import_subscriptions(
    session: Session,
    app_id: str,
    path: Path,
    *,
    chunk_size: int = 5000,
    errors_to: TextIO | None = None,
    on_progress: Callable[[int], None] | None = None,
    limits: ImportLimits | None = None,
    checkpoint: Callable[[], None] = lambda: None,
) -> ImportSummary:
    """Merge the records of the CSV file at `path` into `app_id`'s registry and say what happened.

    Rows that cannot be imported are rejected with their line number and the reasons, and never stop
    the others. A record whose subscription state the file does not give gets an unknown state (not
    unsubscribed), and when a whole column is missing for it the summary warns (ImportSummary.warnings).
    `errors_to`, if given, receives rejected rows as CSV (line, reason, then the row): the first
    `limits.max_errors_file_rows` of them; the others are counted in `rejections_not_written`.
    `on_progress` is called as chunks are merged, with the bytes of the file read so far.
    `limits` defaults to the settings' defaults. Raises UnreadableFile when the file cannot be read,
    and ImportStopped when it passes a cap; the rows before either are merged.

    Flushes; `checkpoint()` is called after each chunk is merged, on the thread that merged it (the one
    using `session`): the caller passes `session.commit` for one transaction per chunk.
    """
    started = time.perf_counter()
    limits = limits or ImportLimits.of(Settings.from_env({}))
    summary = ImportSummary()
    try:
        with (field_size_limit(limits.max_line_bytes), open_csv(path, limits) as source,
              _ChunkWriter(session, app_id, summary, on_progress, checkpoint) as writer):
            missing = _merge_rows(path, source, writer, summary, errors_to, chunk_size, limits.max_errors_file_rows)
    except CapReached as exc:
        where = f"at line {exc.line}" if exc.line else "before reading a row"
        raise ImportStopped(f"{path}: stopped {where}: {exc}; {_imported_before(summary)}") from None
    if summary.unknown_state:
        summary.warnings = [_missing_column_warning(column, summary.unknown_state) for column in missing]
    summary.seconds = time.perf_counter() - started
    return summary


def _merge_rows(path: Path, source: CsvFile, writer: _ChunkWriter, summary: ImportSummary,
                errors_to: TextIO | None, chunk_size: int, max_errors_file_rows: int) -> tuple[str, ...]:
    """Parse `source`'s rows, send the records to `writer` by chunks and count them in `summary`; returns
    the state column the file lacks (see _row_parser). On a cap or an unreadable part, the rows read
    before it are merged, then the exception goes on."""
    chunk: list[dict] = []
    try:
        rows = source.rows()
        header = _header(path, rows)
        parse, missing = _row_parser(path, header)
        errors = csv.writer(errors_to) if errors_to is not None else None
        if errors:
            errors.writerow(safe_row(["line", "reason", *header]))
        for line, row in rows:
            summary.rows += 1
            try:
                chunk.append(parse(row))
            except RowRejected as exc:
                summary.rejected += 1
                if len(summary.errors) < REPORTED_ERRORS:
                    summary.errors.append({"line": line, "reason": str(exc)})
                if errors and summary.rejected <= max_errors_file_rows:
                    errors.writerow(safe_row([line, str(exc), *row]))
                elif errors:
                    summary.rejections_not_written += 1
            if len(chunk) >= chunk_size:
                writer.submit(chunk, source.position)
                chunk = []
    except (CapReached, UnreadableFile):
        writer.submit(chunk, source.position)
        writer.settle()
        raise
    writer.submit(chunk, source.position)
    return missing


def _imported_before(summary: ImportSummary) -> str:
    if not summary.rows:
        return "no row was imported"
    rows = "1 row before it was" if summary.rows == 1 else f"{summary.rows:,} rows before it were"
    return (f"the {rows} imported (added {summary.added:,}, updated {summary.updated:,}, "
            f"unchanged {summary.unchanged:,}, rejected {summary.rejected:,}); importing the file again is safe")


def _missing_column_warning(column: str, rows: int) -> dict[str, object]:
    records = f"{rows:,} record{'' if rows == 1 else 's'}"
    return {"column": column, "rows": rows,
            "message": f"The file has no {column} column: the subscription state of {records} is unknown "
                       f"({_WHY_UNKNOWN[column]})."}


class _ChunkWriter:
    """Merges chunks into the registry on a thread of its own, `checkpoint()` after each, so the database
    works on one chunk while the next is parsed. At most one chunk is in flight."""

    def __init__(self, session: Session, app_id: str, summary: ImportSummary, on_progress: Callable[[int], None] | None,
                 checkpoint: Callable[[], None]):
        self._session, self._app_id, self._summary, self._on_progress = session, app_id, summary, on_progress
        self._checkpoint = checkpoint
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-import")
        self._in_flight: tuple[Future[UpsertCounts], int] | None = None

    def submit(self, records: list[dict], position: int) -> None:
        """Wait for the chunk in flight, then send `records` (read up to byte `position` of the file)."""
        self.settle()
        if records:
            self._in_flight = (self._executor.submit(self._merge, records), position)

    def _merge(self, records: list[dict]) -> UpsertCounts:
        counts = upsert_records(self._session, self._app_id, records)
        self._checkpoint()
        return counts

    def settle(self) -> None:
        """Wait for the chunk in flight, if any, and add its counts to the summary."""
        if self._in_flight is None:
            return
        future, position = self._in_flight
        self._in_flight = None
        self._summary += future.result()
        if self._on_progress:
            self._on_progress(position)

    def __enter__(self) -> _ChunkWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is None:
                self.settle()
        finally:
            self._executor.shutdown(wait=True)


class RowRejected(ValueError):
    """A row that cannot be imported; the message gives the reasons, field by field."""


def _flag(value: str) -> bool | None:
    """t/f, true/false, yes/no, y/n, 1/0, in any case; None when blank."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    if not lowered:
        return None
    raise ValueError(f"{value!r} is not yes/no (or true/false)")


def _memo(convert: Callable[[str], object]) -> Callable[[str], object]:
    """`convert`, remembering its results for the first few thousand distinct cells: most columns
    (device_type, language, device_model, ...) repeat a handful of values a million times."""

    class Memo(dict):
        def __missing__(self, raw: str) -> object:
            value = convert(raw)
            if len(self) < _MEMO_SIZE:
                self[raw] = value
            return value

    return Memo().__getitem__


def _optional(convert: Callable[[str], object]) -> Callable[[str], object]:
    return lambda raw: convert(raw) if raw.strip() else None


def _required(convert: Callable[[str], object]) -> Callable[[str], object]:
    def checked(raw: str) -> object:
        value = convert(raw)
        if value is None:
            raise ValueError("required")
        return value

    return checked


def _text(column: str) -> Callable[[str], str | None]:
    return partial(clean_text, limit=MAX_LENGTH[column])


def _id(column: str) -> Callable[[str], str | None]:
    return partial(clean_id, limit=MAX_LENGTH[column])


def _subscription_id(value: str) -> str | None:
    return clean_path_id(value, MAX_LENGTH["subscription_id"])


def _external_id(value: str) -> str | None:
    return non_placeholder_id(clean_id(value, MAX_LENGTH["external_id"]))


def _legacy_type(value: str) -> str:
    try:
        return LEGACY_DEVICE_TYPES[int(value) if value.isascii() else -1]
    except (ValueError, KeyError):
        raise ValueError(f"{value!r} is not a known device_type ({_KNOWN_DEVICE_TYPES})" if value.strip()
                         else "required") from None


def _identifier(column: str, channel: str, value: str) -> str | None:
    try:
        return clean_identifier(channel, value)
    except ValueError as exc:
        raise ValueError(f"{column}: {exc}") from None


def _legacy_finish(record: dict) -> dict:
    zone = record.pop("timezone_id")
    if zone:  # the IANA name (an extra field of the export) says more than the default column's UTC offset
        record["timezone"] = zone
    channel = record["channel"] = CHANNEL_OF_TYPE.get(record["type"])
    if channel in ("email", "sms") and record["identifier"]:
        record["identifier"] = _identifier("identifier", channel, record["identifier"])
    return record


def _import_finish(record: dict) -> dict:
    email, phone = record.pop("email"), record.pop("phone_number")
    if email and phone:
        raise ValueError("email, phone_number: give one of them per row, not both")
    if not (email or phone):
        raise ValueError("email, phone_number: one of them is required")
    channel, column = ("email", "email") if email else ("sms", "phone_number")
    record.update(channel=channel, type=_TYPE_OF_CHANNEL[channel], identifier=_identifier(column, channel, email or phone))
    return record


def _validity_unknown(finish: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """`finish`, for a legacy file without invalid_identifier: a positive notification_types then
    cannot tell a subscribed record from one whose identifier is invalid, so its state is unknown."""

    def finished(record: dict) -> dict:
        record = finish(record)
        if (record["notification_types"] or 0) > 0:
            record["subscribed"] = UNKNOWN
        return record

    return finished


class _Format(NamedTuple):
    name: str
    columns: tuple[tuple[str, str, Callable[[str], object]], ...]  # (CSV column, record field, converter)
    required: frozenset[str]  # the header must hold these
    finish: Callable[[dict], dict]  # rules across columns; a ValueError's message names the column
    # The columns the subscription state comes from, the main one first. When several are missing, the
    # first leaves the states unknown on its own: the summary warns about that one.
    state_columns: tuple[str, ...]


_time, _int32 = _optional(parse_time), _optional(parse_int32)
_identifier_text = _id("identifier")
FORMATS = (
    _Format(
        "legacy export",
        (
            ("id", "subscription_id", _required(_subscription_id)),
            ("identifier", "identifier", _identifier_text),
            ("device_type", "type", _memo(_legacy_type)),
            ("notification_types", "notification_types", _memo(_int32)),
            ("invalid_identifier", "invalid_identifier", _memo(_flag)),
            ("external_user_id", "external_id", _external_id),
            ("language", "language", _memo(_text("language"))),
            ("timezone", "timezone", _memo(_text("timezone"))),
            ("timezone_id", "timezone_id", _memo(_text("timezone"))),
            ("country", "country", _memo(_text("country"))),
            ("device_os", "device_os", _memo(_text("device_os"))),
            ("device_model", "device_model", _memo(_text("device_model"))),
            ("last_active", "last_active_at", _time),
            ("created_at", "source_created_at", _time),
        ),
        frozenset({"id", "device_type"}),
        _legacy_finish,
        ("notification_types", "invalid_identifier"),
    ),
    _Format(
        "import format",
        (
            ("external_id", "external_id", _external_id),
            ("email", "email", _identifier_text),
            ("phone_number", "phone_number", _identifier_text),
            ("subscription_id", "subscription_id", _subscription_id),
            ("subscribed", "subscribed", _memo(_flag)),
            ("timezone_id", "timezone", _memo(_text("timezone"))),
            ("country", "country", _memo(_text("country"))),
            ("language", "language", _memo(_text("language"))),
        ),
        frozenset({"email", "phone_number"}),
        _import_finish,
        ("subscribed",),
    ),
)
_WHY_UNKNOWN = {
    "notification_types": "not unsubscribed",
    "invalid_identifier": "a positive notification_types means subscribed only on a valid identifier",
    "subscribed": "not unsubscribed",
}


def _row_parser(path: Path, header: list[str]) -> tuple[Callable[[list[str]], dict], tuple[str, ...]]:
    """The parser of the format `header` belongs to: it turns a row into a record, or raises
    RowRejected with every reason the row cannot be imported. With it, the state column to warn about
    if the header lacks one (see _Format.state_columns)."""
    names = [name.strip().lower() for name in header]
    for fmt in FORMATS:
        if fmt.required <= set(names):
            missing = tuple(column for column in fmt.state_columns if column not in names)
            if missing == ("invalid_identifier",):
                fmt = fmt._replace(finish=_validity_unknown(fmt.finish))
            return partial(_parse_row, fmt, len(names),
                           # A column the file lacks reads the empty string appended to every row.
                           itemgetter(*(names.index(c) if c in names else len(names) for c, _, _ in fmt.columns)),
                           [(name, convert) for _, name, convert in fmt.columns]), missing[:1]
    expected = "; or ".join(f"the {f.name} ({', '.join(c for c, _, _ in f.columns)}) with at least "
                            f"{' and '.join(sorted(f.required))}" for f in FORMATS)
    raise UnreadableFile(f"{path}: unknown header ({', '.join(header)}); expected {expected}")


def _parse_row(fmt: _Format, width: int, pick: Callable, converters: list, row: list[str]) -> dict:
    if len(row) != width:
        raise RowRejected(f"expected {width} fields as in the header, found {len(row)}")
    row.append("")
    cells = pick(row)
    row.pop()
    try:
        return fmt.finish({name: convert(raw) for (name, convert), raw in zip(converters, cells)})
    except ValueError:
        raise RowRejected(_reasons(fmt, cells)) from None


def _reasons(fmt: _Format, cells: tuple[str, ...]) -> str:
    """Every reason a row's cells cannot be imported, as "column: reason; ..."."""
    problems, record = [], {}
    for (column, name, convert), raw in zip(fmt.columns, cells, strict=True):
        try:
            record[name] = convert(raw)
        except ValueError as exc:
            problems.append(f"{column}: {exc}")
            record[name] = None
    try:
        fmt.finish(record)
    except ValueError as exc:
        problems.append(str(exc))
    return "; ".join(problems)


def _header(path: Path, rows: Iterator[tuple[int, list[str]]]) -> list[str]:
    for _, row in rows:
        return row
    raise UnreadableFile(f"{path}: the file is empty")
