"""Settings come from the environment, Heroku's names included, and bad values stop the process early."""
from __future__ import annotations

import pytest

from bridge.settings import ConfigurationError, Settings


def test_defaults_are_the_embedded_mode():
    s = Settings.from_env({})
    assert s.database_url == "sqlite:///bridge.db"
    assert s.redis_url is None and s.job_runner == "thread"
    assert (s.port, s.batch_size, s.max_body_bytes) == (5000, 2000, 2 * 1024 * 1024)


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
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of text, json, got 'xml'"),
])
def test_bad_values_fail_fast_naming_the_variable(env, names):
    with pytest.raises(ConfigurationError, match=names):
        Settings.from_env(env)


@pytest.mark.parametrize(("raw", "log_format"), [("", "text"), ("json", "json"), (" JSON ", "json"), ("Text", "text")])
def test_log_format_is_text_unless_json_is_asked_for(raw, log_format):
    assert Settings.from_env({"LOG_FORMAT": raw}).log_format == log_format


def test_the_amplitude_base_url_override_keeps_paths_out():
    assert Settings.from_env({"AMPLITUDE_BASE_URL": "http://127.0.0.1:18080/"}).amplitude_base_url == "http://127.0.0.1:18080"


def test_redacted_masks_passwords():
    shown = Settings.from_env({"DATABASE_URL": "postgres://u:secret@h/d", "REDIS_URL": "redis://:pw@h:6379",
                               "SECRET_KEY": "test-secret-key-0123456789abcdef0123456789"}).redacted()
    assert ":secret@" not in str(shown) and "pw@" not in str(shown)
    assert shown["secret_key"] == "***" and "0123456789abcdef" not in str(shown)


def test_a_secret_key_is_required_in_production_and_generated_in_embedded_mode():
    with pytest.raises(ConfigurationError, match="SECRET_KEY is required when REDIS_URL is set"):
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    with pytest.raises(ConfigurationError, match="SECRET_KEY must be at least 32 characters"):
        Settings.from_env({"SECRET_KEY": "short"})
    embedded = [Settings.from_env({}).secret_key for _ in range(2)]
    assert len(embedded[0]) >= 32 and embedded[0] != embedded[1]
