"""Reading a request, and writing the answers every feature's views share: the JSON body (one object, or an
array of them), query arguments, and CSV streamed as it is read.

Every refusal is an `ApiError` (`bridge.errors`): a 4xx in the one error shape, naming what was wrong.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Sequence

import orjson
from flask import Response, request

from bridge.errors import ApiError
from bridge.spreadsheet import safe_row

# Deepest nesting of arrays and objects a body may have. Real payloads need 4 or 5 levels; a deeper one
# could exhaust a serializer later (orjson refuses to write more than 254 levels).
MAX_JSON_DEPTH = 32
# Rows written to a streamed CSV answer between two chunks.
CSV_CHUNK_ROWS = 1000


def read_json_body() -> object:
    """The request's JSON body, or a 4xx: 415 if it is not declared JSON, 400 if it does not parse or
    nests arrays and objects more than MAX_JSON_DEPTH levels deep."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON with 'Content-Type: application/json'.")
    raw = request.get_data(cache=False)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        body = _repaired(raw, exc)
    if _nested_deeper_than(body, MAX_JSON_DEPTH):
        raise ApiError(400, "too_deeply_nested",
                       f"The body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep.", {"limit": MAX_JSON_DEPTH})
    return body


def read_items(limit: int) -> list[object]:
    """The JSON body as a list of items: one object, or an array of 1 to `limit` values (each checked by
    the caller). 400 `invalid_body` for anything else, 400 `empty_batch` for `[]`, 413 `too_many_items`
    past `limit`; and the refusals of `read_json_body`."""
    body = read_json_body()
    if isinstance(body, dict):
        return [body]
    if not isinstance(body, list):
        raise ApiError(400, "invalid_body", "The body must be a JSON object or an array of objects.")
    if not body:
        raise ApiError(400, "empty_batch", "The array holds no items.")
    if len(body) > limit:
        raise ApiError(413, "too_many_items", f"At most {limit} items per request; this one has {len(body)}.",
                       {"limit": limit, "received": len(body)})
    return body


_SURROGATE = re.compile("[\ud800-\udfff]")


def _repaired(raw: bytes, error: orjson.JSONDecodeError) -> object:
    """The body parsed despite broken text, or 400 invalid_json if it is not JSON at all.

    orjson refuses a whole body for one string holding a lone UTF-16 surrogate escape (`"\\ud83c"`, a
    half emoji cut by a client) or a byte that is not UTF-8. Such text is repaired instead: each broken
    character becomes U+FFFD, so one broken title does not refuse the other items of the request,
    nor make the platform resend it forever. Only bodies orjson refuses take this slower path.
    """
    try:
        body = json.loads(raw.decode("utf-8", errors="replace"), parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {error}.") from None
    if _nested_deeper_than(body, MAX_JSON_DEPTH):
        return body  # refused by the caller as too deeply nested; not walked here
    return _without_lone_surrogates(body)


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _without_lone_surrogates(value: object) -> object:
    """`value` with every lone surrogate in its strings (keys too) replaced by U+FFFD. json pairs the
    valid surrogate escapes into one character, so any surrogate left is a lone one."""
    if type(value) is str:
        return _SURROGATE.sub("\ufffd", value)
    if type(value) is list:
        return [_without_lone_surrogates(item) for item in value]
    if type(value) is dict:
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


def _nested_deeper_than(value: object, limit: int) -> bool:
    """True if `value` has more than `limit` levels of arrays and objects (a scalar has none).
    Walks level by level, without recursion, and stops at the first level past the limit."""
    level = [value] if type(value) in (dict, list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    below.append(child)
        level = below
    return False


def choice_arg(name: str, choices: Sequence[str]) -> str | None:
    """The query argument `name`, one of `choices`, or None when absent; 400 `invalid_parameter` otherwise."""
    value = request.args.get(name)
    if value is not None and value not in choices:
        raise ApiError(400, "invalid_parameter", f"{name} must be one of {', '.join(choices)}.", {name: value})
    return value


def int_arg(name: str, default: int, lowest: int, highest: int) -> int:
    """The query argument `name` as a whole number from `lowest` to `highest` (`default` when absent);
    400 `invalid_parameter` for anything else (a sign, a space, a decimal point included)."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not lowest <= int(raw) <= highest:
        raise ApiError(400, "invalid_parameter", f"{name} must be a whole number from {lowest} to {highest}.", {name: raw})
    return int(raw)


def wants_csv() -> bool:
    """Whether the client asks for CSV rather than JSON: `format=csv` (or `json`; 400 `invalid_parameter`
    for another value), or else an `Accept` header preferring text/csv."""
    if "format" in request.args:
        fmt = request.args["format"]
        if fmt not in ("json", "csv"):
            raise ApiError(400, "invalid_parameter", "format must be json or csv.", {"format": fmt})
        return fmt == "csv"
    return request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv"


def csv_response(header: Sequence[str], rows: Iterable[Sequence[object]], filename: str) -> Response:
    """A CSV attachment named `filename`, streamed in chunks of CSV_CHUNK_ROWS rows while `rows` is read
    (so the whole file is never in memory). Each cell is made safe to open in a spreadsheet
    (`bridge.spreadsheet`)."""

    def chunks():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        for n, row in enumerate(rows, 1):
            writer.writerow(safe_row(row))
            if n % CSV_CHUNK_ROWS == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return Response(chunks(), mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{filename}"'})
