"""Every command the README or the Procfile shows is run by a test, as written, in the mode the README
shows it in.

The commands are read from the README's shell blocks, its Procfile table and the Procfile itself.
`RUN_BY` names the tests that run each of them: a command shown without an entry there fails
`test_every_command_shown_is_run_by_a_test`, naming the command.

The `bridge` lines of "Setting up an app" run here, through the installed console script, in embedded
mode (SQLite, no REDIS_URL) as the README's setup shows it: each line once without its optional `[...]`
parts and once with all of them, a README placeholder given a real value (`CHOICES` for what the line
leaves open, `Embedded.values` for ids and files). The release, an app's creation, the sweep and
`bridge config` also run in production mode (PostgreSQL and Redis).
"""
from __future__ import annotations

import ast
import csv
import gzip
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from alembic.script import ScriptDirectory
from redis import Redis
from rq import Queue
from sqlalchemy import create_engine, func, insert, select, text

from bridge.catalog.models import MessageCatalogEntry
from bridge.cohorts.models import PlatformTag
from bridge.delivery.models import DEAD, PENDING, EventReceipt, OutboxEvent
from bridge.migrate import alembic_config
from bridge.registry.models import Subscription
from bridge.settings import normalize_database_url
from support.processes import BRIDGE, ROOT, Process, free_port, wait_until_answering

README = ROOT / "README.md"
PROCFILE = ROOT / "Procfile"
SHELL_FENCES = {"bash", "sh", "console"}
THIS_FILE = "tests/test_readme_commands.py"

APPS_CREATE = ('bridge apps create --name "Shop" --amplitude-api-key KEY [--region us|eu] '
               '[--naming onesignal-2022|onesignal-current] [--kinds message.push.sent,...]')
APPS_UPDATE = ('bridge apps update APP_ID [--amplitude-api-key KEY] [--region eu] [--naming onesignal-current] '
               '[--event-name message.push.failed="Push Failed"] [--kinds all|k1,k2]')
APPS_ROTATE = "bridge apps rotate-token APP_ID --kind api|cohort [--grace-seconds 86400]"
APPS_LIST = "bridge apps list"
STATS = "bridge deliveries stats --app APP_ID"
REPLAY = "bridge deliveries replay [--app APP_ID] [--since 2026-11-20T00:00:00] [--reason retry_window_exceeded]"
IMPORT = "bridge subscriptions import --app APP_ID players.csv.gz [--errors-file rejected.csv]"
ERASE = "bridge users erase --app APP_ID EXTERNAL_ID"
SWEEP = "bridge sweep"
PRUNE = "bridge prune [--older-than-days 30]"
SINK = "bridge sink --port 18080"
PLATFORM_SERVER = "bridge platform-server --port 18090"
PLATFORM_CONNECT = ("bridge apps update APP_ID --platform onesignal --platform-app-id PLATFORM_APP_ID "
                    "--platform-api-key PLATFORM_KEY [--platform-rate 900]")
PLATFORM_SYNC = "bridge cohorts platform-sync APP_ID COHORT_ID --enable [--tag-key churn_risk]"
PLATFORM_PLAN = "bridge cohorts platform-plan APP_ID COHORT_ID"
PLATFORM_REPLAY = "bridge cohorts platform-replay [--app APP_ID] [--reason retry_window_exceeded]"
CONFIG = "bridge config"
DB_CURRENT = "bridge db current"
DB_DOWNGRADE = "bridge db downgrade 0007"

# What a README line leaves open, and the values its runs give it (several values: to its runs in turn).
CHOICES = {
    "us|eu": ("eu",),
    "message.push.sent,...": ("message.push.sent",),
    "onesignal-2022|onesignal-current": ("onesignal-current",),
    "all|k1,k2": ("all",),  # a list of kinds is the same option as `apps create --kinds`
    "api|cohort": ("api", "cohort"),
}

# Each command shown, as written, and the tests that run it.
RUN_BY: dict[str, tuple[str, ...]] = {
    "bin/demo": ("tests/test_demo.py::test_the_demo_delivers_every_resolvable_fixture_event_once",),
    # CI runs the suite through it; running it from inside the suite would recurse.
    "bin/test": (".ci/run",),
    "bin/bench --only fairness": ("tests/test_bench_smoke.py::test_the_readme_fairness_command_runs_as_written",),
    "bridge db upgrade": (f"{THIS_FILE}::embedded", f"{THIS_FILE}::test_production_mode_release_app_and_sweep",
                          "tests/test_e2e_outbound.py::test_embedded_mode_bridge_web_alone_delivers"),
    "bridge web": ("tests/test_e2e_outbound.py::test_every_trackable_event_reaches_amplitude_exactly_once",
                   "tests/test_e2e_outbound.py::test_embedded_mode_bridge_web_alone_delivers"),
    "bridge worker": ("tests/test_e2e_outbound.py::test_every_trackable_event_reaches_amplitude_exactly_once",),
    APPS_CREATE: (f"{THIS_FILE}::test_a_setup_line_runs_as_written",
                  f"{THIS_FILE}::test_production_mode_release_app_and_sweep"),
    APPS_UPDATE: (f"{THIS_FILE}::test_a_setup_line_runs_as_written",),
    APPS_ROTATE: (f"{THIS_FILE}::test_a_setup_line_runs_as_written",),
    APPS_LIST: (f"{THIS_FILE}::test_a_setup_line_runs_as_written",),
    STATS: (f"{THIS_FILE}::test_a_setup_line_runs_as_written",),
    REPLAY: (f"{THIS_FILE}::test_a_setup_line_runs_as_written",),
    IMPORT: (f"{THIS_FILE}::test_a_setup_line_runs_as_written",),
    ERASE: (f"{THIS_FILE}::test_a_setup_line_runs_as_written",),
    SWEEP: (f"{THIS_FILE}::test_a_setup_line_runs_as_written", f"{THIS_FILE}::test_production_mode_release_app_and_sweep"),
    PRUNE: (f"{THIS_FILE}::test_a_setup_line_runs_as_written",),
    SINK: (f"{THIS_FILE}::test_the_sink_serves_until_terminated",),
    PLATFORM_SERVER: (f"{THIS_FILE}::test_the_platform_server_serves_until_terminated",),
    PLATFORM_CONNECT: (f"{THIS_FILE}::test_a_setup_line_runs_as_written",),
    PLATFORM_SYNC: (f"{THIS_FILE}::test_a_setup_line_runs_as_written",),
    PLATFORM_PLAN: (f"{THIS_FILE}::test_a_setup_line_runs_as_written",),
    PLATFORM_REPLAY: (f"{THIS_FILE}::test_a_setup_line_runs_as_written",),
    DB_CURRENT: (f"{THIS_FILE}::test_the_schema_commands_say_what_they_did",),
    DB_DOWNGRADE: (f"{THIS_FILE}::test_the_schema_commands_say_what_they_did",),
    CONFIG: (f"{THIS_FILE}::test_a_setup_line_runs_as_written", f"{THIS_FILE}::test_production_mode_config_masks_credentials"),
    "hadolint Dockerfile": ("tests/test_deploy.py::test_hadolint_passes_the_dockerfile_and_fails_a_worse_one",),
    "check-jsonschema --builtin-schema vendor.compose-spec compose.yaml": (
        "tests/test_deploy.py::test_compose_file_is_valid_by_the_compose_specification_and_a_broken_one_is_not",),
}


# -- what the README and the Procfile show ----------------------------------------------------------

def readme_shell_commands() -> list[str]:
    """The command lines of the README's shell blocks, as written: a trailing `# comment` dropped,
    comment lines and `→` output lines skipped."""
    commands, fence = [], None
    for line in README.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip() if fence is None else None
            continue
        if fence in SHELL_FENCES and stripped and not stripped.startswith(("#", "→")):
            commands.append(re.sub(r"\s+#.*$", "", stripped.removeprefix("$ ")))
    return commands


def procfile() -> dict[str, str]:
    """Process type → command."""
    lines = [line.split(":", 1) for line in PROCFILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {name.strip(): command.strip() for name, command in lines}


def readme_procfile_table() -> dict[str, str]:
    """Process type → command, from the table that follows the README's mention of the `Procfile`."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if "(`Procfile`)" in line)
    table = list(itertools.takewhile(lambda line: line.startswith("|"),
                                     itertools.dropwhile(lambda line: not line.startswith("|"), lines[start + 1:])))
    rows = [[cell.strip().strip("`") for cell in line.strip("|").split("|")] for line in table[2:]]
    return {row[0]: row[1] for row in rows}


def readme_json_after(heading: str) -> dict:
    """The JSON example that follows `heading` in the README."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```json\n(.*?)\n```", text[text.index(heading):], re.S)
    return json.loads(block.group(1))


def test_the_readme_shows_the_procfile_as_it_is():
    assert readme_procfile_table() == procfile()


def test_every_command_shown_is_run_by_a_test():
    shown = set(readme_shell_commands()) | set(procfile().values()) | set(readme_procfile_table().values())
    untested = sorted(shown - RUN_BY.keys())
    assert not untested, (f"shown in the README or the Procfile but run by no test "
                          f"(add a test and its RUN_BY entry): {untested}")
    gone = sorted(RUN_BY.keys() - shown)
    assert not gone, f"in RUN_BY but no longer shown in the README or the Procfile: {gone}"


def test_the_tests_named_in_run_by_exist():
    """A renamed or deleted test must not leave its command covered on paper only."""
    for command, runners in RUN_BY.items():
        for runner in runners:
            path, _, name = runner.partition("::")
            source = (ROOT / path).read_text(encoding="utf-8")
            if name:
                defined = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
                assert name in defined, f"{command!r}: {runner} does not exist"
            else:  # a script that runs the command as written
                assert any(line.strip().split(" ")[0] == command for line in source.splitlines()), (
                    f"{command!r}: {path} does not run it")


# -- running the commands ---------------------------------------------------------------------------

def variants(line: str) -> list[list[str]]:
    """`line`'s words as a shell passes them: once without its optional `[...]` parts, then with all of
    them. Where `CHOICES` gives a word several values, the runs take them in turn."""
    forms = [shlex.split(form) for form in dict.fromkeys([re.sub(r"\s*\[[^\]]*\]", "", line),
                                                          line.replace("[", "").replace("]", "")])]
    for word, values in CHOICES.items():
        runs = sum(word in form for form in forms)
        assert not runs or runs >= len(values), f"{line}: {runs} run(s) cannot give {word} each of {values}"
    return [[CHOICES.get(word, (word,))[k % len(CHOICES.get(word, (word,)))] for word in form]
            for k, form in enumerate(forms)]


def option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def options(words: list[str], name: str) -> list[str]:
    """Every value of a repeatable option."""
    return [words[i + 1] for i, word in enumerate(words) if word == name]


def bridge(env: dict[str, str], words: list[str], values: dict[str, str] | None = None) -> str:
    """Run a README line's words through the installed `bridge` console script, placeholders replaced
    by `values`; returns its stdout, failing unless it exits 0."""
    args = [(values or {}).get(word, word) for word in words]
    open_parts = [a for a in args if re.fullmatch(r"[A-Z][A-Z_]+", a) or "|" in a or "..." in a]
    assert not open_parts, f"{' '.join(words)}: no value for {open_parts}"
    assert args[0] == "bridge"
    done = subprocess.run([BRIDGE, *args[1:]], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def bridge_json(env: dict[str, str], words: list[str], values: dict[str, str] | None = None):
    """The JSON a command prints: all of its stdout, nothing else (logs go to stderr)."""
    return json.loads(bridge(env, words, values))


def released(env: dict[str, str]) -> None:
    """`bridge db upgrade`, as the release phase runs it: the database ends at the latest revision, and
    the command names each migration it applied."""
    url = normalize_database_url(env["DATABASE_URL"])
    latest = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    said = bridge(env, ["bridge", "db", "upgrade"]).splitlines()
    assert said[0].startswith("applied 0001 (") and said[-1] == f"database is at {latest}, the latest revision"
    assert len(said) == int(latest) + 1
    engine = create_engine(url)
    with engine.connect() as conn:
        revision = conn.scalar(text("SELECT version_num FROM alembic_version"))
    engine.dispose()
    assert revision == ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def a_new_app(words: list[str], app: dict) -> dict:
    """What `bridge apps create` prints: the app as asked for, with its tokens (shown only now)."""
    assert app["name"] == "Shop" and app["api_key"].startswith("bapi_") and app["cohort_token"].startswith("bcoh_")
    assert app["region"] == (option(words, "--region") or "us")
    assert app["enabled_kinds"] == (sorted(option(words, "--kinds").split(",")) if "--kinds" in words else None)
    assert app["naming"] == (option(words, "--naming") or "onesignal-2022")
    return app


def created_app(env: dict[str, str]) -> dict:
    """The app made by the README's `bridge apps create` line as written, without its optional parts."""
    words = variants(APPS_CREATE)[0]
    return a_new_app(words, bridge_json(env, words, {"KEY": "amp-readme-key-1"}))


def add_rows(database_url: str, table, *rows: dict) -> None:
    engine = create_engine(normalize_database_url(database_url))
    with engine.begin() as conn:
        conn.execute(insert(table), list(rows))
    engine.dispose()


def outbox_row(app_id: str, **values) -> dict:
    """An outbox event of `app_id`, due now unless `values` say otherwise."""
    event_id = f"readme-{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    payload = {"event_type": "Push Pending Delivery", "user_id": "user-1", "insert_id": event_id,
               "time": int(now.timestamp() * 1000)}
    return {"app_id": app_id, "source_event_id": event_id, "kind": "message.push.sent", "state": PENDING,
            "insert_id": event_id, "amplitude_event": json.dumps(payload), "attempts": 0, "next_attempt_at": now,
            "created_at": now, **values}


def count(database_url: str, query) -> int:
    engine = create_engine(normalize_database_url(database_url))
    with engine.connect() as conn:
        value = conn.scalar(query)
    engine.dispose()
    return value


@dataclass
class Embedded:
    """The README's embedded mode: SQLite migrated by `bridge db upgrade`, no REDIS_URL; one app."""
    env: dict[str, str]
    database_url: str
    app: dict
    values: dict[str, str]  # the README's placeholders → real values

    @property
    def app_id(self) -> str:
        return self.app["app_id"]

    def run(self, words: list[str]):
        return bridge_json(self.env, words, self.values)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Embedded:
    tmp = tmp_path_factory.mktemp("embedded")
    database_url = f"sqlite:///{tmp / 'bridge.db'}"
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    env.update({"DATABASE_URL": database_url, "AMPLITUDE_BASE_URL": "http://127.0.0.1:9",  # discard port: nothing leaves
                "PLATFORM_BASE_URL": "http://127.0.0.1:9"})
    released(env)
    app = created_app(env)
    players = tmp / "players.csv.gz"
    with (ROOT / "fixtures" / "subscriptions-legacy.csv").open("rb") as plain, gzip.open(players, "wb") as packed:
        shutil.copyfileobj(plain, packed)
    values = {"APP_ID": app["app_id"], "KEY": "amp-readme-key-2", "players.csv.gz": str(players),
              "rejected.csv": str(tmp / "rejected.csv"), "PLATFORM_APP_ID": "5eb5a37e-b458-11e3-ac11-000c2940e62c",
              "PLATFORM_KEY": "os_v2_app_readme-key", "COHORT_ID": "churn-readme", "EXTERNAL_ID": "readme-user-7"}
    return Embedded(env, database_url, app, values)


# What each line of "Setting up an app" prints and does, as the README says.

def prints_the_new_app_and_its_tokens(setup: Embedded, words: list[str]) -> None:
    a_new_app(words, setup.run(words))


def changes_the_app(setup: Embedded, words: list[str]) -> None:
    app = setup.run(words)
    assert app["app_id"] == setup.app_id and "api_key" not in app
    if region := option(words, "--region"):
        assert app["region"] == region
    if kinds := option(words, "--kinds"):
        assert app["enabled_kinds"] == (None if kinds == "all" else sorted(kinds.split(",")))
    if naming := option(words, "--naming"):
        assert app["naming"] == naming
    for value in options(words, "--event-name"):
        kind, _, name = value.partition("=")
        assert app["event_names"].get(kind) == (name or None)


def issues_a_new_token(setup: Embedded, words: list[str]) -> None:
    kind = option(words, "--kind")
    rotated = setup.run(words)
    assert rotated["token"].startswith({"api": "bapi_", "cohort": "bcoh_"}[kind])
    assert rotated == {"app_id": setup.app_id, "kind": kind, "token": rotated["token"], "previous_valid_for_seconds": 86400}


def lists_apps_without_tokens(setup: Embedded, words: list[str]) -> None:
    listed = setup.run(words)
    assert setup.app_id in [app["app_id"] for app in listed]
    assert not [app for app in listed if {"api_key", "cohort_token"} & app.keys()]  # tokens are shown only once


def shows_delivery_stats(setup: Embedded, words: list[str]) -> None:
    stats = setup.run(words)
    assert stats.keys() == readme_json_after("### `GET /v1/apps/<app_id>/deliveries/stats`").keys()


def requeues_dead_events(setup: Embedded, words: list[str]) -> None:
    dead = outbox_row(setup.app_id, state=DEAD, reason="retry_window_exceeded",
                      created_at=datetime(2026, 11, 21, tzinfo=UTC))  # accepted after the line's --since
    add_rows(setup.database_url, OutboxEvent.__table__, dead)
    assert setup.run(words) == {"requeued": 1, "still_unresolved": 0, "apps": [setup.app_id]}


def imports_the_registry(setup: Embedded, words: list[str]) -> None:
    summary = setup.run(words)
    assert summary["added"] + summary["updated"] + summary["unchanged"] == 67 and summary["rejected"] == 6
    records = select(func.count()).select_from(Subscription).where(Subscription.app_id == setup.app_id)
    assert count(setup.database_url, records) == 67  # importing again never duplicates
    if "--errors-file" in words:
        with open(setup.values["rejected.csv"], newline="", encoding="utf-8") as rejected:
            assert len(list(csv.reader(rejected))) == 1 + 6  # a header, then every rejected row


def erases_the_user(setup: Embedded, words: list[str]) -> None:
    now = datetime.now(UTC)
    add_rows(setup.database_url, Subscription.__table__, {
        "app_id": setup.app_id, "subscription_id": f"readme-{uuid.uuid4().hex}", "channel": "email", "type": "Email",
        "identifier": "readme-user-7@example.com", "external_id": setup.values["EXTERNAL_ID"],
        "invalid_identifier": False, "created_at": now, "updated_at": now})
    erased = setup.run(words)
    assert erased == {"removed": {**readme_json_after("### Erasure on request")["removed"], "channel_records": 1,
                                  "outbox_events": {"pending": 0, "dead": 0, "skipped": 0, "details_redacted": 0},
                                  "cohort_memberships": 0,
                                  "cohort_batch_user_lists": 0, "cohort_batch_examples": 0, "platform_tags": 0,
                                  "catalog_entries": 0, "app_error_texts": 0}}
    assert erased["removed"].keys() == readme_json_after("### Erasure on request")["removed"].keys()
    assert setup.run(words)["removed"]["channel_records"] == 0  # again: nothing left


def queues_due_work(setup: Embedded, words: list[str]) -> None:
    add_rows(setup.database_url, OutboxEvent.__table__, outbox_row(setup.app_id))
    assert setup.run(words) == {"drains": 1, "cohort_batches": 0, "taggers": 0, "cohort_reports": 0}


def forgets_old_receipts(setup: Embedded, words: list[str]) -> None:
    now = datetime.now(UTC)
    add_rows(setup.database_url, EventReceipt.__table__,
             {"app_id": setup.app_id, "source_event_id": f"old-{uuid.uuid4().hex}", "created_at": now - timedelta(days=31)},
             {"app_id": setup.app_id, "source_event_id": f"new-{uuid.uuid4().hex}", "created_at": now - timedelta(days=29)})
    # the catalog keeps MESSAGE_CATALOG_RETENTION_DAYS (180 by default), whatever --older-than-days says
    add_rows(setup.database_url, MessageCatalogEntry.__table__,
             {"app_id": setup.app_id, "message_id": f"old-{uuid.uuid4().hex}", "name": "Old", "name_at": 0,
              "last_seen_at": now - timedelta(days=181)},
             {"app_id": setup.app_id, "message_id": f"new-{uuid.uuid4().hex}", "name": "New", "name_at": 0,
              "last_seen_at": now - timedelta(days=179)})
    assert setup.run(words) == {"event_receipts": 1, "cohort_batch_user_lists": 0, "message_catalog": 1,
                               "delivered_minutes": 0}


def connects_the_platform(setup: Embedded, words: list[str]) -> None:
    platform = setup.run(words)["platform"]
    assert (platform["name"], platform["app_id"]) == ("onesignal", setup.values["PLATFORM_APP_ID"])
    assert setup.values["PLATFORM_KEY"] not in json.dumps(platform)  # shown masked
    if rate := option(words, "--platform-rate"):
        assert platform["rate_per_second"] == float(rate)


def turns_platform_sync_on(setup: Embedded, words: list[str]) -> None:
    connects_the_platform(setup, variants(PLATFORM_CONNECT)[0])  # the line needs a connected app
    status = setup.run(words)
    assert status["enabled"] is True
    assert status["tag_key"] == (option(words, "--tag-key") or f"amplitude_cohort_{setup.values['COHORT_ID']}")


def plans_platform_sync(setup: Embedded, words: list[str]) -> None:
    plan = setup.run(words)
    assert plan.keys() == {"enabled", "tag_key", "adds", "removes", "sample"}
    assert plan["sample"].keys() == {"adds", "removes"}


def replays_failed_tags(setup: Embedded, words: list[str]) -> None:
    add_rows(setup.database_url, PlatformTag.__table__, {
        "app_id": setup.app_id, "external_id": f"u-{uuid.uuid4().hex}", "tag_key": "churn_risk", "cohort_id": "c",
        "value": "1", "computed_time": 1763856000, "state": "failed", "reason": "retry_window_exceeded",
        "attempts": 9, "updated_at": datetime.now(UTC)})
    assert setup.run(words) == {"requeued": 1}


def shows_the_settings(setup: Embedded, words: list[str]) -> None:
    settings = setup.run(words)
    assert (settings["DATABASE_URL"], settings["REDIS_URL"], settings["JOB_RUNNER"]) == (setup.database_url, None, "thread")


SETUP_LINES: dict[str, Callable[[Embedded, list[str]], None]] = {
    APPS_CREATE: prints_the_new_app_and_its_tokens,
    APPS_UPDATE: changes_the_app,
    APPS_ROTATE: issues_a_new_token,
    APPS_LIST: lists_apps_without_tokens,
    STATS: shows_delivery_stats,
    REPLAY: requeues_dead_events,
    IMPORT: imports_the_registry,
    ERASE: erases_the_user,
    SWEEP: queues_due_work,
    PRUNE: forgets_old_receipts,
    CONFIG: shows_the_settings,
    PLATFORM_CONNECT: connects_the_platform,
    PLATFORM_SYNC: turns_platform_sync_on,
    PLATFORM_PLAN: plans_platform_sync,
    PLATFORM_REPLAY: replays_failed_tags,
}


@pytest.mark.parametrize("line, words", [
    pytest.param(line, words, id=" ".join(words)) for line in SETUP_LINES for words in variants(line)
    if words != variants(APPS_CREATE)[0]])  # run by the `embedded` fixture: its app is every other line's APP_ID
def test_a_setup_line_runs_as_written(embedded, line, words):
    SETUP_LINES[line](embedded, words)


def test_the_sink_serves_until_terminated(tmp_path):
    port = free_port()
    args = [BRIDGE if word == "bridge" else str(port) if word == "18080" else word for word in shlex.split(SINK)]
    sink = Process(args, {}, tmp_path / "sink.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(sink, f"{url}/_sink/stats", "the sink")
        batch = {"api_key": "KEY", "events": [{"event_type": "Push Clicked", "user_id": "user-1", "insert_id": "readme-1"}]}
        assert httpx.post(f"{url}/2/httpapi", json=batch).status_code == 200
        assert httpx.post(f"{url}/_sink/faults", json=[{"status": 503}]).status_code == 200  # fault injection
        assert httpx.post(f"{url}/2/httpapi", json=batch).status_code == 503
        assert httpx.get(f"{url}/_sink/stats").json()["unique_insert_ids"] == 1
    finally:
        sink.stop()
    assert sink.popen.returncode == 0
    assert sink.output().splitlines()[0] == url  # its URL is the first line it prints


def test_the_platform_server_serves_until_terminated(tmp_path):
    port = free_port()
    args = [BRIDGE if word == "bridge" else str(port) if word == "18090" else word for word in shlex.split(PLATFORM_SERVER)]
    server = Process(args, {}, tmp_path / "platform-server.log")
    url = f"http://127.0.0.1:{port}"
    user = f"{url}/apps/app-1/users/by/external_id/user%2F1"
    tags, key = {"properties": {"tags": {"cohort_vip": "1"}}}, {"Authorization": "Key KEY"}
    try:
        wait_until_answering(server, f"{url}/_platform/stats", "the platform server")
        assert httpx.patch(user, json=tags, headers=key).status_code == 404  # a user it was not told of
        assert httpx.post(f"{url}/_platform/users", json={"app_id": "app-1", "external_ids": ["user/1"]}).status_code == 200
        assert httpx.patch(user, json=tags, headers=key).status_code == 202
        assert httpx.post(f"{url}/_platform/faults", json=[{"status": 429, "retry_after": 2}]).status_code == 200
        throttled = httpx.patch(user, json=tags, headers=key)
        assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "2")
        assert httpx.get(f"{url}/_platform/tags", params={"app_id": "app-1"}).json() == {"user/1": {"cohort_vip": "1"}}
        assert httpx.get(f"{url}/_platform/stats").json()["requests"] == {"404": 1, "202": 1, "429": 1}
    finally:
        server.stop()
    assert server.popen.returncode == 0
    assert server.output().splitlines()[0] == url  # its URL is the first line it prints


@pytest.mark.slow
def test_the_schema_commands_say_what_they_did(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'schema.db'}", "REDIS_URL": ""}
    current, downgrade = shlex.split(DB_CURRENT), shlex.split(DB_DOWNGRADE)
    latest = ScriptDirectory.from_config(alembic_config(env["DATABASE_URL"])).get_current_head()
    assert bridge(env, current) == (f"none (no migration applied): behind the latest, {latest}; "
                                    "run `bridge db upgrade`\n")
    released(env)
    assert bridge(env, current).endswith("): the latest revision\n")
    assert bridge(env, ["bridge", "db", "upgrade"]) == f"database is at {latest}, the latest revision; nothing to apply\n"
    said = bridge(env, downgrade).splitlines()
    assert [line.split(" (")[0] for line in said] == [
        *(f"reverted {n:04d}" for n in range(int(latest), 7, -1)), "database is at 0007"]
    assert bridge(env, current).startswith("0007 (") and f"behind the latest, {latest}" in bridge(env, current)
    refused = subprocess.run([BRIDGE, "db", "downgrade", "nope"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "cannot downgrade to 'nope'" in refused.stderr
    said = bridge(env, ["bridge", "db", "upgrade"]).splitlines()  # and back up: only what the downgrade reverted
    assert [line.split(" (")[0] for line in said] == [
        *(f"applied {n:04d}" for n in range(8, int(latest) + 1)), f"database is at {latest}, the latest revision"]


# -- production mode: PostgreSQL and Redis ----------------------------------------------------------

def with_password(url: str, password: str = "s3cret") -> str:
    """`url` with credentials, as Heroku gives them (a server that trusts the test user ignores them)."""
    parts = urlsplit(url)
    if parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{password}@{host}"))


@pytest.fixture
def production_env(postgresql_url, redis_url) -> dict[str, str]:
    """DATABASE_URL (an empty database, in Heroku's `postgres://` form, with a password) and REDIS_URL."""
    name = f"bridge_readme_{os.getpid()}"
    admin = psycopg.connect(postgresql_url.replace("+psycopg", ""), autocommit=True)
    admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.execute(f'CREATE DATABASE "{name}"')
    server = urlsplit(postgresql_url.replace("postgresql+psycopg://", "postgres://"))
    database_url = with_password(urlunsplit(server._replace(path=f"/{name}")))
    yield {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "AMPLITUDE_BASE_URL": "http://127.0.0.1:9",
           "SECRET_KEY": "test-secret-key-0123456789abcdef0123456789"}
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def test_production_mode_release_app_and_sweep(production_env, redis_url):
    released(production_env)
    app = created_app(production_env)
    add_rows(production_env["DATABASE_URL"], OutboxEvent.__table__, outbox_row(app["app_id"]))
    assert bridge_json(production_env, shlex.split(SWEEP)) == {"drains": 1, "cohort_batches": 0, "taggers": 0, "cohort_reports": 0}
    redis = Redis.from_url(redis_url)
    jobs = Queue("bridge", connection=redis).jobs  # a worker's work, recorded in Redis
    redis.close()
    assert [(job.func_name, job.args) for job in jobs] == [("bridge.delivery.pusher.drain_app", (app["app_id"],))]


def test_production_mode_config_masks_credentials(production_env):
    env = {**production_env, "REDIS_URL": with_password(production_env["REDIS_URL"])}  # config connects to neither
    settings = bridge_json(env, shlex.split(CONFIG))
    assert settings["JOB_RUNNER"] == "rq"
    assert settings["DATABASE_URL"].startswith("postgresql+psycopg://") and ":***@" in settings["DATABASE_URL"]
    assert ":***@" in settings["REDIS_URL"]
    assert "s3cret" not in json.dumps(settings)
