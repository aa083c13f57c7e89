"""The OpenAPI 3 document of the HTTP API, served at GET /openapi.json.

It is built from the app's routes: each view declares its documentation with `bridge.apidoc.documented`
(summary, answer schema, parameters, body, errors), next to its code, and its authentication is read
from `bridge.apps.auth.require_token`. The schemas are the marshmallow schemas the API really loads its bodies
with and dumps its answers with (apispec), so a field added to a schema shows up here. What marshmallow
cannot say (the custom fields, the security schemes, the shared error responses) is declared once below.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from http import HTTPStatus
from importlib.metadata import version

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema, fields

from bridge import fields as shared
from bridge import times
from bridge.apidoc import Body, Limit, Operation, is_pages_for_people, operation_of
from bridge.apps.auth import token_kind_of
from bridge.cohorts import schemas as cohorts
from bridge.errors import ErrorSchema
from bridge.http import MAX_JSON_DEPTH
from bridge.intake import schemas as intake
from bridge.registry import schemas as registry
from bridge.settings import Settings

OPENAPI_VERSION = "3.0.3"
# The security requirement of a route, by the kind of token its `require_token` demands (None: public).
SECURITY = {"api": [{"apiKey": []}], "cohort": [{"cohortToken": []}], None: []}
AUTHENTICATED = (401, 404, 503)  # what a route with a token may answer besides its own errors
WITH_BODY = (400, 413, 415)  # ... and a route that reads a JSON body


class UndocumentedRoute(Exception):
    """A route of the app has no `@documented` declaration, or one that does not fit its URL."""


_TIME_RULE = ("Epoch seconds (milliseconds when at least 10^11) or ISO 8601 (no zone means UTC), between "
              f"{times.EARLIEST:%Y-%m-%d} and one day after the bridge's clock (bridge.times).")
# JSON Schema of the custom marshmallow fields, which apispec cannot infer.
_CUSTOM_FIELDS: dict[type, dict] = {
    intake.LocalizedText: {"oneOf": [{"type": "string"},
                                     {"type": "object", "additionalProperties": {"type": "string"}}]},
    registry.RecordType: {"type": "string", "enum": list(registry.CHANNEL_OF_TYPE),
                          "description": "Also accepted in the event stream's spellings (iOS, Android, Email, ...)."},
    shared.Timestamp: {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
                       "description": _TIME_RULE},
    shared.EpochTime: {"oneOf": [{"type": "number"}, {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}],
                       "description": _TIME_RULE},
    shared.DateTimeText: {"type": "string", "format": "date-time", "description": _TIME_RULE},
    shared.Identifier: {"oneOf": [{"type": "string"}, {"type": "integer"}],
                        "description": "A whole number is taken as its decimal string."},
    cohorts.EpochSeconds: {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+$"}],
                           "description": f"Whole epoch seconds, between {times.EARLIEST:%Y-%m-%d} and one day after "
                                          "the bridge's clock; a value in milliseconds is refused, naming the unit."},
    cohorts.CohortUsers: {"type": "array", "items": {
        "type": "object", "required": ["user_id"],
        "description": "An entry without a usable user_id (absent, null, blank, another type, too long, with a NUL, "
                       "a placeholder; or not an object) does not refuse the batch: it is set aside and counted in "
                       "the sync record's `unusable_users`.",
        "properties": {"user_id": {"oneOf": [{"type": "string", "minLength": 1, "maxLength": cohorts.MAX_USER_ID_LENGTH},
                                             {"type": "integer"}],
                                   "description": "The External User ID; an integer is read as its decimal string."},
                       "user_properties": {"type": "object", "description": "Accepted and not kept."}}}},
}

_ERRORS = {
    400: f"The body or a parameter is invalid: `invalid_json`, `invalid_body`, `too_deeply_nested` (more than "
         f"{MAX_JSON_DEPTH} levels of arrays and objects), `empty_batch`, `invalid_events`, `invalid_subscriptions`, "
         "`invalid_payload`, `invalid_parameter`, `invalid_cursor`.",
    401: "The bearer token is missing, wrong, expired, or of the other kind (`unauthorized`).",
    404: "No such resource in the app.",
    409: "The request conflicts with the app's state: `platform_not_connected` (connect the app to its platform "
         "first), `tag_key_conflict` (another cohort's tag key, or a new key once tags were sent under the old one).",
    413: "The body is over its byte limit (`payload_too_large`) or holds too many items (`too_many_items`; "
         "`too_many_users` for a cohort batch over COHORT_MAX_USERS_PER_BATCH).",
    415: "The body is not sent as JSON (`unsupported_media_type`).",
    429: "The app has more events waiting for Amplitude than INTAKE_MAX_BACKLOG (`backlog_full`); nothing was "
         "stored; retry after `Retry-After` seconds.",
    503: "The database is unreachable (`database_unavailable`), has no free connection (`database_busy`), or rolled "
         "the request back for a concurrent one's sake (`database_conflict`: a deadlock or serialization failure), or the "
         "web process cannot store events this fast, or reads as many large cohort bodies as it may (`overloaded`, "
         "nothing stored); retry after `Retry-After` seconds. Or the database's schema is missing or behind "
         "(`database_not_migrated`, no Retry-After): its operator must run `bridge db upgrade`.",
}


def build_document(app: Flask) -> dict:
    """The OpenAPI 3.0 document of every route `app` serves, as a JSON-ready dict; built on the first call
    and kept on the app (not to be changed). Raises UndocumentedRoute, naming the route, when a route has
    no `@documented` declaration or its declared path parameters are not its URL's variables."""
    document = app.extensions.get("bridge.openapi")
    if document is None:
        document = app.extensions["bridge.openapi"] = _build(app, app.extensions["bridge"].settings)
    return document


def _build(app: Flask, settings: Settings) -> dict:
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="bridge", version=version("bridge"), openapi_version=OPENAPI_VERSION, plugins=[plugin],
        info={"description": "Between a OneSignal-style messaging platform and Amplitude. Every error has the "
                             "shape of the `Error` schema."},
    )
    plugin.converter.add_attribute_function(_custom_field)
    for name, what in (("apiKey", "api_key"), ("cohortToken", "cohort_token")):
        spec.components.security_scheme(name, {"type": "http", "scheme": "bearer",
                                               "description": f"The app's {what}, as 'Authorization: Bearer <token>'."})
    spec.components.schema("Error", schema=ErrorSchema)
    for code, description in _ERRORS.items():
        spec.components.response(_error_response(code), {
            "description": description, "content": {"application/json": {"schema": "Error"}}})
    for path, (parameters, operations) in _paths(app, settings, lambda schema: _dotted(spec, plugin, schema)).items():
        spec.path(path=path, parameters=parameters, operations=operations)
    return spec.to_dict()


def _dotted(spec: APISpec, plugin: MarshmallowPlugin, schema: type[Schema]) -> dict:
    """A reference to `schema`'s object written flat (`bridge.validation.unflattened`), registered once as
    `<Name>WithDottedKeys`: every field of a nested object under its dotted key, required when it and
    every object above it are."""
    name = f"{plugin.converter.schema_name_resolver(schema)}WithDottedKeys"
    if name not in spec.components.schemas:
        properties: dict[str, dict] = {}
        required: list[str] = []

        def add(json_schema: dict, prefix: str, needed: bool) -> None:
            for key, field in json_schema.get("properties", {}).items():
                is_required = needed and key in json_schema.get("required", ())
                ref = field.get("$ref") or next((part["$ref"] for part in field.get("allOf", ()) if "$ref" in part), None)
                if ref is not None:
                    add(spec.components.schemas[ref.rpartition("/")[2]], f"{prefix}{key}.", is_required)
                    continue
                properties[f"{prefix}{key}"] = field
                if is_required:
                    required.append(f"{prefix}{key}")

        add(plugin.converter.schema2jsonschema(schema), "", True)
        spec.components.schema(name, {
            "type": "object", "properties": properties, "required": required,
            "description": "The same object written flat, as a body of key/value pairs writes it: each field of a "
                           "nested object under its dotted key (`event.id`, `event.data.page_id`, `message.title.en`). "
                           "A key with an empty part, or a field given both whole and by dotted keys, refuses the "
                           "item alone."})
    return {"$ref": f"#/components/schemas/{name}"}


def _custom_field(self, field: fields.Field, **kwargs) -> dict:
    """apispec attribute function: the JSON Schema of the field classes apispec has no mapping for."""
    for cls in type(field).__mro__:
        if cls in _CUSTOM_FIELDS:
            schema = _CUSTOM_FIELDS[cls]
            if "description" in schema and "description" in field.metadata:
                return {**schema, "description": f"{field.metadata['description']} {schema['description']}"}
            return schema
    if isinstance(field, registry.Text):
        return {"type": "string", "maxLength": field.limit}
    if isinstance(field, shared.DisplayName):
        return {"description": f"Longer than {field.limit:,} characters is cut, not refused."}
    return {}


def _paths(app: Flask, settings: Settings, dotted: Callable[[type[Schema]], dict]) -> dict[str, tuple[list[dict], dict]]:
    """Each URL of the app in OpenAPI's spelling (`{app_id}`), with its path parameters and an operation
    per method, from the declarations on the views; `dotted` gives a body schema's flat variant."""
    paths: dict[str, tuple[list[dict], dict]] = {}
    for rule in app.url_map.iter_rules():
        if is_pages_for_people(app.blueprints.get(rule.endpoint.rpartition(".")[0])):
            continue
        view = app.view_functions[rule.endpoint]
        declared = operation_of(view)
        if declared is None:
            raise UndocumentedRoute(f"{rule.rule} ({rule.endpoint}) has no @documented declaration (bridge.apidoc)")
        named = [parameter["name"] for parameter in declared.path]
        if sorted(named) != sorted(rule.arguments):
            raise UndocumentedRoute(f"{rule.rule} ({rule.endpoint}) declares the path parameters {named}, "
                                    f"not its URL's {sorted(rule.arguments)}")
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        parameters, operations = paths.setdefault(path, (list(declared.path), {}))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operations[method.lower()] = _operation(declared, token_kind_of(view), settings, dotted)
    return paths


def _operation(declared: Operation, token_kind: str | None, settings: Settings,
               dotted: Callable[[type[Schema]], dict]) -> dict:
    """One operation. Its errors answer the shared Error shape: those declared, plus AUTHENTICATED for a
    route with a token and WITH_BODY for one with a body. `unavailable` is the schema of a 503 that has
    its own shape instead (the health report)."""
    content = {media_type: {"schema": declared.answer if media_type == "application/json" else {"type": "string"}}
               for media_type in declared.media_types}
    errors = {*declared.errors, *(AUTHENTICATED if token_kind else ()), *(WITH_BODY if declared.body else ())}
    responses = {str(declared.status): {"description": "OK", "content": content}}
    responses.update({str(code): _error_response(code) for code in sorted(errors)})
    if declared.unavailable is not None:
        responses["503"] = {"description": "Unavailable",
                            "content": {"application/json": {"schema": declared.unavailable}}}
    operation = {"summary": declared.summary, "security": SECURITY[token_kind], "parameters": list(declared.query),
                 "responses": responses}
    if declared.body is not None:
        operation["requestBody"] = _body(declared.body, settings, dotted)
    return operation


def _error_response(code: int) -> str:
    """The name of the shared response for error status `code`: BadRequest, Unauthorized, ..."""
    return HTTPStatus(code).phrase.title().replace(" ", "")


def _body(body: Body, settings: Settings, dotted: Callable[[type[Schema]], dict]) -> dict:
    """A JSON body of one object, or (with `max_items`) also an array of 1 to `max_items` of them; each
    object nested, or (with `dotted_keys`) also flat."""
    item: object = {"anyOf": [body.schema, dotted(body.schema)]} if body.dotted_keys else body.schema
    schema: object = item
    if body.max_items is not None:
        many = {"type": "array", "items": item, "minItems": 1, "maxItems": _value(body.max_items, settings)}
        schema = {"oneOf": [item, many]}
    return {"required": True, "description": f"JSON, at most {_value(body.max_bytes, settings):,} bytes.",
            "content": {"application/json": {"schema": schema}}}


def _value(limit: Limit, settings: Settings) -> int:
    return limit if isinstance(limit, int) else limit(settings)
