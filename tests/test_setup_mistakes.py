"""An operator's mistake at start, in any `bridge` command, is one line on stderr naming what is wrong,
with an exit code and no traceback: a bad setting (exit code 2), a database or Redis that cannot be
reached (exit code 1, the URL shown with its password masked). Each case runs the real CLI in a
subprocess (`python -m bridge`), as an operator would."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pytest

from support.processes import ROOT, SECRET_KEY, free_port, run_bridge

PASSWORD = "s3cret-pw"
README = (ROOT / "README.md").read_text(encoding="utf-8")

# Every variable a test here sets, valid and empty (unset) unless a case says otherwise, so that the
# environment of the test run cannot leak into a case.
UNSET = {name: "" for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "JOB_RUNNER", "LOG_LEVEL", "PORT",
                               "WEB_CONCURRENCY", "AMPLITUDE_BASE_URL")}

# A bad setting, the variable the line must name, and the value it must show ("" for a secret: none).
BAD_SETTINGS = [
    ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL", "'verbose'"),
    ({"REDIS_URL": f"redis//:{PASSWORD}@cache:6379", "SECRET_KEY": SECRET_KEY}, "REDIS_URL",
     "'redis//:***@cache:6379'"),
    ({"REDIS_URL": f"redis://:{PASSWORD}@cache:6379/zero", "SECRET_KEY": SECRET_KEY}, "REDIS_URL",
     "'redis://:***@cache:6379/zero'"),
    ({"WEB_CONCURRENCY": "abc"}, "WEB_CONCURRENCY", "'abc'"),
    ({"DATABASE_URL": f"postgres://bridge:{PASSWORD}@db:port/bridge"}, "DATABASE_URL",
     "'postgres://bridge:***@db:port/bridge'"),
    ({"DATABASE_URL": "sqlite://bridge.db"}, "DATABASE_URL", "'sqlite://bridge.db'"),
    ({"AMPLITUDE_BASE_URL": "amplitude.example"}, "AMPLITUDE_BASE_URL", "'amplitude.example'"),
    ({"PORT": "http"}, "PORT", "'http'"),
    ({"SECRET_KEY": "short-secret"}, "SECRET_KEY", ""),
    ({"JOB_RUNNER": "celery"}, "JOB_RUNNER", "'celery'"),
]
# The lines the README's Configuration section shows.
README_EXAMPLES = BAD_SETTINGS[:2]
# The Procfile's three processes and the operator's tools, each a different path through the CLI.
COMMANDS = [["db", "upgrade"], ["db", "current"], ["apps", "list"], ["sweep"], ["worker"], ["web"], ["config"]]


def the_one_line(done, exit_code: int) -> str:
    """The single stderr line of a command that stopped with `exit_code`, having printed no traceback
    and nothing on stdout."""
    assert done.returncode == exit_code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == "", (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def valid_env(tmp_path) -> dict[str, str]:
    """Embedded mode on a SQLite file in an existing directory, on a port nothing listens on."""
    return {**UNSET, "DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}", "PORT": str(free_port())}


@pytest.mark.parametrize(("env", "variable", "shown"), BAD_SETTINGS, ids=[f"{v}={e[v]}" for e, v, _ in BAD_SETTINGS])
def test_a_bad_setting_is_one_line_naming_the_variable_and_its_value(valid_env, env, variable, shown):
    line = the_one_line(run_bridge({**valid_env, **env}, "config"), 2)
    assert line.startswith(f"bridge: configuration: {variable} must "), line
    assert shown in line and PASSWORD not in line and "short-secret" not in line


def test_the_readme_shows_the_lines_the_bridge_prints(valid_env):
    for env, _variable, _shown in README_EXAMPLES:
        assert the_one_line(run_bridge({**valid_env, **env}, "config"), 2) in README


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize(("env", "variable"), [({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
                                               ({"WEB_CONCURRENCY": "abc"}, "WEB_CONCURRENCY")])
def test_every_command_checks_every_setting_before_it_starts(valid_env, command, env, variable):
    line = the_one_line(run_bridge({**valid_env, **env}, *command, timeout=30), 2)
    assert line.startswith(f"bridge: configuration: {variable} must be "), line


def with_password(url: str, database: str) -> tuple[str, str]:
    """`url` naming `database`, with a password (its own if it has one, else PASSWORD): the URL and
    the password."""
    parts = urlsplit(url)
    password = parts.password or PASSWORD
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit(("postgresql", netloc, f"/{database}", "", "")), password


@pytest.fixture(params=["postgresql dead port", "postgresql unknown database", "sqlite missing directory"])
def unreachable_database(request, tmp_path) -> tuple[str, str, str, str]:
    """DATABASE_URL of a database that cannot be opened: that URL, the password it holds, how the bridge
    shows it (normalized, password masked), and the driver's reason."""
    if request.param == "postgresql dead port":
        url = f"postgresql://bridge:{PASSWORD}@127.0.0.1:1/bridge"
        return url, PASSWORD, "postgresql+psycopg://bridge:***@127.0.0.1:1/bridge", "Connection refused"
    if request.param == "postgresql unknown database":
        url, password = with_password(request.getfixturevalue("postgresql_url"), "bridge_no_such_database")
        shown = url.replace("postgresql://", "postgresql+psycopg://").replace(f":{password}@", ":***@")
        return url, password, shown, 'database "bridge_no_such_database" does not exist'
    url = f"sqlite:///{tmp_path / 'missing' / 'bridge.db'}"
    return url, PASSWORD, url, "unable to open database file"


@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "current"], ["apps", "list"], ["worker"]], ids=" ".join)
def test_an_unreachable_database_is_one_line_naming_its_url_password_masked(unreachable_database, redis_url, command):
    url, password, shown, reason = unreachable_database
    env = {**UNSET, "DATABASE_URL": url, "REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY}
    line = the_one_line(run_bridge(env, *command, timeout=30), 1)
    assert line.startswith(f"bridge: cannot connect to the database at {shown}: "), line
    assert reason in line and password not in line


@pytest.mark.parametrize("command", [["worker"], ["sweep"]], ids=" ".join)
def test_an_unreachable_redis_is_one_line_naming_its_url_password_masked(sqlite_url, command):
    env = {**UNSET, "DATABASE_URL": sqlite_url, "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:1/0",
           "SECRET_KEY": SECRET_KEY}
    line = the_one_line(run_bridge(env, *command, timeout=30), 1)
    assert line.startswith("bridge: cannot connect to Redis at redis://:***@127.0.0.1:1/0: "), line
    assert "Connection refused" in line and PASSWORD not in line
