"""Per-item validation every feature shares: a request of many items refuses the invalid ones by
position, with a message per field, and takes the rest; an item written with dotted keys is read as the
nested object it spells.
"""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields

from bridge.http import MAX_JSON_DEPTH


def flatten_errors(errors: dict, prefix: str = "") -> dict[str, str]:
    """marshmallow's nested error dict → {"event.kind": "message", ...}, one message per field."""
    flat: dict[str, str] = {}
    for key, value in errors.items():
        path = f"{prefix}.{key}" if prefix and key != "_schema" else (prefix or str(key))
        if isinstance(value, dict):
            flat.update(flatten_errors(value, path))
        elif isinstance(value, list):
            flat[path] = " ".join(str(v) for v in value)
        else:
            flat[path] = str(value)
    return flat


def unflattened(item: dict) -> dict:
    """`item` with its dotted keys read as nested objects: `{"event.id": 1, "event.data.page_id": "p"}` is
    `{"event": {"id": 1, "data": {"page_id": "p"}}}`, as a form of key/value pairs writes an object. `item`
    itself, unchanged, when no top-level key holds a dot (the one check every item pays).

    ValidationError, a message per key, for a key with an empty part (`event..id`, `.id`), one of more
    than MAX_JSON_DEPTH parts, or a field given both whole and by dotted keys (`event` with `event.id`).
    """
    for key in item:
        if "." in key:
            return _nested(item)
    return item


def _nested(item: dict) -> dict:
    errors: dict[str, list[str]] = {}
    paths: dict[str, tuple[str, ...]] = {}
    for key in item:
        parts = tuple(key.split("."))
        if "" in parts:
            errors[key] = ["Has an empty part: each dot of a key must stand between two names."]
        elif len(parts) > MAX_JSON_DEPTH:
            errors[key] = [f"Has more than {MAX_JSON_DEPTH} dot-separated parts."]
        else:
            paths[key] = parts
    inside: dict[tuple[str, ...], str] = {}  # each object a dotted key goes into → the first such key
    for key, parts in paths.items():
        for end in range(1, len(parts)):
            inside.setdefault(parts[:end], key)
    for key, parts in paths.items():
        if parts in inside:
            errors[key] = [f"Given whole and by dotted keys too ({inside[parts]!r}); send one or the other."]
    if errors:
        raise ValidationError(errors)
    nested: dict = {}
    for key, parts in paths.items():
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = item[key]
    return nested


def rejection(index: int, error: ValidationError) -> dict[str, object]:
    """The item at `index` of a request, refused for `error`: {"index", "errors": {field: message}}
    (RejectedItemSchema); messages not tied to a field are under `_item`."""
    errors = error.messages if isinstance(error.messages, dict) else {"_item": error.messages}
    return {"index": index, "errors": flatten_errors(errors)}


class RejectedItemSchema(Schema):
    """An item a request could not take: its position in the array and a message per field."""

    index = fields.Integer(required=True)
    errors = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
