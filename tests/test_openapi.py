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

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi import checks

from bridge.openapi import build_document
from bridge.settings import Settings

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


# The document for the default settings, which the test apps run with (checked below). It is loaded at
# import time, because schemathesis makes one test per operation, and sends to whichever app the test
# has. (schemathesis.pytest.from_fixture would load it from the `app` fixture, but fails on pytest 9.)
current_app = CurrentApp()
api_schema = schemathesis.openapi.from_dict(copy.deepcopy(build_document(Settings.from_env({"JOB_RUNNER": "manual"}))))
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
