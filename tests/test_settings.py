"""Settings come from the environment, Heroku's names included, and bad values stop the process early."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from bridge.cli import main
from bridge.settings import ConfigurationError, Settings
from support.processes import ROOT, SECRET_KEY


def test_defaults_are_the_embedded_mode():
    s = Settings.from_env({})
    assert s.database_url == "sqlite:///bridge.db"
    assert s.redis_url is None and s.job_runner == "thread"
    assert (s.port, s.delivery_batch_size, s.max_body_bytes) == (5000, 2000, 2 * 1024 * 1024)


@pytest.mark.parametrize("url", ["postgres://u:p@h:5432/d", "postgresql://u:p@h:5432/d"])
def test_heroku_and_plain_postgres_urls_use_psycopg3(url):
    assert Settings.from_env({"DATABASE_URL": url}).database_url == "postgresql+psycopg://u:p@h:5432/d"


def test_redis_url_switches_jobs_to_rq():
    assert Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0", "SECRET_KEY": "test-secret-key-0123456789abcdef0123456789"}).job_runner == "rq"


@pytest.mark.parametrize(("env", "names"), [
    ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
    ({"DATABASE_URL": "nonsense"}, "DATABASE_URL"),
    ({"PORT": "http"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"AMPLITUDE_BASE_URL": "ftp://x"}, "AMPLITUDE_BASE_URL"),
    ({"DELIVERY_BATCH_SIZE": "5000"}, "DELIVERY_BATCH_SIZE"),
    ({"DELIVERY_GZIP": "maybe"}, "DELIVERY_GZIP"),
    ({"JOB_RUNNER": "rq"}, "REDIS_URL"),
    ({"JOB_RUNNER": "celery"}, "JOB_RUNNER"),
    ({"IMPORT_MAX_BYTES": "lots"}, "IMPORT_MAX_BYTES"),
    ({"IMPORT_MAX_LINE_BYTES": "100"}, "IMPORT_MAX_LINE_BYTES"),
    ({"IMPORT_MAX_LINE_BYTES": str(2**30)}, "IMPORT_MAX_LINE_BYTES"),
    ({"IMPORT_MAX_ROWS": "0"}, "IMPORT_MAX_ROWS"),
    ({"IMPORT_MAX_ERRORS_FILE_ROWS": "-1"}, "IMPORT_MAX_ERRORS_FILE_ROWS"),
    ({"WEB_READ_TIMEOUT_SECONDS": "0"}, "WEB_READ_TIMEOUT_SECONDS"),
    ({"WEB_READ_TIMEOUT_SECONDS": "2.5"}, "WEB_READ_TIMEOUT_SECONDS"),
    ({"WEB_MAX_CONNECTIONS": "5"}, "WEB_MAX_CONNECTIONS"),
    ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
    ({"WEB_CONCURRENCY": "abc"}, "WEB_CONCURRENCY"),
    ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY"),
    ({"REDIS_URL": "redis//cache.internal:6379"}, "REDIS_URL"),
    ({"REDIS_URL": "http://cache.internal:6379"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://cache.internal:port/0"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://cache.internal:6379/zero"}, "REDIS_URL"),
    ({"REDIS_URL": "unix://"}, "REDIS_URL"),
    ({"DATABASE_URL": "sqlite://bridge.db"}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgres://bridge@db.internal:port/bridge"}, "DATABASE_URL"),
    ({"AMPLITUDE_BASE_URL": "http://amplitude.internal:port"}, "AMPLITUDE_BASE_URL"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of text, json, got 'xml'"),
    ({"COHORT_RESCHEDULE_SECONDS": "0"}, "COHORT_RESCHEDULE_SECONDS must be a whole number between 1 and 3600"),
    ({"COHORT_RESCHEDULE_SECONDS": "2.5"}, "COHORT_RESCHEDULE_SECONDS"),
    # the platform keeps a message's data 30 days: a catalog keeping less would forget it first
    ({"MESSAGE_CATALOG_RETENTION_DAYS": "30"}, "MESSAGE_CATALOG_RETENTION_DAYS must be a whole number between 31 and 36500"),
    ({"MESSAGE_CATALOG_RETENTION_DAYS": "90.5"}, "MESSAGE_CATALOG_RETENTION_DAYS"),
])
def test_bad_values_fail_fast_naming_the_variable(env, names):
    with pytest.raises(ConfigurationError, match=names):
        Settings.from_env({"SECRET_KEY": SECRET_KEY, **env})


@pytest.mark.parametrize(("variable", "value"), [
    ("REDIS_URL", "redis//:s3cret@cache.internal:6379/0"),
    ("REDIS_URL", "redis://:s3cret@cache.internal:port/0"),
    ("REDIS_URL", "redis://:s3cret@cache.internal:6379/zero"),
    ("DATABASE_URL", "postgres//bridge:s3cret@db.internal/bridge"),
    ("DATABASE_URL", "postgres://bridge:s3cret@db.internal:port/bridge"),
    ("AMPLITUDE_BASE_URL", "http://user:s3cret@amplitude.internal:port"),
])
def test_a_malformed_url_is_refused_in_one_line_with_its_password_masked(variable, value):
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({"SECRET_KEY": SECRET_KEY, variable: value})
    message = str(refused.value)
    assert message.startswith(f"{variable} must ") and "\n" not in message
    assert "s3cret" not in message and "***@" in message


@pytest.mark.parametrize(("env", "field", "value"), [
    ({"LOG_LEVEL": "debug"}, "log_level", "DEBUG"),
    ({}, "web_concurrency", 2),
    ({"WEB_CONCURRENCY": "4"}, "web_concurrency", 4),
    ({"REDIS_URL": "rediss://:pw@cache.internal:6380/2"}, "redis_url", "rediss://:pw@cache.internal:6380/2"),
    ({"REDIS_URL": "redis://cache.internal:6379"}, "redis_url", "redis://cache.internal:6379"),
    ({"REDIS_URL": "unix:///run/redis.sock?db=1"}, "redis_url", "unix:///run/redis.sock?db=1"),
    ({"DATABASE_URL": "sqlite:////var/lib/bridge/bridge.db"}, "database_url", "sqlite:////var/lib/bridge/bridge.db"),
    ({"DATABASE_URL": "postgres:///bridge"}, "database_url", "postgresql+psycopg:///bridge"),
    ({}, "cohort_reschedule_seconds", 30),
    ({"COHORT_RESCHEDULE_SECONDS": "2"}, "cohort_reschedule_seconds", 2),
    ({}, "message_catalog_retention_days", 180),
    ({"MESSAGE_CATALOG_RETENTION_DAYS": "31"}, "message_catalog_retention_days", 31),
])
def test_the_usual_forms_of_each_value_are_accepted(env, field, value):
    assert getattr(Settings.from_env({"SECRET_KEY": SECRET_KEY, **env}), field) == value


class _Recording(dict):
    """An environment that records the variables read from it."""

    def __init__(self, values: dict[str, str]):
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def test_settings_read_exactly_the_variables_their_fields_declare():
    env = _Recording({"REDIS_URL": "redis://127.0.0.1:6379/0", "SECRET_KEY": SECRET_KEY})
    Settings.from_env(env)
    assert env.read == set(Settings.variables().values())


def test_each_field_is_named_after_its_variable():
    """`settings.delivery_batch_size` is DELIVERY_BATCH_SIZE: code and configuration use one name."""
    assert {field: variable for field, variable in Settings.variables().items() if field != variable.lower()} == {}


def readme_configuration_variables() -> set[str]:
    """The variables the README's Configuration table lists (its first column)."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Configuration\n", 1)[1].splitlines()
    rows = [line for line in lines[:next(i for i, line in enumerate(lines) if line.startswith("## "))]
            if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_the_readme_table_the_settings_and_bridge_config_name_the_same_variables():
    production = {"REDIS_URL": "redis://127.0.0.1:6379/0", "SECRET_KEY": SECRET_KEY}
    shown = CliRunner().invoke(main, ["config"], env=production)
    assert shown.exit_code == 0, shown.output
    printed = json.loads(shown.output)
    assert readme_configuration_variables() == set(Settings.variables().values()) == set(printed)
    assert printed["SECRET_KEY"] == "***" and printed["WEB_CONCURRENCY"] == 2 and printed["JOB_RUNNER"] == "rq"


@pytest.mark.parametrize(("env", "args", "processes"), [
    ({"WEB_CONCURRENCY": "3"}, [], "3"),
    ({}, [], "2"),
    ({"WEB_CONCURRENCY": "3"}, ["--workers", "5"], "5"),
])
def test_web_concurrency_sets_the_web_processes_and_workers_overrides_it(monkeypatch, env, args, processes):
    started = []
    monkeypatch.setattr("bridge.cli.os.execvp", lambda _file, argv: started.append(argv))
    production = {"REDIS_URL": "redis://127.0.0.1:6379/0", "SECRET_KEY": SECRET_KEY, "WEB_CONCURRENCY": ""}
    result = CliRunner().invoke(main, ["web", *args], env={**production, **env})
    assert result.exit_code == 0, result.output
    [argv] = started
    assert argv[argv.index("--workers") + 1] == processes


@pytest.mark.parametrize(("raw", "log_format"), [("", "text"), ("json", "json"), (" JSON ", "json"), ("Text", "text")])
def test_log_format_is_text_unless_json_is_asked_for(raw, log_format):
    assert Settings.from_env({"LOG_FORMAT": raw}).log_format == log_format


def test_the_amplitude_base_url_override_keeps_paths_out():
    assert Settings.from_env({"AMPLITUDE_BASE_URL": "http://127.0.0.1:18080/"}).amplitude_base_url == "http://127.0.0.1:18080"


def test_redacted_masks_passwords():
    shown = Settings.from_env({"DATABASE_URL": "postgres://u:secret@h/d", "REDIS_URL": "redis://:pw@h:6379",
                               "SECRET_KEY": "test-secret-key-0123456789abcdef0123456789"}).redacted()
    assert ":secret@" not in str(shown) and "pw@" not in str(shown)
    assert shown["SECRET_KEY"] == "***" and "0123456789abcdef" not in str(shown)


def test_a_secret_key_is_required_in_production_and_generated_in_embedded_mode():
    with pytest.raises(ConfigurationError, match="SECRET_KEY is required when REDIS_URL is set"):
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    with pytest.raises(ConfigurationError, match="SECRET_KEY must be at least 32 characters"):
        Settings.from_env({"SECRET_KEY": "short"})
    embedded = [Settings.from_env({}).secret_key for _ in range(2)]
    assert len(embedded[0]) >= 32 and embedded[0] != embedded[1]


@pytest.mark.parametrize("url, verify, effective", [
    ("rediss://:pw@redis.example.com:6380", "false", "rediss://:pw@redis.example.com:6380?ssl_cert_reqs=none"),
    ("rediss://:pw@redis.example.com:6380/1?health_check_interval=5", "false",
     "rediss://:pw@redis.example.com:6380/1?health_check_interval=5&ssl_cert_reqs=none"),
    ("rediss://:pw@redis.example.com:6380?ssl_cert_reqs=optional", "false", "rediss://:pw@redis.example.com:6380?ssl_cert_reqs=optional"),
    ("rediss://:pw@redis.example.com:6380", "", "rediss://:pw@redis.example.com:6380"),
    ("redis://127.0.0.1:6379/0", "false", "redis://127.0.0.1:6379/0"),
])
def test_redis_tls_verify_false_turns_the_certificate_check_off_for_tls_urls_only(url, verify, effective):
    settings = Settings.from_env({"REDIS_URL": url, "REDIS_TLS_VERIFY": verify, "SECRET_KEY": "k" * 32})
    assert settings.redis_url == effective
    assert settings.redis_tls_verify is (verify != "false")
