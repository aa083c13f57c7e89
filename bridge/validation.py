"""Per-item validation results every feature shares: a request of many items refuses the invalid ones by
position, with a message per field, and takes the rest.
"""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields


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


def rejection(index: int, error: ValidationError) -> dict[str, object]:
    """The item at `index` of a request, refused for `error`: {"index", "errors": {field: message}}
    (RejectedItemSchema); messages not tied to a field are under `_item`."""
    errors = error.messages if isinstance(error.messages, dict) else {"_item": error.messages}
    return {"index": index, "errors": flatten_errors(errors)}


class RejectedItemSchema(Schema):
    """An item a request could not take: its position in the array and a message per field."""

    index = fields.Integer(required=True)
    errors = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
