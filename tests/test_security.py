"""Security: every route authenticated and scoped to its own app, tokens hashed and rotatable, secrets
kept out of logs and answers, and the limits on what a body may hold."""
from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from freezegun import freeze_time
from sqlalchemy import select

from bridge import tokens
from bridge.amplitude.sink import AmplitudeSink
from bridge.apps.models import AppToken
from bridge.apps.service import rotate_token
from bridge.cli import main
from bridge.db import metadata, utcnow
from bridge.intake.schemas import MAX_FREE_FORM_BYTES
from bridge.http import MAX_JSON_DEPTH
from bridge.runtime import Runtime
from bridge.settings import Settings
from bridge.web import create_app
from support.factories import OMIT, Tenant, channel_record, cohort_batch, event_item, event_items, flattened, new_tenant

PUBLIC = {"/healthz", "/livez", "/openapi.json"}
WEBHOOK = "/v1/apps/<app_id>/amplitude/cohorts"


def routes(app) -> list[tuple[str, str]]:
    """(method, rule) of every route the app serves but the public ones, read from its URL map, so a
    route added later is in every test below without being listed."""
    found = sorted((method, rule.rule) for rule in app.url_map.iter_rules() if rule.rule not in PUBLIC
                   for method in rule.methods - {"HEAD", "OPTIONS"})
    assert {("POST", "/v1/apps/<app_id>/events"), ("POST", WEBHOOK)} <= set(found), found  # the loops check something
    return found


def call(client, method: str, rule: str, app_id: str, headers: dict[str, str]):
    """`rule` requested for `app_id`; any other path part names something that does not exist."""
    path = rule.replace("<app_id>", app_id)
    while "<" in path:
        start = path.index("<")
        path = path[:start] + "nothing" + path[path.index(">", start) + 1:]
    return client.open(path, method=method, headers=headers)


def token_kind(rule: str) -> str:
    return "cohort" if rule == WEBHOOK else "api"


@pytest.fixture
def other(runtime) -> Tenant:
    """A second app: none of its tokens may reach anything of `tenant`'s."""
    return new_tenant(runtime, "other")


def assert_unauthorized(response) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.json["error"] == "unauthorized" and set(response.json) == {"error", "message", "details"}


# -- (a) every route authenticated, and scoped to its own app ----------------------------------------


def test_only_the_health_check_and_the_document_are_public(app, client):
    served = {rule.rule for rule in app.url_map.iter_rules()}
    assert PUBLIC <= served and len(routes(app)) >= 10
    assert all(client.get(path).status_code == 200 for path in PUBLIC)


CREDENTIALS = {
    "no token": lambda own, other: {},
    "not a bearer token": lambda own, other: {"Authorization": f"Basic {own.api_key}"},
    "an empty bearer token": lambda own, other: {"Authorization": "Bearer "},
    "a wrong token": lambda own, other: {"Authorization": f"Bearer {tokens.new_token('api')}"},
    "another app's api_key": lambda own, other: other.auth,
    "another app's cohort_token": lambda own, other: other.cohort_auth,
}


@pytest.mark.parametrize("credentials", CREDENTIALS)
def test_every_route_refuses_requests_without_its_apps_token(app, client, tenant, other, credentials):
    headers = CREDENTIALS[credentials](tenant, other)
    for method, rule in routes(app):
        assert_unauthorized(call(client, method, rule, tenant.app_id, headers))


def test_every_route_takes_one_of_its_apps_tokens_and_refuses_the_other(app, client, tenant):
    by_kind = {"api": tenant.auth, "cohort": tenant.cohort_auth}
    for method, rule in routes(app):
        for kind, headers in by_kind.items():
            response = call(client, method, rule, tenant.app_id, headers)
            if kind == token_kind(rule):
                assert response.status_code != 401, (method, rule)
            else:
                assert_unauthorized(response)


def test_an_apps_own_token_shows_nothing_of_another_apps_data(client, tenant, other, runtime):
    record = channel_record("sub-a", "Email", identifier="a@example.com", external_id="u1")
    assert client.post(f"/v1/apps/{tenant.app_id}/subscriptions", json=record, headers=tenant.auth).status_code == 200
    assert client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=cohort_batch(["u1"], cohort_id="vip"),
                       headers=tenant.cohort_auth).status_code == 200
    runtime.runner.run_pending()
    assert client.post(f"/v1/apps/{tenant.app_id}/events", json=event_items(2), headers=tenant.auth).status_code == 202
    assert client.get(f"/v1/apps/{tenant.app_id}/deliveries/stats", headers=tenant.auth).json["pending"] == 2
    mine = f"/v1/apps/{other.app_id}"

    assert client.get(f"{mine}/subscriptions/sub-a", headers=other.auth).json["error"] == "subscription_not_found"
    assert client.get(f"{mine}/cohorts/vip", headers=other.auth).json["error"] == "cohort_not_found"
    assert client.get(f"{mine}/cohorts", headers=other.auth).json["items"] == []
    stats = client.get(f"{mine}/deliveries/stats", headers=other.auth).json
    assert (stats["pending"], stats["delivered"], stats["skipped"]["total"], stats["dead"]["total"]) == (0, 0, 0, 0)


# -- (b) tokens stored as digests, compared in constant time ----------------------------------------


def test_tokens_are_stored_only_as_their_sha256_digests(runtime, tenant):
    with runtime.session() as session:
        stored = set(session.execute(
            select(AppToken.kind, AppToken.token_hash).where(AppToken.app_id == tenant.app_id)))
        everything = " ".join(str(row) for table in metadata.sorted_tables for row in session.execute(select(table)))
    assert stored == {("api", hashlib.sha256(tenant.api_key.encode()).hexdigest()),
                      ("cohort", hashlib.sha256(tenant.cohort_token.encode()).hexdigest())}
    assert tenant.api_key not in everything and tenant.cohort_token not in everything


@pytest.fixture
def comparisons(monkeypatch) -> list[tuple[str, str]]:
    """Every hmac.compare_digest call, recorded (and still made)."""
    calls: list[tuple[str, str]] = []
    real = tokens.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    return calls


def test_a_token_is_compared_with_every_valid_digest_whatever_matches(comparisons):
    token = tokens.new_token("api")
    stored = [SimpleNamespace(token_hash=tokens.digest(t)) for t in (tokens.new_token("api"), token, tokens.new_token("api"))]
    assert tokens.match(token, stored) is stored[1] and len(comparisons) == 3
    assert tokens.match(tokens.new_token("api"), stored) is None and len(comparisons) == 6
    assert all(len(a) == len(b) == 64 for a, b in comparisons)  # digests, never the token itself


def test_requests_are_authenticated_through_the_constant_time_comparison(client, tenant, comparisons):
    assert client.get(f"/v1/apps/{tenant.app_id}/deliveries/stats", headers=tenant.auth).status_code == 200
    assert comparisons and tenant.api_key not in str(comparisons)


# -- (c) rotation without downtime ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["api", "cohort"])
def test_rotation_keeps_old_tokens_valid_for_the_grace_period_on_every_route(app, client, runtime, tenant, kind):
    """Rotated twice within the grace period: each token stops working when its own grace ends, on
    every route that takes that kind of token."""
    own_routes = [(method, rule) for method, rule in routes(app) if token_kind(rule) == kind]
    first = tenant.api_key if kind == "api" else tenant.cohort_token

    def valid(token: str) -> bool:
        outcomes = {call(client, method, rule, tenant.app_id, {"Authorization": f"Bearer {token}"}).status_code != 401
                    for method, rule in own_routes}
        assert len(outcomes) == 1, "a token is valid on every route of its kind, or on none"
        return outcomes.pop()

    with freeze_time(utcnow()) as frozen:
        with runtime.session() as session:
            second = rotate_token(session, tenant.app_id, kind, grace_seconds=3600)
            session.commit()
        assert valid(first) and valid(second)
        frozen.tick(timedelta(seconds=1800))
        with runtime.session() as session:
            third = rotate_token(session, tenant.app_id, kind, grace_seconds=3600)
            session.commit()
        assert valid(first) and valid(second) and valid(third)
        frozen.tick(timedelta(seconds=1801))  # the first grace is over; a later rotation did not extend it
        assert (valid(first), valid(second), valid(third)) == (False, True, True)
        frozen.tick(timedelta(seconds=1800))
        assert (valid(first), valid(second), valid(third)) == (False, False, True)


# -- (d) secrets stay out of logs and answers -------------------------------------------------------


@pytest.fixture
def rejecting_amplitude(settings_env):
    """A runtime and app whose Amplitude accepts no key but its own, so an app's key is refused."""
    with AmplitudeSink(api_keys={"the-only-valid-key"}) as sink:
        runtime = Runtime(Settings.from_env({**settings_env, "AMPLITUDE_BASE_URL": sink.url}))
        flask_app = create_app(runtime=runtime)
        yield runtime, flask_app.test_client()
        runtime.close()


def test_secrets_appear_in_no_log_line_and_no_answer(rejecting_amplitude, cli, caplog):
    runtime, client = rejecting_amplitude
    own, other = new_tenant(runtime, "own"), new_tenant(runtime, "other")
    caplog.set_level(logging.DEBUG)
    events = f"/v1/apps/{own.app_id}/events"
    item = event_item("e1")
    json_headers = {**own.auth, "Content-Type": "application/json"}
    answers = [
        client.post(events, json=item, headers=other.auth),
        client.post(events, json=item, headers=own.cohort_auth),
        client.post(f"/v1/apps/{own.app_id}/amplitude/cohorts", json={}, headers=own.auth),
        client.post(events, data='{"token": "' + own.api_key, headers=json_headers),
        client.post(events, data="[" * 40 + "]" * 40, headers=json_headers),
        client.post(events, json=[{**item, "user": {"k": "x" * MAX_FREE_FORM_BYTES}}], headers=own.auth),
        client.post(events, json=item, headers=own.auth),
    ]
    runtime.runner.run_pending()  # delivery: Amplitude refuses the key and echoes it
    answers.append(client.get(f"/v1/apps/{own.app_id}/deliveries/stats", headers=own.auth))
    listed = cli.invoke(main, ["apps", "list"])

    assert answers[-1].json["held"] is not None and listed.exit_code == 0  # the refusal happened, and is shown
    shown = caplog.text + listed.output + "".join(answer.get_data(as_text=True) for answer in answers)
    for secret in (own.api_key, own.cohort_token, other.api_key, other.cohort_token, own.amplitude_api_key):
        assert secret not in shown


def test_bridge_config_masks_the_database_and_redis_passwords():
    env = {"DATABASE_URL": "postgres://bridge:db-s3cret@db.internal:5432/bridge",
           "REDIS_URL": "redis://:redis-s3cret@redis.internal:6379/0",
           "SECRET_KEY": "test-secret-key-0123456789abcdef0123456789"}
    result = CliRunner().invoke(main, ["config"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["DATABASE_URL"] == "postgresql+psycopg://bridge:***@db.internal:5432/bridge"
    assert shown["REDIS_URL"] == "redis://:***@redis.internal:6379/0"
    assert shown["SECRET_KEY"] == "***"
    assert "s3cret" not in result.output


# -- (e) limits on nesting and string lengths -------------------------------------------------------


def nested(levels: int) -> dict:
    """An object `levels` deep: {"a": {"a": ... {}}}."""
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def depth(value: object) -> int:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return 0 if children is None else 1 + max((depth(child) for child in children), default=0)


# Per POST route: a valid body that carries `free` in a free-form place, and the token it takes.
BODIES = {
    "events": (lambda free: event_item(f"e-{uuid.uuid4().hex}", external_id=OMIT, device_type=OMIT,
                                       message={"id": "m1", "name": "Welcome"}, data=free), "api"),
    "subscriptions": (lambda free: channel_record("s1", extra=free), "api"),
    "amplitude/cohorts": (lambda free: cohort_batch([{"user_id": "u1", "user_properties": free}], cohort_id="c"), "cohort"),
}


def post(client, tenant, route: str, body):
    headers = tenant.auth if BODIES[route][1] == "api" else tenant.cohort_auth
    return client.post(f"/v1/apps/{tenant.app_id}/{route}", json=body, headers=headers)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert set(response.json) == {"error", "message", "details"} and response.json["error"] == code
    return response.json["details"]


@pytest.mark.parametrize("route", BODIES)
def test_a_body_may_nest_up_to_the_limit_and_no_deeper(client, tenant, route):
    make = BODIES[route][0]
    base = depth(make(nested(1))) - 1
    at_limit, over = make(nested(MAX_JSON_DEPTH - base)), make(nested(MAX_JSON_DEPTH - base + 1))
    assert (depth(at_limit), depth(over)) == (MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1)

    assert post(client, tenant, route, at_limit).status_code in (200, 202)
    assert assert_error(post(client, tenant, route, over), 400, "too_deeply_nested") == {"limit": MAX_JSON_DEPTH}


@pytest.mark.parametrize(("levels", "code"), [(300, "too_deeply_nested"), (2000, "invalid_json")])
def test_a_very_deep_body_is_a_400_never_a_5xx(client, tenant, levels, code):
    """300 levels is past what orjson writes back (254), 2,000 past what it reads (1,024)."""
    response = client.post(f"/v1/apps/{tenant.app_id}/events", data="[" * levels + "]" * levels,
                           headers={**tenant.auth, "Content-Type": "application/json"})
    assert_error(response, 400, code)


def test_a_deep_event_without_a_user_is_refused_before_it_is_stored(client, tenant):
    """Such an event is stored as sent, and orjson cannot write 300 levels: this was a 500."""
    assert_error(post(client, tenant, "events", BODIES["events"][0](nested(300))), 400, "too_deeply_nested")


def test_dotted_keys_nest_an_event_no_deeper_than_can_be_stored(client, tenant):
    """An item written with dotted keys nests deeper than its body: a key of 32 parts holding a value as
    deep as the body may be makes an event of about 64 levels, which is stored (orjson writes 254), and
    one part more refuses the item by its key, never a 500."""
    deepest = "data." + ".".join(["k"] * (MAX_JSON_DEPTH - 1))
    without_user = flattened(event_item(external_id=OMIT, device_type=OMIT))  # stored as sent: the deepest copy
    item = {**without_user, deepest: nested(MAX_JSON_DEPTH - 1)}
    assert depth(item) == MAX_JSON_DEPTH
    answer = post(client, tenant, "events", item)
    assert (answer.status_code, answer.json["skipped"]) == (202, 1), answer.get_data(as_text=True)
    too_many = {**without_user, f"{deepest}.k": "x"}
    rejected = assert_error(post(client, tenant, "events", too_many), 400, "invalid_events")["rejected"]
    assert rejected == [{"index": 0, "errors": {f"{deepest}.k": f"Has more than {MAX_JSON_DEPTH} dot-separated parts."}}]


@pytest.mark.parametrize("field", ["data", "user"])
def test_free_form_objects_of_an_event_are_bounded(client, tenant, field):
    make = BODIES["events"][0]
    fits = {"k": "x" * (MAX_FREE_FORM_BYTES - len('{"k":""}'))}
    too_large = {"k": "x" * (MAX_FREE_FORM_BYTES - len('{"k":""}') + 1)}
    assert post(client, tenant, "events", {**make(None), field: fits}).status_code == 202
    details = assert_error(post(client, tenant, "events", {**make(None), field: too_large}), 400, "invalid_events")
    assert list(details["rejected"][0]["errors"]) == [field]


LONG = [
    ("events", lambda b: b["event"].update(id="e" * 129), "event.id"),
    ("events", lambda b: b["event"].update(external_id="u" * 257), "event.external_id"),
    ("events", lambda b: b["event"].update(subscription_device_type="d" * 65), "event.subscription_device_type"),
    ("subscriptions", lambda b: b.update(subscription_id="s" * 129), "subscription_id"),
    ("subscriptions", lambda b: b.update(device_model="m" * 129), "device_model"),
    ("subscriptions", lambda b: b.update(type="Email", identifier=f"{'a' * 510}@x.io"), "identifier"),
    ("amplitude/cohorts", lambda b: b.update(cohort_id="c" * 129), "cohort_id"),
]  # A cohort user_id too long is set aside and counted, not refused (tests/test_cohorts_webhook.py).


@pytest.mark.parametrize(("route", "lengthen", "field"), LONG, ids=[f"{r}:{f}" for r, _, f in LONG])
def test_strings_longer_than_their_limit_are_a_400_naming_the_field(client, tenant, route, lengthen, field):
    body = BODIES[route][0](None)
    lengthen(body)
    details = assert_error(post(client, tenant, route, body), 400, {
        "events": "invalid_events", "subscriptions": "invalid_subscriptions"}.get(route, "invalid_payload"))
    errors = details["rejected"][0]["errors"] if "rejected" in details else details
    assert list(errors) == [field]
