"""Configuration: every value comes from the environment, is read once and is checked at start.

A wrong value stops the process with a one-line message naming the variable, the value (secrets
masked) and what is expected, instead of surfacing later as a traceback, a failed request or a
stuck worker.
"""
from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit

DEFAULT_DATABASE_URL = "sqlite:///bridge.db"
JOB_RUNNERS = ("rq", "thread", "manual")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")  # key=value pairs, or one JSON object per line (bridge/logs.py)
# The most bytes one entry of a cohort webhook's `users` needs: a user_id of 256 characters (the
# longest usable one, cohorts.schemas.MAX_USER_ID_LENGTH) of up to 4 UTF-8 bytes each, and 64 bytes of
# JSON around it (`{"user_id": "", "user_properties": {}},` is 41). Plus the envelope: cohort_id,
# message_id, cohort_name and the rest, 4 KiB. The default body limit is what the user cap needs.
COHORT_USER_ENTRY_BYTES = 256 * 4 + 64
# How long the messaging platform keeps a message's data; the message catalog keeps it longer.
PLATFORM_RETENTION_DAYS = 30
COHORT_ENVELOPE_BYTES = 4096


class ConfigurationError(RuntimeError):
    """A setting is missing or malformed; the message, one line, names the environment variable, shows
    the value (secrets masked) and says what is expected."""


def variable(name: str):
    """A Settings field read from the environment variable `name`, the name `bridge config` shows it by."""
    return field(metadata={"variable": name})


@dataclass(frozen=True)
class Settings:
    database_url: str = variable("DATABASE_URL")
    redis_url: str | None = variable("REDIS_URL")
    # false: a rediss:// REDIS_URL is used without checking the server's certificate (Heroku Redis's is
    # self-signed); redis_url then carries `ssl_cert_reqs=none`, so every client made from it does so.
    redis_tls_verify: bool = variable("REDIS_TLS_VERIFY")
    amplitude_base_url: str | None = variable("AMPLITUDE_BASE_URL")
    port: int = variable("PORT")
    job_runner: str = variable("JOB_RUNNER")
    log_level: str = variable("LOG_LEVEL")
    log_format: str = variable("LOG_FORMAT")
    # Signs and encrypts paging cursors, and signs the dashboard's session cookie; generated per process in
    # embedded mode.
    secret_key: str = variable("SECRET_KEY")
    # The operator dashboard (/dashboard): its login token (unset: no dashboard), and its cookie's Secure flag.
    admin_token: str | None = variable("ADMIN_TOKEN")
    dashboard_cookie_secure: bool = variable("DASHBOARD_COOKIE_SECURE")
    # Web tier
    web_concurrency: int = variable("WEB_CONCURRENCY")
    web_read_timeout_seconds: int = variable("WEB_READ_TIMEOUT_SECONDS")
    web_max_connections: int = variable("WEB_MAX_CONNECTIONS")
    # Metrics (bridge/metrics.py): /metrics is served only with a token; where processes write their counts
    metrics_token: str | None = variable("METRICS_TOKEN")
    prometheus_multiproc_dir: str | None = variable("PROMETHEUS_MULTIPROC_DIR")
    # Intake
    max_body_bytes: int = variable("MAX_BODY_BYTES")
    max_items_per_request: int = variable("MAX_ITEMS_PER_REQUEST")
    cohort_max_body_bytes: int = variable("COHORT_MAX_BODY_BYTES")
    cohort_max_users_per_batch: int = variable("COHORT_MAX_USERS_PER_BATCH")
    cohort_max_concurrent_bodies: int = variable("COHORT_MAX_CONCURRENT_BODIES")
    cohort_reschedule_seconds: int = variable("COHORT_RESCHEDULE_SECONDS")
    cohort_report_refresh_seconds: int = variable("COHORT_REPORT_REFRESH_SECONDS")
    auth_cache_seconds: float = variable("AUTH_CACHE_SECONDS")
    intake_max_queued_events: int = variable("INTAKE_MAX_QUEUED_EVENTS")
    intake_max_wait_seconds: float = variable("INTAKE_MAX_WAIT_SECONDS")
    intake_max_backlog: int = variable("INTAKE_MAX_BACKLOG")
    # Delivery
    delivery_batch_size: int = variable("DELIVERY_BATCH_SIZE")
    delivery_max_request_bytes: int = variable("DELIVERY_MAX_REQUEST_BYTES")
    delivery_gzip: bool = variable("DELIVERY_GZIP")
    amplitude_timeout_seconds: float = variable("AMPLITUDE_TIMEOUT_SECONDS")
    delivery_lease_seconds: int = variable("DELIVERY_LEASE_SECONDS")
    delivery_retry_window_seconds: int = variable("DELIVERY_RETRY_WINDOW_SECONDS")
    delivery_backoff_base_seconds: float = variable("DELIVERY_BACKOFF_BASE_SECONDS")
    delivery_backoff_cap_seconds: float = variable("DELIVERY_BACKOFF_CAP_SECONDS")
    delivery_throttle_pause_seconds: int = variable("DELIVERY_THROTTLE_PAUSE_SECONDS")
    delivery_invalid_key_pause_seconds: int = variable("DELIVERY_INVALID_KEY_PAUSE_SECONDS")
    delivery_drain_budget_seconds: float = variable("DELIVERY_DRAIN_BUDGET_SECONDS")
    delivery_linger_seconds: float = variable("DELIVERY_LINGER_SECONDS")
    platform_base_url: str | None = variable("PLATFORM_BASE_URL")
    platform_timeout_seconds: float = variable("PLATFORM_TIMEOUT_SECONDS")
    platform_concurrency: int = variable("PLATFORM_CONCURRENCY")
    platform_drain_budget_seconds: float = variable("PLATFORM_DRAIN_BUDGET_SECONDS")
    platform_retry_window_seconds: int = variable("PLATFORM_RETRY_WINDOW_SECONDS")
    platform_backoff_base_seconds: float = variable("PLATFORM_BACKOFF_BASE_SECONDS")
    platform_backoff_cap_seconds: float = variable("PLATFORM_BACKOFF_CAP_SECONDS")
    sweep_interval_seconds: float = variable("SWEEP_INTERVAL_SECONDS")
    rq_queue: str = variable("RQ_QUEUE")
    job_statement_timeout_seconds: float = variable("JOB_STATEMENT_TIMEOUT_SECONDS")
    # Message catalog (`bridge prune` forgets messages no event named for this many days)
    message_catalog_retention_days: int = variable("MESSAGE_CATALOG_RETENTION_DAYS")
    # Import (`bridge subscriptions import`)
    import_max_bytes: int = variable("IMPORT_MAX_BYTES")
    import_max_line_bytes: int = variable("IMPORT_MAX_LINE_BYTES")
    import_max_rows: int = variable("IMPORT_MAX_ROWS")
    import_max_errors_file_rows: int = variable("IMPORT_MAX_ERRORS_FILE_ROWS")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `env` (default: the process environment), failing fast on bad values."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        redis_tls_verify = reader.boolean("REDIS_TLS_VERIFY", True)
        redis_url = _unverified_tls(_redis_url(reader.text("REDIS_URL")), verify=redis_tls_verify)
        runner = reader.text("JOB_RUNNER") or ("rq" if redis_url else "thread")
        if runner not in JOB_RUNNERS:
            raise ConfigurationError(f"JOB_RUNNER must be one of {', '.join(JOB_RUNNERS)}, got {runner!r}")
        if runner == "rq" and not redis_url:
            raise ConfigurationError("JOB_RUNNER=rq needs REDIS_URL")
        # Amplitude sends a cohort in batches of up to 10,000 users.
        cohort_users = reader.integer("COHORT_MAX_USERS_PER_BATCH", 10_000, low=1, high=100_000)
        settings = cls(
            database_url=normalize_database_url(reader.text("DATABASE_URL") or DEFAULT_DATABASE_URL),
            redis_url=redis_url,
            redis_tls_verify=redis_tls_verify,
            amplitude_base_url=_base_url(reader.text("AMPLITUDE_BASE_URL")),
            port=reader.integer("PORT", 5000, low=1, high=65535),
            job_runner=runner,
            log_level=reader.choice("LOG_LEVEL", LOG_LEVELS, "INFO"),
            log_format=reader.choice("LOG_FORMAT", LOG_FORMATS, "text"),
            secret_key=_secret_key(reader.text("SECRET_KEY"), production=bool(redis_url)),
            admin_token=operator_token("ADMIN_TOKEN", reader.text("ADMIN_TOKEN")),
            dashboard_cookie_secure=reader.boolean("DASHBOARD_COOKIE_SECURE", True),
            web_concurrency=reader.integer("WEB_CONCURRENCY", 2, low=1),
            web_read_timeout_seconds=reader.integer("WEB_READ_TIMEOUT_SECONDS", 30, low=1, high=3600),
            web_max_connections=reader.integer("WEB_MAX_CONNECTIONS", 1000, low=10, high=100_000),
            metrics_token=operator_token("METRICS_TOKEN", reader.text("METRICS_TOKEN")),
            prometheus_multiproc_dir=reader.text("PROMETHEUS_MULTIPROC_DIR") or None,
            max_body_bytes=reader.integer("MAX_BODY_BYTES", 2 * 1024 * 1024, low=1024),
            max_items_per_request=reader.integer("MAX_ITEMS_PER_REQUEST", 1000, low=1),
            cohort_max_body_bytes=reader.integer("COHORT_MAX_BODY_BYTES", cohort_users * COHORT_USER_ENTRY_BYTES
                                                 + COHORT_ENVELOPE_BYTES, low=1024),
            cohort_max_users_per_batch=cohort_users,
            cohort_max_concurrent_bodies=reader.integer("COHORT_MAX_CONCURRENT_BODIES", 2, low=1, high=64),
            cohort_reschedule_seconds=reader.integer("COHORT_RESCHEDULE_SECONDS", 30, low=1, high=3600),
            cohort_report_refresh_seconds=reader.integer("COHORT_REPORT_REFRESH_SECONDS", 60, low=1, high=86400),
            auth_cache_seconds=reader.number("AUTH_CACHE_SECONDS", 5.0, low=0),
            intake_max_queued_events=reader.integer("INTAKE_MAX_QUEUED_EVENTS", 20_000, low=1),
            intake_max_wait_seconds=reader.number("INTAKE_MAX_WAIT_SECONDS", 1.0, low=0.01),
            intake_max_backlog=reader.integer("INTAKE_MAX_BACKLOG", 1_000_000, low=0),
            delivery_batch_size=reader.integer("DELIVERY_BATCH_SIZE", 2000, low=1, high=2000),
            delivery_max_request_bytes=reader.integer("DELIVERY_MAX_REQUEST_BYTES", 1_000_000, low=10_000, high=1_000_000),
            delivery_gzip=reader.boolean("DELIVERY_GZIP", False),
            amplitude_timeout_seconds=reader.number("AMPLITUDE_TIMEOUT_SECONDS", 10.0, low=0.1),
            delivery_lease_seconds=reader.integer("DELIVERY_LEASE_SECONDS", 60, low=1),
            delivery_retry_window_seconds=reader.integer("DELIVERY_RETRY_WINDOW_SECONDS", 24 * 3600, low=1),
            delivery_backoff_base_seconds=reader.number("DELIVERY_BACKOFF_BASE_SECONDS", 2.0, low=0.01),
            delivery_backoff_cap_seconds=reader.number("DELIVERY_BACKOFF_CAP_SECONDS", 600.0, low=0.01),
            delivery_throttle_pause_seconds=reader.integer("DELIVERY_THROTTLE_PAUSE_SECONDS", 30, low=1),
            delivery_invalid_key_pause_seconds=reader.integer("DELIVERY_INVALID_KEY_PAUSE_SECONDS", 600, low=1),
            delivery_drain_budget_seconds=reader.number("DELIVERY_DRAIN_BUDGET_SECONDS", 1.0, low=0.1),
            delivery_linger_seconds=reader.number("DELIVERY_LINGER_SECONDS", 0.5, low=0),
            platform_base_url=_base_url(reader.text("PLATFORM_BASE_URL"), "PLATFORM_BASE_URL"),
            platform_timeout_seconds=reader.number("PLATFORM_TIMEOUT_SECONDS", 10.0, low=0.1, high=300),
            platform_concurrency=reader.integer("PLATFORM_CONCURRENCY", 32, low=1, high=256),
            platform_drain_budget_seconds=reader.number("PLATFORM_DRAIN_BUDGET_SECONDS", 10.0, low=0.1, high=300),
            platform_retry_window_seconds=reader.integer("PLATFORM_RETRY_WINDOW_SECONDS", 24 * 3600, low=1),
            platform_backoff_base_seconds=reader.number("PLATFORM_BACKOFF_BASE_SECONDS", 2.0, low=0.01),
            platform_backoff_cap_seconds=reader.number("PLATFORM_BACKOFF_CAP_SECONDS", 300.0, low=0.01),
            sweep_interval_seconds=reader.number("SWEEP_INTERVAL_SECONDS", 5.0, low=0.05),
            rq_queue=reader.text("RQ_QUEUE") or "bridge",
            # Well under RQ's 600 s job timeout: a runaway statement is cancelled by PostgreSQL, and the
            # job records why, instead of RQ killing the job mid-query.
            job_statement_timeout_seconds=reader.number("JOB_STATEMENT_TIMEOUT_SECONDS", 60.0, low=0.1, high=500),
            # Over the platform's own 30 days: an entry must outlive the message data it stands in for.
            message_catalog_retention_days=reader.integer("MESSAGE_CATALOG_RETENTION_DAYS", 180,
                                                          low=PLATFORM_RETENTION_DAYS + 1, high=36_500),
            import_max_bytes=reader.integer("IMPORT_MAX_BYTES", 20 * 1024**3, low=1024, high=2**50),
            # 128 KiB, csv's default limit on one field; a real export's row, tags included, is far shorter
            import_max_line_bytes=reader.integer("IMPORT_MAX_LINE_BYTES", 128 * 1024, low=1024, high=64 * 1024**2),
            import_max_rows=reader.integer("IMPORT_MAX_ROWS", 50_000_000, low=1, high=2**50),
            import_max_errors_file_rows=reader.integer("IMPORT_MAX_ERRORS_FILE_ROWS", 10_000, low=0, high=2**50),
        )
        if settings.delivery_backoff_cap_seconds < settings.delivery_backoff_base_seconds:
            raise ConfigurationError("DELIVERY_BACKOFF_CAP_SECONDS must be >= DELIVERY_BACKOFF_BASE_SECONDS")
        if settings.platform_backoff_cap_seconds < settings.platform_backoff_base_seconds:
            raise ConfigurationError("PLATFORM_BACKOFF_CAP_SECONDS must be >= PLATFORM_BACKOFF_BASE_SECONDS")
        return settings

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Field name → the environment variable it is read from, e.g. `{"delivery_batch_size": "DELIVERY_BATCH_SIZE"}`."""
        return {f.name: f.metadata["variable"] for f in fields(cls)}

    def redacted(self) -> dict[str, object]:
        """Every variable's effective value, by variable name (`{"DATABASE_URL": ..., "PORT": 5000, ...}`),
        for `bridge config`: SECRET_KEY and ADMIN_TOKEN (when set) shown as `***`, passwords in URLs masked
        (`mask_url`)."""
        out: dict[str, object] = {}
        for name, variable_name in self.variables().items():
            value = getattr(self, name)
            if name in ("secret_key", "admin_token", "metrics_token") and value:
                value = "***"
            out[variable_name] = mask_url(value) if name.endswith("_url") and isinstance(value, str) else value
        return out


def normalize_database_url(url: str) -> str:
    """Accept Heroku's `postgres://` and plain `postgresql://`; use the psycopg 3 driver for PostgreSQL.
    SQLite's URL names a file (`sqlite:///relative/path.db`, `sqlite:////absolute/path.db`) or memory
    (`sqlite://`). Raises ConfigurationError for any other form."""
    expected = "postgres://user:password@host:port/name, postgresql://… or sqlite:///path/to/file.db"
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgres", "postgresql", "postgresql+psycopg") and sep:
        if reason := _unreadable(url):
            raise ConfigurationError(f"DATABASE_URL must be {expected} ({reason}), got {mask_url(url)!r}")
        return f"postgresql+psycopg://{rest}"
    if scheme == "sqlite" and sep:
        if rest.partition("/")[0]:  # a host where SQLite wants a path
            raise ConfigurationError(f"DATABASE_URL must be {expected}, got {mask_url(url)!r}, which names a "
                                     "host: a relative path starts with sqlite:///, an absolute one with sqlite:////")
        return url
    raise ConfigurationError(f"DATABASE_URL must be {expected}, got {mask_url(url)!r}")


def _unreadable(url: str) -> str | None:
    """Why urlsplit cannot read the host and port of `url` (a port that is not a number from 0 to 65535,
    an unclosed `[`), in its words, which never quote the password; None when it can."""
    try:
        urlsplit(url).port
    except ValueError as exc:
        return str(exc)
    return None


def _redis_url(value: str) -> str | None:
    """REDIS_URL, checked with redis-py's own parser and for what that parser lets through (no host, a
    database that is not a number); None when unset."""
    if not value:
        return None
    from redis.connection import parse_url  # here: only a deployment on Redis pays for the import

    expected = "redis://[:password@]host[:port][/db], rediss://… or unix:///path/to/socket"
    shown = mask_url(value)
    scheme, sep, _ = value.partition("://")
    if scheme not in ("redis", "rediss", "unix") or not sep:
        raise ConfigurationError(f"REDIS_URL must be {expected}, got {shown!r}")
    try:
        options = parse_url(value)
        path = urlsplit(value).path
    except ValueError as exc:  # a bad port or query parameter; redis-py's reason never quotes the password
        raise ConfigurationError(f"REDIS_URL must be {expected} ({exc}), got {shown!r}") from None
    if scheme == "unix":
        problem = "" if options.get("path", "/") != "/" else "no socket path"
    else:
        problem = ("no host" if not options.get("host")
                   else "" if re.fullmatch(r"/?\d*", path) else "a database that is not a number")
    if problem:
        raise ConfigurationError(f"REDIS_URL must be {expected}, got {shown!r}, which has {problem}")
    return value


def _unverified_tls(url: str | None, *, verify: bool) -> str | None:
    """A rediss:// `url` asking redis-py not to check the server's certificate (its `ssl_cert_reqs=none`
    query parameter, which also turns the host name check off) unless `verify`, or the URL already says
    how to check; any other URL as given."""
    if verify or url is None or not url.startswith("rediss://") or "ssl_cert_reqs=" in url:
        return url
    return f"{url}{'&' if urlsplit(url).query else '?'}ssl_cert_reqs=none"


SECRET_KEY_MIN_LENGTH = 32


def _secret_key(value: str, *, production: bool) -> str:
    """SECRET_KEY, required in production (REDIS_URL set: several web processes must share it); in
    embedded mode, where one process serves the API, a random one when unset."""
    if not value:
        if production:
            raise ConfigurationError("SECRET_KEY is required when REDIS_URL is set (every web process must share "
                                     f"it): set {SECRET_KEY_MIN_LENGTH} or more random characters, e.g. the output "
                                     "of `openssl rand -hex 32`")
        return secrets.token_hex(32)
    if len(value) < SECRET_KEY_MIN_LENGTH:
        raise ConfigurationError(f"SECRET_KEY must be at least {SECRET_KEY_MIN_LENGTH} characters, got {len(value)}")
    return value


def operator_token(variable: str, value: str) -> str | None:
    """ADMIN_TOKEN (the dashboard's login) or METRICS_TOKEN (the bearer token of a scrape of /metrics):
    None when unset (that page is not served). At least SECRET_KEY_MIN_LENGTH characters, so that guessing
    one is hopeless and failed attempts need no throttle."""
    if not value:
        return None
    if len(value) < SECRET_KEY_MIN_LENGTH:
        raise ConfigurationError(f"{variable} must be at least {SECRET_KEY_MIN_LENGTH} characters, got {len(value)}: "
                                 "set random characters, e.g. the output of `openssl rand -hex 32`")
    return value


def _base_url(value: str, variable: str = "AMPLITUDE_BASE_URL") -> str | None:
    """A base URL replacing a peer's host (tests, demos, self-hosted peers); None when unset."""
    if not value:
        return None
    if _unreadable(value) or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname:
        raise ConfigurationError(f"{variable} must be an http(s) URL, e.g. http://127.0.0.1:18080, "
                                 f"got {mask_url(value)!r}")
    return value.rstrip("/")


# Query parameters that carry a secret in a connection URL (libpq's `password`, and the usual others).
_SECRET_PARAMETERS = frozenset({"password", "passwd", "pass", "pwd", "sslpassword", "secret", "token", "api_key",
                                "apikey", "key"})


def mask_url(url: str) -> str:
    """`url` with its password (`user:***@`) and every secret-carrying query parameter (`password=***`)
    masked: the one way a database or Redis URL is shown, in logs, errors and `bridge config`.

    A malformed URL is masked too: where urlsplit finds no `user:password@` part (a missing `//`, as in
    `redis//:pw@host`), everything from the first `:` up to the last `@` is hidden."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL urlsplit can read: show nothing after the scheme
        return url.partition("://")[0] + "://***"
    if password:
        url = url.replace(f":{password}@", ":***@", 1)
    elif not parts.netloc and parts.scheme != "sqlite":  # SQLite's URL holds a path, which may hold an @
        url = re.sub(r"(?<=:)[^@]*(?=@[^@]*$)", "***", url, count=1)
    if parts.query:
        masked = "&".join(f"{name}=***" if name.lower() in _SECRET_PARAMETERS else f"{name}={value}" if sep else name
                          for name, sep, value in (pair.partition("=") for pair in parts.query.split("&")))
        url = url.replace(f"?{parts.query}", f"?{masked}", 1)
    return url


class _Reader:
    """Reads one variable at a time, raising ConfigurationError with a one-line message naming it."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def text(self, name: str) -> str:
        return (self.env.get(name) or "").strip()

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        """One of `choices`, read case-insensitively and returned as `choices` spells it; `default` when unset."""
        raw = self.text(name)
        if not raw:
            return default
        for choice in choices:
            if raw.strip().lower() == choice.lower():
                return choice
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")

    def number(self, name: str, default: float, *, low: float | None = None, high: float | None = None) -> float:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
        if low is not None and value < low:
            raise ConfigurationError(f"{name} must be >= {low}, got {raw!r}")
        if high is not None and value > high:
            raise ConfigurationError(f"{name} must be <= {high}, got {raw!r}")
        return value

    def integer(self, name: str, default: int, *, low: int | None = None, high: int | None = None) -> int:
        raw = self.text(name)
        if not raw:
            return default
        bounds = (f" between {low} and {high}" if low is not None and high is not None
                  else f" >= {low}" if low is not None else f" <= {high}" if high is not None else "")
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(f"{name} must be a whole number{bounds}, got {raw!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigurationError(f"{name} must be a whole number{bounds}, got {raw!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name).lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigurationError(f"{name} must be true or false, got {raw!r}")
