"""The OpenAPI document at /openapi.json, and the API fuzzed against it (schemathesis, in-process).

The fuzzing holds the API to three promises: no 5xx whatever the input, every 4xx in the one JSON
error shape, and every answer as the document describes it (status, content type, body schema).
It runs 25 examples per operation and database; BRIDGE_FUZZ_EXAMPLES=400 digs deeper (a few minutes).
"""
from __future__ import annotations

import base64
import copy
import os
import re

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi import checks

from bridge.apidoc import APP_ID, documented, operation_of
from bridge.openapi import UndocumentedRoute, build_document
from bridge.runtime import Runtime
from bridge.settings import Settings
from bridge.web import create_app
from support.factories import event_item, flattened

COHORT = "churn-risk"
SUBSCRIPTION = "sub-1"
# Whether the API accepts exactly what the document allows. It does not, by design: a batch answers
# 2xx with a verdict per item, kinds an app does not send are counted as ignored unread, and some rules
# (event.timestamp or event.datetime, a cursor from a previous page) are beyond JSON Schema.
SEMANTIC_CHECKS = [checks.positive_data_acceptance, checks.negative_data_rejection]
EXAMPLES = int(os.environ.get("BRIDGE_FUZZ_EXAMPLES", "25"))


class CurrentApp:
    """A WSGI app that passes every request on to the current test's Flask app."""

    target = None

    def __call__(self, environ, start_response):
        return self.target(environ, start_response)


def default_document() -> dict:
    """The document of an app with the default settings, which the test apps run with (checked below)."""
    runtime = Runtime(Settings.from_env({"JOB_RUNNER": "manual", "DATABASE_URL": "sqlite://", "LOG_LEVEL": "ERROR"}))
    try:
        return copy.deepcopy(build_document(create_app(runtime=runtime)))
    finally:
        runtime.close()


# Loaded at import time, because schemathesis makes one test per operation, and sends to whichever app
# the test has. (schemathesis.pytest.from_fixture would load it from the `app` fixture, but fails on pytest 9.)
current_app = CurrentApp()
api_schema = schemathesis.openapi.from_dict(default_document())
api_schema.app = current_app


@pytest.fixture
def seeded(client, tenant, runtime):
    """The tenant with one channel record and one synced cohort (with an entry without a usable user_id), so
    the reads have something to show."""
    record = {"subscription_id": SUBSCRIPTION, "type": "iOSPush", "identifier": "token-1", "external_id": "u1"}
    assert client.post(f"/v1/apps/{tenant.app_id}/subscriptions", json=record, headers=tenant.auth).status_code == 200
    batch = {"cohort_id": COHORT, "cohort_name": "Churn risk", "in_cohort": True, "computed_time": 1763856000,
             "message_id": "m1", "users": [{"user_id": "u1"}, {"user_id": "u2"}, {"user_id": None}]}
    response = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=batch, headers=tenant.cohort_auth)
    assert response.status_code == 200
    runtime.runner.run_pending()
    return tenant


@pytest.fixture
def served(app):
    """The fuzzed requests, and the probes of schemathesis's own checks, go to this test's app."""
    current_app.target = app
    yield app
    current_app.target = None


def test_the_document_is_served_and_valid_openapi_3(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.json == api_schema.raw_schema
    api_schema.validate()
    assert api_schema.raw_schema["openapi"].startswith("3.")


def test_the_document_lists_every_route(app):
    documented = {(path, method.upper()) for path, item in api_schema.raw_schema["paths"].items()
                  for method in item if method != "parameters"}
    served = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method)
              for rule in app.url_map.iter_rules() for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served


def test_every_route_declares_its_documentation_on_its_view(app):
    for rule in app.url_map.iter_rules():
        declared = operation_of(app.view_functions[rule.endpoint])
        assert declared is not None, rule.rule
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = api_schema.raw_schema["paths"][path][method.lower()]
            assert operation["summary"] == declared.summary, rule.rule
            assert set(operation["responses"][str(declared.status)]["content"]) == set(declared.media_types), rule.rule


def test_a_route_without_a_declaration_fails_the_document(app):
    app.add_url_rule("/v1/apps/<app_id>/undocumented", "undocumented", lambda app_id: {})
    with pytest.raises(UndocumentedRoute, match="/v1/apps/<app_id>/undocumented"):
        build_document(app)


def test_a_declaration_must_name_every_path_parameter_of_its_route(app):
    view = documented("Partly declared", answer={"type": "object"}, path=(APP_ID,))(lambda app_id, part: {})
    app.add_url_rule("/v1/apps/<app_id>/parts/<part>", "parts", view)
    with pytest.raises(UndocumentedRoute, match=r"/v1/apps/<app_id>/parts/<part> .*'part'"):
        build_document(app)


# One request per documented operation (and media type) that succeeds on the seeded tenant: (method, path,
# JSON body, query string, Accept). Its answer must be the declared success, as the document describes it.
SUCCESSES = [
    ("GET", "/healthz", None, "", None),
    ("GET", "/livez", None, "", None),
    ("GET", "/openapi.json", None, "", None),
    ("GET", "/v1/apps/{app_id}", None, "", None),
    ("POST", "/v1/apps/{app_id}/events", [{
        "event": {"id": "e1", "kind": "message.push.sent", "timestamp": 1763856000, "subscription_id": SUBSCRIPTION,
                  "external_id": "u1"}, "message": {"id": "m1", "name": "Welcome"}}, {"event": {}}], "", None),
    ("GET", "/v1/apps/{app_id}/deliveries/stats", None, "", None),
    ("POST", "/v1/apps/{app_id}/subscriptions", [{"subscription_id": "sub-2", "type": "Email", "identifier": "a@b.co",
                                                 "last_active": 1763856000}, {"type": "nope"}], "", None),
    ("GET", "/v1/apps/{app_id}/subscriptions/{subscription_id}", None, "", None),
    ("POST", "/v1/apps/{app_id}/amplitude/cohorts", {
        "cohort_id": COHORT, "in_cohort": False, "computed_time": 1763856001, "message_id": "m2",
        "users": [{"user_id": "u2"}, 7]}, "", None),
    ("GET", "/v1/apps/{app_id}/cohorts", None, "limit=1", None),
    ("GET", "/v1/apps/{app_id}/cohorts/{cohort_id}", None, "", None),
    ("GET", "/v1/apps/{app_id}/cohorts/{cohort_id}/syncs", None, "", None),
    ("GET", "/v1/apps/{app_id}/cohorts/{cohort_id}/unmatched", None, "", None),
    ("GET", "/v1/apps/{app_id}/cohorts/{cohort_id}/devices", None, "", None),
    ("GET", "/v1/apps/{app_id}/cohorts/{cohort_id}/devices", None, "", "text/csv"),
    ("PUT", "/v1/apps/{app_id}/cohorts/{cohort_id}/platform-sync", {"enabled": False, "tag_key": "churn"}, "", None),
    ("GET", "/v1/apps/{app_id}/cohorts/{cohort_id}/platform-sync/plan", None, "", None),
    ("DELETE", "/v1/apps/{app_id}/users/{external_id}", None, "", None),  # last: it erases the seeded user
]


def test_every_operation_answers_its_example_as_documented(client, seeded):
    documented_answers = {(path, method.upper(), media_type)
                          for path, item in api_schema.raw_schema["paths"].items() for method, operation in item.items()
                          if method != "parameters"
                          for status, response in operation["responses"].items() if status < "300"
                          for media_type in response["content"]}
    examples = {(path, method, accept or "application/json") for method, path, _body, _query, accept in SUCCESSES}
    assert examples == documented_answers
    ids = {"app_id": seeded.app_id, "cohort_id": COHORT, "subscription_id": SUBSCRIPTION, "external_id": "u1"}
    for method, path, body, query, accept in SUCCESSES:
        operation = api_schema[path][method]
        security = operation.definition.raw["security"]
        headers = {} if not security else dict(seeded.cohort_auth if "cohortToken" in security[0] else seeded.auth)
        if accept:
            headers["Accept"] = accept
        response = client.open(path.format(**ids), method=method, json=body, query_string=query, headers=headers)
        [status] = [code for code in operation.definition.raw["responses"] if code < "300"]
        assert (response.status_code, response.mimetype) == (int(status), accept or "application/json"), (method, path)
        operation.validate_response(response)


def test_the_events_body_is_documented_nested_and_written_with_dotted_keys():
    document = api_schema.raw_schema
    body = document["paths"]["/v1/apps/{app_id}/events"]["post"]["requestBody"]["content"]["application/json"]
    documented_body = jsonschema.Draft4Validator({**body["schema"], "components": document["components"]})
    nested, flat = event_item(), flattened(event_item())
    assert "event.id" in flat
    for accepted in (nested, flat, [nested, flat]):
        assert documented_body.is_valid(accepted), accepted
    without_id = {key: value for key, value in flat.items() if key != "event.id"}
    assert not documented_body.is_valid(without_id)


def test_every_route_says_how_it_is_authenticated():
    for path, item in api_schema.raw_schema["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            expected = [] if not path.startswith("/v1/") else \
                [{"cohortToken": []}] if path.endswith("/amplitude/cohorts") else [{"apiKey": []}]
            assert operation["security"] == expected, (method, path)


@api_schema.parametrize()
@api_schema.given(known_ids=st.booleans())
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # the fixtures are shared by all examples
def test_the_api_keeps_its_contract(case, known_ids, served, seeded):
    """The tenant's own app, with its right token; the other path ids either random or the seeded ones."""
    parameters = case.path_parameters or {}
    if "app_id" in parameters:
        parameters["app_id"] = seeded.app_id
    if known_ids:
        parameters.update({name: value for name, value in (("cohort_id", COHORT), ("subscription_id", SUBSCRIPTION))
                           if name in parameters})
    security = case.operation.definition.raw["security"]
    headers = {} if not security else seeded.cohort_auth if "cohortToken" in security[0] else seeded.auth
    case.call_and_validate(headers=headers, additional_checks=[error_shape], excluded_checks=SEMANTIC_CHECKS)


def error_shape(ctx, response, case) -> None:
    """A schemathesis check: every 4xx is exactly {"error": str, "message": str, "details": object}."""
    if 400 <= response.status_code < 500:
        body = response.json()
        assert set(body) == {"error", "message", "details"}, body
        assert isinstance(body["error"], str) and isinstance(body["message"], str) and isinstance(body["details"], dict)


# -- Inputs that were 500s, pinned: found by probing what 25 examples per operation rarely reach -----


def cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("path", [
    "/v1/apps/a%00b/deliveries/stats",
    "/v1/apps/{app}/subscriptions/a%00b",
    "/v1/apps/{app}/cohorts/a%00b/syncs",
    "/v1/apps/{app}/cohorts?after=" + cursor(b'["a\\u0000"]'),
    "/v1/apps/{app}/cohorts/{cohort}/syncs?after=" + cursor(b"[9223372036854775808]"),
    "/v1/apps/{app}/cohorts/{cohort}/devices?after=" + cursor(b'["u1", 18446744073709551615]'),
], ids=["NUL in app_id", "NUL in subscription_id", "NUL in cohort_id", "NUL in a cursor",
        "a syncs cursor past 64 bits", "a devices cursor past 64 bits"])
def test_ids_the_database_cannot_hold_are_a_4xx(client, seeded, path):
    response = client.get(path.format(app=seeded.app_id, cohort=COHORT), headers=seeded.auth)
    assert response.status_code in (400, 404) and set(response.json) == {"error", "message", "details"}


@pytest.mark.parametrize(("field", "value"), [
    ("id", "e\x00"), ("subscription_id", "s\x00"), ("external_id", "u\x00"), ("subscription_device_type", "i\x00S"),
    ("timestamp", 1e300),
])
def test_event_values_the_database_or_amplitude_cannot_take_reject_the_item(client, tenant, field, value):
    item = {"event": {"id": "e1", "kind": "message.push.sent", "timestamp": 1763856000, "subscription_id": "s1",
                      "external_id": "u1", field: value}, "message": {"id": "m1", "name": "Welcome"}}
    response = client.post(f"/v1/apps/{tenant.app_id}/events", json=item, headers=tenant.auth)
    assert response.status_code == 400
    assert list(response.json["details"]["rejected"][0]["errors"]) == [f"event.{field}"]
