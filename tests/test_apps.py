"""Apps and their tokens: created from the CLI, stored hashed, rotated with a grace period."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from bridge.apps.models import App, AppToken
from bridge.apps.service import AppConfigError, create_app_record, rotate_token
from bridge.cli import main
from bridge.db import utcnow
from support.factories import event_item, new_tenant


def test_cli_creates_an_app_and_prints_its_tokens_once(cli, runtime):
    result = cli.invoke(main, ["apps", "create", "--name", "Shop", "--amplitude-api-key", "amp-key-123", "--region", "eu"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(out) >= {"app_id", "api_key", "cohort_token"}
    assert out["region"] == "eu" and out["amplitude_api_key"] != "amp-key-123"
    with runtime.session() as session:
        stored = list(session.scalars(select(AppToken.token_hash).where(AppToken.app_id == out["app_id"])))
    assert len(stored) == 2
    assert out["api_key"] not in stored and out["cohort_token"] not in stored  # only digests are kept
    listed = json.loads(cli.invoke(main, ["apps", "list"]).output)
    assert [a["app_id"] for a in listed] == [out["app_id"]] and "api_key" not in listed[0]


def test_cli_rejects_bad_settings_with_a_message(cli, runtime):
    result = cli.invoke(main, ["apps", "create", "--name", "x", "--amplitude-api-key", "k", "--kinds", "message.push.exploded"])
    assert result.exit_code != 0 and "unknown event kind 'message.push.exploded'" in result.output


def test_the_region_is_read_whatever_its_case(cli, runtime):
    result = cli.invoke(main, ["apps", "create", "--name", "Shop", "--amplitude-api-key", "k", "--region", "EU"])
    assert result.exit_code == 0, result.output
    app_id = json.loads(result.output)["app_id"]
    assert json.loads(result.output)["region"] == "eu"
    result = cli.invoke(main, ["apps", "update", app_id, "--region", "Us"])
    assert result.exit_code == 0, result.output
    with runtime.session() as session:
        assert session.get(App, app_id).region == "us"


def test_replay_refuses_a_reason_it_does_not_know_instead_of_requeuing_nothing(cli, runtime):
    result = cli.invoke(main, ["deliveries", "replay", "--reason", "retry_window_exceded"])
    assert result.exit_code == 2
    assert "Invalid value for '--reason': 'retry_window_exceded' is not one of" in result.output
    assert "'retry_window_exceeded'" in result.output and "'unresolved_user'" in result.output
    assert cli.invoke(main, ["deliveries", "replay", "--reason", "retry_window_exceeded"]).exit_code == 0


def test_the_sink_help_names_its_command_and_documents_its_control_paths(cli):
    result = cli.invoke(main, ["sink", "--help"])
    assert result.exit_code == 0
    assert result.output.startswith("usage: bridge sink ")
    for path in ("/_sink/faults", "/_sink/throttle", "/_sink/reset", "/_sink/stats", "/_sink/events", "/_sink/requests",
                 "/_sink/arrivals", "POST /2/httpapi, POST /batch"):
        assert path in result.output


def test_the_api_key_is_a_bearer_token_for_its_own_app_only(client, runtime, tenant):
    other = new_tenant(runtime, "Other")
    url = f"/v1/apps/{tenant.app_id}/deliveries/stats"
    assert client.get(url, headers=tenant.auth).status_code == 200
    assert client.get(url, headers=other.auth).status_code == 401


def test_rotation_keeps_the_old_token_valid_for_the_grace_period(client, runtime, tenant):
    url = f"/v1/apps/{tenant.app_id}/deliveries/stats"
    with freeze_time(utcnow()) as frozen:
        with runtime.session() as session:
            new = rotate_token(session, tenant.app_id, "api", grace_seconds=3600)
            session.commit()
        assert client.get(url, headers=tenant.auth).status_code == 200
        assert client.get(url, headers={"Authorization": f"Bearer {new}"}).status_code == 200
        frozen.tick(timedelta(seconds=3601))
        assert client.get(url, headers=tenant.auth).status_code == 401
        assert client.get(url, headers={"Authorization": f"Bearer {new}"}).status_code == 200


def test_rotation_with_no_grace_revokes_at_once(client, runtime, tenant):
    with runtime.session() as session:
        rotate_token(session, tenant.app_id, "api", grace_seconds=0)
        session.commit()
    assert client.get(f"/v1/apps/{tenant.app_id}/deliveries/stats", headers=tenant.auth).status_code == 401


def test_a_revocation_reaches_a_process_that_saw_the_token_within_the_auth_cache_delay(client, runtime, tenant):
    url = f"/v1/apps/{tenant.app_id}/deliveries/stats"
    with freeze_time(utcnow()) as frozen:
        assert client.get(url, headers=tenant.auth).status_code == 200  # now remembered by this process
        with runtime.session() as session:
            rotate_token(session, tenant.app_id, "api", grace_seconds=0)
            session.commit()
        assert client.get(url, headers=tenant.auth).status_code == 200
        frozen.tick(timedelta(seconds=runtime.settings.auth_cache_seconds))
        assert client.get(url, headers=tenant.auth).status_code == 401


def test_a_remembered_token_still_ends_exactly_with_its_grace_period(client, runtime, tenant):
    url = f"/v1/apps/{tenant.app_id}/deliveries/stats"
    with freeze_time(utcnow()) as frozen:
        with runtime.session() as session:
            rotate_token(session, tenant.app_id, "api", grace_seconds=2)
            session.commit()
        assert runtime.settings.auth_cache_seconds > 2
        assert client.get(url, headers=tenant.auth).status_code == 200
        frozen.tick(timedelta(seconds=2))
        assert client.get(url, headers=tenant.auth).status_code == 401


def test_an_apps_enabled_kinds_reach_the_intake_within_the_auth_cache_delay(client, runtime, tenant):
    from bridge.apps.service import update_app

    def post(i: int):
        return client.post(f"/v1/apps/{tenant.app_id}/events", json=event_item(f"e{i}"), headers=tenant.auth).json

    with freeze_time(utcnow()) as frozen:
        assert post(1)["accepted"] == 1
        with runtime.session() as session:
            update_app(session, session.get(App, tenant.app_id), enabled_kinds=["message.push.clicked"])
            session.commit()
        frozen.tick(timedelta(seconds=runtime.settings.auth_cache_seconds))
        assert post(2)["ignored"] == 1


def test_app_settings_are_validated(runtime):
    with runtime.session() as session:
        with pytest.raises(AppConfigError, match="region"):
            create_app_record(session, name="x", amplitude_api_key="k", region="asia")
        with pytest.raises(AppConfigError, match="name"):
            create_app_record(session, name=" ", amplitude_api_key="k")
        assert session.scalars(select(App)).all() == []


def test_healthz_needs_no_token(client):
    assert client.get("/healthz").json["status"] == "ok"


@pytest.mark.parametrize("grace", ["99999999999999", "-1"])
def test_an_absurd_grace_period_is_a_usage_error_not_a_traceback(cli, tenant, grace):
    result = cli.invoke(main, ["apps", "rotate-token", tenant.app_id, "--kind", "api", "--grace-seconds", grace])
    assert result.exit_code == 2
    assert "--grace-seconds" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
