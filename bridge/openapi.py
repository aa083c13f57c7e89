"""The OpenAPI 3 document of the HTTP API, served at GET /openapi.json.

It is generated with apispec from the marshmallow schemas the API really loads its bodies with and
answers with, so a field added to a schema shows up here. What marshmallow cannot say (the custom
fields, the routes, the security schemes, the errors) is declared once below.
"""
from __future__ import annotations

from functools import cache
from http import HTTPStatus
from importlib.metadata import version

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields, validate

from bridge import fields as shared
from bridge import times
from bridge.cohorts import schemas as cohorts
from bridge.delivery.schemas import DeliveryStatsSchema
from bridge.http import MAX_JSON_DEPTH
from bridge.intake import schemas as intake
from bridge.jobs import QUEUES
from bridge.paging import MAX_LIMIT
from bridge.registry import schemas as registry
from bridge.registry.models import CHANNELS
from bridge.registry.schemas import MAX_RECORDS_PER_REQUEST
from bridge.settings import JOB_RUNNERS, Settings

OPENAPI_VERSION = "3.0.3"
API_KEY = [{"apiKey": []}]
COHORT_TOKEN = [{"cohortToken": []}]
PUBLIC: list[dict] = []


class ErrorSchema(Schema):
    """The one shape of every 4xx and 5xx answer (`bridge.errors`)."""

    error = fields.String(required=True, metadata={"description": "A stable, machine-readable code."})
    message = fields.String(required=True, metadata={"description": "What went wrong, for people."})
    details = fields.Dict(required=True, metadata={"description": "Facts about the error; {} when there are none."})


class SchemaStateSchema(Schema):
    """The database schema against the migrations this code ships (bridge.migrate.SchemaState)."""

    current = fields.String(required=True, allow_none=True,
                            metadata={"description": "The revision the database is at; null when never migrated "
                                                     "or when the database cannot be read."})
    head = fields.String(required=True, metadata={"description": "The latest revision this code ships."})
    state = fields.String(required=True, validate=validate.OneOf(["ok", "missing", "behind", "ahead", "unknown"]),
                          metadata={"description": "`missing` and `behind`: run `bridge db upgrade`. `ahead`: the "
                                                   "database was migrated by a newer release. `unknown`: the "
                                                   "database cannot be read."})


class HealthSchema(Schema):
    """What GET /healthz answers, 200 or 503 (bridge.health.HealthCheck.report)."""

    status = fields.String(required=True, validate=validate.OneOf(["ok", "degraded", "unavailable"]),
                           metadata={"description": "`unavailable` (503): this process cannot serve the API. "
                                                    "`degraded` (200): it can, but a queue has no live worker or the "
                                                    "schema is ahead of this code."})
    database = fields.String(required=True, metadata={"description": "`ok`, or `error: <reason>`."})
    schema = fields.Nested(SchemaStateSchema, required=True)
    jobs = fields.String(required=True, validate=validate.OneOf(list(JOB_RUNNERS)))
    redis = fields.String(metadata={"description": "With RQ only: `ok`, or `error: <reason>`."})
    workers = fields.Nested(Schema.from_dict({kind: fields.Integer(required=True) for kind in QUEUES},
                                             name="WorkersSchema"),
                            allow_none=True, metadata={"description": "With RQ only: the live workers serving "
                                                                      "each queue; null when Redis cannot be asked."})


class LivenessSchema(Schema):
    """What GET /livez answers."""

    status = fields.String(required=True, validate=validate.Equal("ok"))


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
    413: "The body is over its byte limit (`payload_too_large`) or holds too many items (`too_many_items`; "
         "`too_many_users` for a cohort batch over COHORT_MAX_USERS_PER_BATCH).",
    415: "The body is not sent as JSON (`unsupported_media_type`).",
    429: "The app has more events waiting for Amplitude than INTAKE_MAX_BACKLOG (`backlog_full`); nothing was "
         "stored; retry after `Retry-After` seconds.",
    503: "The database is unreachable (`database_unavailable`) or has no free connection (`database_busy`), or the "
         "web process cannot store events this fast, or reads as many large cohort bodies as it may (`overloaded`, "
         "nothing stored); retry after `Retry-After` seconds. Or the database's schema is missing or behind "
         "(`database_not_migrated`, no Retry-After): its operator must run `bridge db upgrade`.",
}
_AUTHENTICATED = (401, 404, 503)
_WITH_BODY = (400, 413, 415)


@cache
def build_document(settings: Settings) -> dict:
    """The OpenAPI 3.0 document of every route the app serves, as a JSON-ready dict (built once per
    settings; not to be changed)."""
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
    for path, (parameters, operations) in _paths(settings).items():
        spec.path(path=path, parameters=parameters, operations=operations)
    return spec.to_dict()


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


def _paths(settings: Settings) -> dict[str, tuple[list[dict], dict]]:
    app = _path_parameter("app_id", 36)
    cohort = [app, _path_parameter("cohort_id", 128)]
    subscription = [app, _path_parameter("subscription_id", registry.MAX_LENGTH["subscription_id"])]
    limit = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100})
    after = _query("after", {"type": "string"}, "The `next` of the previous page.")
    return {
        "/healthz": ([], {"get": _operation("Health check (readiness)", PUBLIC, 200, HealthSchema, (),
                                            unavailable=HealthSchema)}),
        "/livez": ([], {"get": _operation("Liveness: the process answers", PUBLIC, 200, LivenessSchema, ())}),
        "/openapi.json": ([], {"get": _operation("This document", PUBLIC, 200, {"type": "object"}, ())}),
        "/v1/apps/{app_id}/events": ([app], {"post": _operation(
            "Post event-stream items", API_KEY, 202, intake.IntakeResultSchema, _AUTHENTICATED + _WITH_BODY + (429,),
            body=_one_or_many(intake.ItemSchema, settings.max_items_per_request, settings.max_body_bytes))}),
        "/v1/apps/{app_id}/deliveries/stats": ([app], {"get": _operation(
            "Delivery stats", API_KEY, 200, DeliveryStatsSchema, _AUTHENTICATED)}),
        "/v1/apps/{app_id}/subscriptions": ([app], {"post": _operation(
            "Add or update channel records", API_KEY, 200, registry.UpsertResultSchema, _AUTHENTICATED + _WITH_BODY,
            body=_one_or_many(registry.RecordSchema, MAX_RECORDS_PER_REQUEST, settings.max_body_bytes))}),
        "/v1/apps/{app_id}/subscriptions/{subscription_id}": (subscription, {"get": _operation(
            "One channel record", API_KEY, 200, registry.SubscriptionSchema, _AUTHENTICATED)}),
        "/v1/apps/{app_id}/amplitude/cohorts": ([app], {"post": _operation(
            "Amplitude's cohort webhook", COHORT_TOKEN, 200, cohorts.WebhookAckSchema, _AUTHENTICATED + _WITH_BODY,
            body=_body(cohorts.CohortWebhookSchema, settings.cohort_max_body_bytes))}),
        "/v1/apps/{app_id}/cohorts": ([app], {"get": _operation(
            "The app's cohorts", API_KEY, 200, cohorts.CohortPageSchema, _AUTHENTICATED + (400,),
            query=[limit, after])}),
        "/v1/apps/{app_id}/cohorts/{cohort_id}": (cohort, {"get": _operation(
            "A cohort's report", API_KEY, 200, cohorts.CohortReportSchema, _AUTHENTICATED)}),
        "/v1/apps/{app_id}/cohorts/{cohort_id}/syncs": (cohort, {"get": _operation(
            "A cohort's sync history, newest first", API_KEY, 200, cohorts.SyncPageSchema, _AUTHENTICATED + (400,),
            query=[limit, after])}),
        "/v1/apps/{app_id}/cohorts/{cohort_id}/unmatched": (cohort, {"get": _operation(
            "A cohort's users without a channel record", API_KEY, 200, cohorts.UnmatchedPageSchema,
            _AUTHENTICATED + (400,), query=[limit, after])}),
        "/v1/apps/{app_id}/cohorts/{cohort_id}/devices": (cohort, {"get": _operation(
            "A cohort's resolved audience", API_KEY, 200, cohorts.AudiencePageSchema, _AUTHENTICATED + (400,),
            query=[limit, after, _query("channel", {"type": "string", "enum": list(CHANNELS)}),
                   _query("subscribed", {"type": "string", "enum": ["true", "false", "unknown"]},
                          "One subscription state: true, false (unsubscribed only) or unknown."),
                   _query("format", {"type": "string", "enum": ["json", "csv"]},
                          "csv (or 'Accept: text/csv') streams every matching record as CSV.")],
            csv=True)}),
    }


def _operation(summary: str, security: list[dict], status: int, schema: object, errors: tuple[int, ...], *,
               body: dict | None = None, query: list[dict] = (), csv: bool = False,
               unavailable: object | None = None) -> dict:
    """One operation. `errors` answer the shared Error shape; `unavailable` is the schema of a 503 that
    has its own shape instead (the health report)."""
    content = {"application/json": {"schema": schema}}
    if csv:
        content["text/csv"] = {"schema": {"type": "string"}}
    responses = {str(status): {"description": "OK", "content": content}}
    responses.update({str(code): _error_response(code) for code in sorted(errors)})
    if unavailable is not None:
        responses["503"] = {"description": "Unavailable", "content": {"application/json": {"schema": unavailable}}}
    operation = {"summary": summary, "security": security, "parameters": list(query), "responses": responses}
    if body is not None:
        operation["requestBody"] = body
    return operation


def _error_response(code: int) -> str:
    """The name of the shared response for error status `code`: BadRequest, Unauthorized, ..."""
    return HTTPStatus(code).phrase.title().replace(" ", "")


def _one_or_many(schema: type[Schema], max_items: int, max_bytes: int) -> dict:
    """A body of one object, or an array of 1 to `max_items` of them."""
    many = {"type": "array", "items": schema, "minItems": 1, "maxItems": max_items}
    return _body({"oneOf": [schema, many]}, max_bytes)


def _body(schema: object, max_bytes: int) -> dict:
    return {"required": True, "description": f"JSON, at most {max_bytes:,} bytes.",
            "content": {"application/json": {"schema": schema}}}


def _path_parameter(name: str, max_length: int) -> dict:
    return {"in": "path", "name": name, "required": True, "schema": {"type": "string", "maxLength": max_length}}


def _query(name: str, schema: dict, description: str = "") -> dict:
    parameter = {"in": "query", "name": name, "required": False, "schema": schema}
    if description:
        parameter["description"] = description
    return parameter
