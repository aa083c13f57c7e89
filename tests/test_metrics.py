"""`GET /metrics`: who may read it, that Prometheus' own parser reads it, and that its numbers move as
events, deliveries, cohort batches and platform tags flow through the real web app and jobs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from freezegun import freeze_time

from bridge import metrics
from bridge.apps.models import App
from bridge.apps.service import connect_platform
from bridge.cli import main
from bridge.cohorts import jobs
from bridge.db import utcnow
from bridge.delivery.pusher import drain_app
from bridge.runtime import Runtime
from bridge.settings import Settings
from bridge.web import create_app
from support.factories import cohort_batch, event_items
from support.metrics import CONTENT_TYPE, SCRAPE_HEADERS, TOKEN, Samples, moved, parse, value
from support.platform import API_KEY, APP_ID

EVENTS_ROUTE = "/v1/apps/<app_id>/events"


@pytest.fixture
def settings_env(settings_env, sink, platform_server):
    return {**settings_env, "METRICS_TOKEN": TOKEN, "AMPLITUDE_BASE_URL": sink.url,
            "PLATFORM_BASE_URL": platform_server.url}


def scrape(client) -> Samples:
    """A scrape of the app under test, read by prometheus_client's parser."""
    response = client.get("/metrics", headers=SCRAPE_HEADERS)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type == CONTENT_TYPE
    return parse(response.get_data(as_text=True))


def post(client, tenant, items, headers=None):
    return client.post(f"/v1/apps/{tenant.app_id}/events", json=items, headers=headers or tenant.auth)


def test_metrics_answer_only_the_operators_token(client, tenant):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, tenant.auth):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.json == {"error": "unauthorized", "message": "Send METRICS_TOKEN as "
                                 "'Authorization: Bearer <token>'.", "details": {}}
    assert value(scrape(client), "bridge_metrics_database_up") == 1


def test_without_a_token_metrics_is_an_unknown_route(runtime):
    bare = Runtime(Settings.from_env({"DATABASE_URL": runtime.settings.database_url, "JOB_RUNNER": "manual"}))
    try:
        response = create_app(runtime=bare).test_client().get("/metrics", headers=SCRAPE_HEADERS)
    finally:
        bare.close()
    assert response.status_code == 404 and response.json["error"] == "not_found"


def test_intake_and_delivery_numbers_move_as_events_flow(client, tenant, runtime, sink):
    app = tenant.app_id
    items = event_items(5)
    invalid = {"event": {"id": "bad", "kind": "message.push.sent"}, "message": {"name": "x"}}
    before = scrape(client)
    with freeze_time(utcnow()) as clock:
        assert post(client, tenant, [*items, invalid]).status_code == 202
        assert post(client, tenant, items).status_code == 202  # the platform's retry: duplicates
        assert post(client, tenant, items, {"Authorization": "Bearer wrong"}).status_code == 401
        clock.tick(30)
        waiting = scrape(client)
    assert {outcome: moved(before, waiting, "bridge_intake_requests_total", app=app, outcome=outcome)
            for outcome in ("accepted", "unauthorized")} == {"accepted": 2, "unauthorized": 0}
    assert moved(before, waiting, "bridge_intake_requests_total", app=metrics.UNAUTHENTICATED,
                 outcome="unauthorized") == 1
    assert {outcome: moved(before, waiting, "bridge_intake_events_total", app=app, outcome=outcome)
            for outcome in ("accepted", "skipped", "duplicates", "ignored", "rejected")} == {
        "accepted": 5, "skipped": 0, "duplicates": 5, "ignored": 0, "rejected": 1}
    assert value(waiting, "bridge_outbox_pending_events", app=app) == 5
    assert value(waiting, "bridge_outbox_oldest_pending_age_seconds", app=app) == 30
    latency = "bridge_http_request_duration_seconds_count"
    assert moved(before, waiting, latency, route=EVENTS_ROUTE, method="POST", status="2xx") == 2
    assert moved(before, waiting, latency, route=EVENTS_ROUTE, method="POST", status="4xx") == 1
    assert not [labels for name, labels in waiting if name == latency and ("route", "/metrics") in labels]

    runtime.runner.run_pending()  # the drain the intake's commit asked for
    delivered = scrape(client)
    assert moved(waiting, delivered, "bridge_amplitude_requests_total", app=app, answer="200") == 1
    assert moved(waiting, delivered, "bridge_delivery_events_total", app=app, outcome="delivered") == 5
    assert value(delivered, "bridge_outbox_pending_events", app=app) == 0
    assert value(delivered, "bridge_outbox_oldest_pending_age_seconds", app=app) == 0
    assert len(sink.events(tenant.amplitude_api_key)) == 5


def test_retries_and_dead_letters_are_counted_by_answer_and_reason(client, tenant, runtime, sink):
    app = tenant.app_id
    sink.add_faults([{"status": 503}, {"status": 413}])
    before = scrape(client)
    assert post(client, tenant, event_items(1)).status_code == 202
    runtime.runner.run_pending()  # 503: retried after a backoff
    with freeze_time(utcnow() + timedelta(hours=1)):
        drain_app(app, runtime)  # 413 for a single event: dead-lettered
    after = scrape(client)
    assert {answer: moved(before, after, "bridge_amplitude_requests_total", app=app, answer=answer)
            for answer in ("200", "413", "5xx")} == {"200": 0, "413": 1, "5xx": 1}
    assert {outcome: moved(before, after, "bridge_delivery_events_total", app=app, outcome=outcome)
            for outcome in ("delivered", "retrying", "dead")} == {"delivered": 0, "retrying": 1, "dead": 1}
    assert moved(before, after, "bridge_dead_letters_total", app=app, reason="payload_too_large") == 1
    assert value(after, "bridge_outbox_dead_events", app=app, reason="payload_too_large") == 1
    assert value(after, "bridge_outbox_pending_events", app=app) == 0


def test_cohort_batches_and_platform_tags_are_counted(client, tenant, runtime, platform_server):
    app = tenant.app_id
    with runtime.session() as session:
        connect_platform(session, session.get(App, app), platform="onesignal", platform_app_id=APP_ID,
                         platform_api_key=API_KEY)
        session.commit()
    platform_server.add_users(APP_ID, ["u1", "u2"])
    before = scrape(client)
    answered = client.post(f"/v1/apps/{app}/amplitude/cohorts", json=cohort_batch(["u1", "u2", "u3"], cohort_id="c1"),
                           headers=tenant.cohort_auth)
    assert answered.status_code == 200, answered.json
    received = scrape(client)
    assert value(received, "bridge_cohort_batches", state="received") == 1
    runtime.runner.run_pending()
    enabled = client.put(f"/v1/apps/{app}/cohorts/c1/platform-sync", json={"enabled": True}, headers=tenant.auth)
    assert enabled.status_code == 200, enabled.json
    runtime.runner.run_pending()  # the tagger
    after = scrape(client)
    assert moved(before, after, "bridge_cohort_batch_runs_total", outcome="processed") == 1
    assert value(after, "bridge_cohort_batches", state="processed") == 1
    assert value(after, "bridge_cohort_batches", state="received") == 0
    assert {outcome: moved(before, after, "bridge_platform_tag_requests_total", app=app, outcome=outcome)
            for outcome in ("applied", "not_on_platform")} == {"applied": 2, "not_on_platform": 1}
    assert {state: value(after, "bridge_platform_tags", app=app, state=state)
            for state in ("synced", "not_on_platform", "pending")} == {"synced": 2, "not_on_platform": 1, "pending": 0}


def test_labels_hold_no_value_a_client_chose(client, tenant):
    made_up = "00000000-dead-beef-0000-000000000000"
    secret = "bapi_not-a-real-token-but-secret"
    response = client.post(f"/v1/apps/{made_up}/events", json=event_items(1), headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 401
    client.open(f"/no/such/{made_up}", method="BREW")
    text = client.get("/metrics", headers=SCRAPE_HEADERS).get_data(as_text=True)
    assert made_up not in text and secret not in text and "BREW" not in text and TOKEN not in text
    assert tenant.app_id in text  # an app's own id is a label once it exists


def test_a_database_that_cannot_be_read_is_reported_not_a_500(tmp_path):
    unmigrated = Runtime(Settings.from_env({"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}", "JOB_RUNNER": "manual",
                                            "METRICS_TOKEN": TOKEN}))
    try:
        samples = scrape(create_app(runtime=unmigrated).test_client())
    finally:
        unmigrated.close()
    assert value(samples, "bridge_metrics_database_up") == 0
    assert not [name for name, _ in samples if name.startswith("bridge_outbox_")]


def test_a_starting_web_server_deletes_only_the_files_of_processes_gone(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(ended.stdout)
    (tmp_path / f"counter_{gone}.db").write_bytes(b"")
    (tmp_path / f"histogram_{gone}.db").write_bytes(b"")
    alive = tmp_path / f"counter_{os.getpid()}.db"
    alive.write_bytes(b"")
    metrics.prepare_directory(str(tmp_path / "new" / "dir"))
    metrics.prepare_directory(str(tmp_path))
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [alive.name]
    assert (tmp_path / "new" / "dir").is_dir()


@pytest.mark.parametrize(("status", "answer"), [(200, "200"), (400, "400"), (401, "4xx"), (413, "413"), (429, "429"),
                                                (502, "5xx"), (None, "network"), (302, "other")])
def test_amplitude_answers_fall_in_a_closed_set(status, answer):
    assert metrics.amplitude_answer(status) == answer


def test_the_openapi_document_declares_metrics_when_it_is_served(client):
    operation = client.get("/openapi.json").json["paths"]["/metrics"]["get"]
    assert set(operation["responses"]) == {"200", "401"}
    assert "text/plain" in operation["responses"]["200"]["content"]


def test_bridge_config_masks_the_token_and_a_short_one_is_refused(cli):
    shown = cli.invoke(main, ["config"])
    assert shown.exit_code == 0 and TOKEN not in shown.output
    printed = json.loads(shown.output)
    assert printed["METRICS_TOKEN"] == "***" and printed["PROMETHEUS_MULTIPROC_DIR"] is None
    refused = cli.invoke(main, ["config"], env={"METRICS_TOKEN": "short"})
    assert refused.exit_code == 2
    assert refused.output.strip() == ("bridge: configuration: METRICS_TOKEN must be at least 32 characters, got 5: "
                                      "set random characters, e.g. the output of `openssl rand -hex 32`")


@pytest.mark.parametrize("configured", [True, False])
def test_bridge_web_prepares_the_directory_before_gunicorn_starts(monkeypatch, tmp_path, configured):
    """What `bridge web` hands gunicorn: the directory in its environment (made when not configured),
    emptied of the files of processes gone, and the hooks that mark its processes dead."""
    started = []
    monkeypatch.setattr("bridge.cli.os.execvp", lambda _file, argv: started.append((argv, dict(os.environ))))
    for variable in (metrics.MULTIPROC_DIR_VARIABLE, metrics.MADE_DIR_VARIABLE):
        monkeypatch.setenv(variable, "")  # restored after the test: `bridge web` sets them in this process
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_999999999.db").write_bytes(b"")  # no such process
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}", "METRICS_TOKEN": TOKEN,
           "PROMETHEUS_MULTIPROC_DIR": str(directory) if configured else ""}
    result = CliRunner().invoke(main, ["web"], env=env)
    assert result.exit_code == 0, result.output
    [(argv, environ)] = started
    assert argv[argv.index("--config") + 1] == "python:bridge.gunicorn_config"
    used = Path(environ[metrics.MULTIPROC_DIR_VARIABLE])
    if configured:
        assert used == directory and not list(directory.iterdir())
    else:
        assert used.name.startswith("bridge-metrics-") and environ[metrics.MADE_DIR_VARIABLE] == str(used)
        used.rmdir()


def test_failed_and_skipped_cohort_batch_runs_are_counted(client, tenant, runtime, monkeypatch):
    assert client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=cohort_batch(cohort_id="c1"),
                       headers=tenant.cohort_auth).status_code == 200
    [(_job, (batch_id,))] = runtime.runner.pending

    def database_trouble(*args, **kwargs):  # as tests/test_cohorts_jobs.py: the database fails mid-apply
        raise RuntimeError("deadlock detected")

    monkeypatch.setattr(jobs, "apply_batch", database_trouble)
    before = scrape(client)
    for _ in range(jobs.MAX_ATTEMPTS):
        with pytest.raises(RuntimeError):
            jobs.process_batch(batch_id, runtime=runtime)
    assert jobs.process_batch(batch_id, runtime=runtime) is None  # failed for good: nothing to do
    after = scrape(client)
    assert {outcome: moved(before, after, "bridge_cohort_batch_runs_total", outcome=outcome)
            for outcome in ("processed", "failed", "skipped")} == {"processed": 0, "failed": jobs.MAX_ATTEMPTS,
                                                                   "skipped": 1}
    assert value(after, "bridge_cohort_batches", state="failed") == 1


def test_a_metrics_directory_that_cannot_be_made_is_one_line(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    result = CliRunner().invoke(main, ["web"], env={"DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}",
                                                    "METRICS_TOKEN": TOKEN, "PROMETHEUS_MULTIPROC_DIR": f"{blocked}/metrics"})
    assert result.exit_code == 2
    assert result.output.strip() == (f"bridge: configuration: PROMETHEUS_MULTIPROC_DIR must be a directory this process "
                                     f"can create and write, got '{blocked}/metrics' (Not a directory)")


def test_a_process_started_with_a_directory_not_made_yet_makes_it_and_counts(tmp_path):
    """A worker, a one-off command or the demo started with PROMETHEUS_MULTIPROC_DIR before any `bridge web`
    made it: its first count used to fail (a 500 from the intake); it makes the directory and counts there."""
    directory = tmp_path / "not" / "made"
    script = ("from bridge import metrics\n"
              "metrics.INTAKE_REQUESTS.labels(app='a', outcome='accepted').inc()\n"
              "print(metrics.exposition()[0].decode())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)})
    assert done.returncode == 0, done.stderr
    assert 'bridge_intake_requests_total{app="a",outcome="accepted"} 1.0' in done.stdout
    assert list(directory.glob("counter_*.db"))
