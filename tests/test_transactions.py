"""One rule for the unit of work: services flush, the owner (a request, a job, a command) commits, and the
jobs a transaction asks for are queued by its commit, never before it and never without it."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bridge.mapping import DEFAULT_VOCABULARY
from bridge.apps.models import App
from bridge.apps.service import create_app_record, rotate_token, update_app
from bridge.cli import main
from bridge.cohorts.membership import apply_batch
from bridge.cohorts.schemas import BatchUsers
from bridge.cohorts.webhook import store_batch
from bridge.db import metadata
from bridge.delivery.models import DEAD, OutboxEvent
from bridge.delivery.replay import replay
from bridge.delivery.scheduling import drain_after_commit, drain_key
from bridge.errors import ApiError
from bridge.intake.service import prepare, store
from bridge.jobs import DELIVERY, after_commit_once
from bridge.registry.importer import import_subscriptions
from bridge.registry.schemas import load_records
from bridge.registry.service import upsert_records
from bridge.request_scope import get_db
from bridge.runtime import Runtime
from bridge.settings import Settings
from bridge.web import create_app

runs: list[str] = []


def record_run(name: str, runtime=None) -> None:
    """A job that only says it ran."""
    runs.append(name)


@pytest.fixture(autouse=True)
def no_runs_yet():
    runs.clear()


def ask(session: Session, name: str) -> None:
    after_commit_once(session, DELIVERY, f"test:{name}", 60, record_run, name)


def rename(session: Session, app_id: str, name: str) -> None:
    session.execute(update(App).where(App.id == app_id).values(name=name))


def app_name(runtime: Runtime, app_id: str) -> str:
    with runtime.session() as session:
        return session.scalar(select(App.name).where(App.id == app_id))


def test_a_job_asked_for_in_a_transaction_that_rolls_back_never_runs(runtime, tenant):
    with runtime.session() as session:
        rename(session, tenant.app_id, "rolled back")
        ask(session, "rolled back")
        session.rollback()
        session.commit()  # a later commit of the same session does not send what the rollback dropped
    with runtime.session() as session:
        rename(session, tenant.app_id, "never committed")
        ask(session, "closed without a commit")
    assert runtime.runner.run_pending() == 0 and runs == []
    assert app_name(runtime, tenant.app_id) == "Test app"


def test_a_job_asked_for_in_a_committed_transaction_runs_exactly_once(runtime, tenant):
    with runtime.session() as session:
        rename(session, tenant.app_id, "committed")
        ask(session, "committed")
        ask(session, "committed")
        assert runtime.runner.pending == []  # nothing is queued before the commit
        session.commit()
        session.commit()
    assert runtime.runner.run_pending() == 1 and runs == ["committed"]
    assert app_name(runtime, tenant.app_id) == "committed"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_job_asked_for_in_a_savepoint_waits_for_the_transactions_commit(runtime, tenant):
    with runtime.session() as session:
        with session.begin_nested():
            ask(session, "in a savepoint")
        assert runtime.runner.pending == []
        session.commit()
    assert runtime.runner.run_pending() == 1 and runs == ["in a savepoint"]


def test_a_session_that_could_not_send_its_jobs_refuses_them(runtime):
    with Session(runtime.engine) as session, pytest.raises(RuntimeError, match="Runtime.sessions"):
        ask(session, "nowhere to go")


def item(event_id: str) -> dict:
    return {"event": {"id": event_id, "kind": "message.push.sent", "timestamp": 1763856000, "subscription_id": "sub-1",
                      "subscription_device_type": "iOS", "external_id": "user-1"},
            "message": {"id": "msg-1", "name": "Campaign", "title": "Hi", "contents": "Hello"}}


def webhook_body(message_id: str) -> dict:
    return {"cohort_id": "c1", "cohort_name": "Churn risk", "message_id": message_id, "in_cohort": True,
            "computed_time": 1763856000, "users": BatchUsers(["user-1", "user-2"])}


def dead_event(runtime: Runtime, tenant) -> None:
    with runtime.session() as session:
        store(session, [prepare(tenant.app_id, DEFAULT_VOCABULARY, [item("evt-dead")])])
        session.execute(update(OutboxEvent).values(state=DEAD, reason="retry_window_exceeded"))
        session.commit()


def stored_batch(runtime: Runtime, tenant) -> None:
    with runtime.session() as session:
        store_batch(session, tenant.app_id, webhook_body("m-stored"))
        session.commit()


# The services each owner kind calls: (what it needs stored first, the call).
SERVICES = {
    "request: intake store": (None, lambda s, t, tmp: store(s, [prepare(t.app_id, DEFAULT_VOCABULARY, [item("evt-1")])])),
    "request: cohort webhook": (None, lambda s, t, tmp: store_batch(s, t.app_id, webhook_body("m1"))),
    "request: subscriptions": (None, lambda s, t, tmp: upsert_records(s, t.app_id, load_records(
        [{"subscription_id": "s1", "type": "Email", "identifier": "a@example.com"}])[0])),
    "command: apps create": (None, lambda s, t, tmp: create_app_record(s, name="Other", amplitude_api_key="amp-other")),
    "command: apps update": (None, lambda s, t, tmp: update_app(s, s.get(App, t.app_id), name="Renamed",
                                                                amplitude_api_key="amp-new")),
    "command: rotate token": (None, lambda s, t, tmp: rotate_token(s, t.app_id, "api", grace_seconds=0)),
    "command: replay": (dead_event, lambda s, t, tmp: replay(s, app_id=t.app_id, reason="retry_window_exceeded")),
    "command: import": (None, lambda s, t, tmp: import_subscriptions(s, t.app_id, csv_file(tmp))),
    "job: cohort membership": (stored_batch, lambda s, t, tmp: apply_batch(s, t.app_id, "c1", True, 1763856000,
                                                                             ["user-1", "user-2"])),
}


def csv_file(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("id,identifier,device_type,notification_types\ns1,tok1,0,1\ns2,tok2,1,1\n")
    return path


def snapshot(session: Session, app_id: str) -> tuple:
    """What a service could change: every table's row count, the app's settings, the outbox's states."""
    counts = {table.name: session.scalar(select(func.count()).select_from(table)) for table in metadata.sorted_tables}
    app = session.execute(select(App.name, App.amplitude_api_key).where(App.id == app_id)).one()
    states = session.execute(select(OutboxEvent.state, func.count()).group_by(OutboxEvent.state)
                             .order_by(OutboxEvent.state)).all()
    tokens = session.execute(select(func.count()).select_from(metadata.tables["app_tokens"])
                             .where(metadata.tables["app_tokens"].c.expires_at.is_not(None))).scalar()
    return counts, tuple(app), [tuple(s) for s in states], tokens


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_alone_commits_nothing_and_queues_nothing(runtime, tenant, tmp_path, service):
    given, call = SERVICES[service]
    if given:
        given(runtime, tenant)
    runtime.runner.pending.clear()
    with runtime.session() as session:
        before = snapshot(session, tenant.app_id)
        session.rollback()
        call(session, tenant, tmp_path)
        assert snapshot(session, tenant.app_id) != before  # the service did write, in the caller's transaction
        session.rollback()
    with runtime.session() as session:
        assert snapshot(session, tenant.app_id) == before
    assert runtime.runner.pending == []


@pytest.fixture
def probed_app(runtime):
    """The app, with one more route: it renames the app and asks for a drain, then answers `outcome`."""
    flask_app = create_app(runtime=runtime)

    @flask_app.post("/probe/<app_id>/<outcome>")
    def probe(app_id: str, outcome: str):
        db = get_db()
        update_app(db, db.get(App, app_id), name=f"renamed, then {outcome}")
        drain_after_commit(db, app_id)
        if outcome == "refused":
            raise ApiError(409, "refused", "The view refused after writing.")
        return {"status": outcome}

    return flask_app


def test_a_request_commits_what_its_view_wrote_once_the_view_returns(probed_app, runtime, tenant):
    answer = probed_app.test_client().post(f"/probe/{tenant.app_id}/answered")
    assert answer.status_code == 200
    assert app_name(runtime, tenant.app_id) == "renamed, then answered"
    assert [args for _func, args in runtime.runner.pending] == [(tenant.app_id,)]


def test_a_request_whose_view_raises_commits_nothing_and_queues_nothing(probed_app, runtime, tenant):
    answer = probed_app.test_client().post(f"/probe/{tenant.app_id}/refused")
    assert (answer.status_code, answer.json["error"]) == (409, "refused")
    assert app_name(runtime, tenant.app_id) == "Test app"
    assert runtime.runner.pending == []


def test_a_command_commits_and_its_commit_queues_the_drain(settings_env, runtime, tenant, redis_url, monkeypatch):
    env = {**settings_env, "REDIS_URL": redis_url, "JOB_RUNNER": "rq",
           "SECRET_KEY": "test-secret-key-0123456789abcdef0123456789"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(main, ["apps", "update", tenant.app_id, "--amplitude-api-key", "amp-new-key"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["app_id"] == tenant.app_id
    rq = Runtime(Settings.from_env(env))
    try:
        assert rq.runner.redis.exists(f"bridge:once:{drain_key(tenant.app_id)}")
        assert rq.runner.redis.llen(f"rq:queue:{rq.settings.rq_queue}") == 1
    finally:
        rq.close()
    with runtime.session() as session:
        assert session.scalar(select(App.amplitude_api_key).where(App.id == tenant.app_id)) == "amp-new-key"
