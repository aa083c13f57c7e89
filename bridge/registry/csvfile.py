"""Reading an import file as CSV rows, within caps, whatever the file holds.

A file may be hostile or broken: a small `.csv.gz` can expand to one line of a gigabyte, or to billions
of rows. The caps (ImportLimits, read from the IMPORT_MAX_* settings) bound what one import reads:

- the decompressed size, checked before any row is read: a plain file's size, or a gzip file read
  through once (which also proves it whole: a truncated or corrupt gzip file imports nothing);
- the bytes of one row, read line by line with a bounded `readline`, so a longer line is never held
  in memory beyond the cap (csv's own field limit is raised to the same cap for the import);
- the number of rows.

Other compression formats are refused by their magic number, with a message naming the format.
"""
from __future__ import annotations

import csv
import gzip
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from bridge.settings import Settings

_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_FORMATS = {b"PK\x03\x04": "a zip archive", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz",
                  b"\x28\xb5\x2f\xfd": "zstd", b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive"}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImportLimits:
    """The caps of one import, in bytes and rows (bridge/settings.py reads them: IMPORT_MAX_*)."""

    max_bytes: int  # decompressed bytes in the file
    max_line_bytes: int  # bytes of one row: its line, or its lines when a quoted field spans several
    max_rows: int  # rows after the header, blank lines included
    max_errors_file_rows: int  # rejected rows written to the errors file; more are counted, not written

    @classmethod
    def of(cls, settings: Settings) -> ImportLimits:
        return cls(settings.import_max_bytes, settings.import_max_line_bytes, settings.import_max_rows,
                   settings.import_max_errors_file_rows)


class UnreadableFile(Exception):
    """The file cannot be imported: not UTF-8 CSV (or gzipped CSV), empty, or neither known header."""


class CapReached(Exception):
    """Reading stopped at a cap. `line` is the line of the file where it stopped; the message names the
    cap, its setting and its value."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


class CsvFile:
    """An opened import file: its rows (`rows()`) and how far into the raw file they are (`position`)."""

    def __init__(self, path: Path, raw: BinaryIO, binary: BinaryIO, limits: ImportLimits):
        self._path, self._raw, self._binary, self._limits = path, raw, binary, limits
        self._row_bytes = 0  # bytes of the row being read so far
        self._row_line = 1  # the line where the row being read starts

    @property
    def position(self) -> int:
        """Bytes of the file (compressed, for gzip) read so far: the progress through it."""
        return self._raw.tell()

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """(line number where the row starts, row) for each non-blank row, the header first. Raises
        CapReached past IMPORT_MAX_LINE_BYTES or IMPORT_MAX_ROWS, UnreadableFile on a read error."""
        reader = csv.reader(self._lines())
        line, rows, max_rows = 0, -1, self._limits.max_rows  # the header is not counted
        try:
            for row in reader:
                start, line = line + 1, reader.line_num
                rows += 1
                if rows > max_rows:
                    raise CapReached(start, f"the file has more than {max_rows:,} rows (IMPORT_MAX_ROWS)")
                self._row_bytes, self._row_line = 0, line + 1
                if row:
                    yield start, row
        except UnicodeDecodeError as exc:
            raise UnreadableFile(f"{self._path}: line {reader.line_num + 1} is not UTF-8 text ({exc.reason} at byte "
                                 f"{exc.start + 1}); the rows before it were imported") from None
        except (csv.Error, OSError, EOFError, zlib.error) as exc:
            raise UnreadableFile(f"{self._path}: unreadable after line {line} ({exc}); "
                                 "the rows before it were imported") from None

    def _lines(self) -> Iterator[str]:
        """The file's lines, decoded one by one so that a decoding error names its line. No read takes
        more than what is left of the row's IMPORT_MAX_LINE_BYTES (plus one byte, to see it passed)."""
        readline, cap = self._binary.readline, self._limits.max_line_bytes
        encoding = "utf-8-sig"
        while True:
            allowed = cap - self._row_bytes
            line = readline(allowed + 1)
            if not line:
                return
            if len(line) > allowed:
                raise CapReached(self._row_line, f"the row is longer than {cap:,} bytes (IMPORT_MAX_LINE_BYTES)")
            self._row_bytes += len(line)
            yield line.decode(encoding)
            encoding = "utf-8"


@contextmanager
def open_csv(path: Path, limits: ImportLimits) -> Iterator[CsvFile]:
    """The file at `path`, plain or gzipped, ready to read as CSV within `limits`. Raises UnreadableFile
    when it cannot be opened, is another compression format or is corrupt gzip, and CapReached (line 0:
    nothing read yet) when it is larger than IMPORT_MAX_BYTES."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UnreadableFile(f"{path}: {exc.strerror}") from None
    with raw:
        start = raw.read(8)
        raw.seek(0)
        for magic, name in _OTHER_FORMATS.items():
            if start.startswith(magic):
                raise UnreadableFile(f"{path}: the file is {name}, not CSV or gzipped CSV (.csv.gz); "
                                     "unpack it first; nothing was imported")
        if not start.startswith(_GZIP_MAGIC):
            _check_size(os.fstat(raw.fileno()).st_size, limits)
            yield CsvFile(path, raw, raw, limits)
            return
        _check_gzip(path, raw, limits)
        raw.seek(0)
        with gzip.GzipFile(fileobj=raw) as binary:
            yield CsvFile(path, raw, binary, limits)


def _check_gzip(path: Path, raw: BinaryIO, limits: ImportLimits) -> None:
    """Read the gzip file through, stopping past IMPORT_MAX_BYTES: its CRC and length are checked at the
    end of each member, so a damaged file is refused before any row is imported."""
    size = 0
    try:
        with gzip.GzipFile(fileobj=raw) as unpacked:
            while chunk := unpacked.read(_CHUNK):
                size += len(chunk)
                _check_size(size, limits)
    except EOFError:
        raise UnreadableFile(f"{path}: the gzip data ends before its end marker (a truncated file?); "
                             "nothing was imported") from None
    except (OSError, zlib.error) as exc:
        raise UnreadableFile(f"{path}: the gzip data is corrupt ({exc}); nothing was imported") from None


def _check_size(size: int, limits: ImportLimits) -> None:
    if size > limits.max_bytes:
        raise CapReached(0, f"the file holds more than {limits.max_bytes:,} bytes once decompressed "
                            "(IMPORT_MAX_BYTES)")


@contextmanager
def field_size_limit(limit: int) -> Iterator[None]:
    """csv's field size limit (process-wide) set to `limit` for the block, then restored: a field is
    never longer than its row, which IMPORT_MAX_LINE_BYTES already bounds."""
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)
