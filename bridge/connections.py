"""Start-up checks that the database and Redis the settings name answer, with one line saying why not.

A command that needs the database or Redis checks it before it starts its work, so a wrong port, a
database name that does not exist or a SQLite file in a missing directory reads as one line naming
the URL (password masked, `settings.mask_url`) and the driver's reason, not as a traceback.
"""
from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from bridge.db import make_engine
from bridge.settings import mask_url

# How long a start-up check waits for Redis to accept the connection and answer (s).
REDIS_CHECK_TIMEOUT_SECONDS = 5


class Unreachable(RuntimeError):
    """The database or Redis cannot be used. The message is one line: `cannot connect to <what> at <URL,
    password masked>: <the driver's reason>`."""


def check_database(url: str) -> None:
    """Open one connection to the database at `url` (a normalized DATABASE_URL) and close it; raise
    Unreachable if that fails (server down, wrong port, unknown database or role, refused password,
    SQLite file that cannot be opened)."""
    engine = make_engine(url, null_pool=True)
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        raise database_unreachable(url, exc) from None
    finally:
        engine.dispose()


def database_unreachable(url: str, exc: DBAPIError) -> Unreachable:
    """The Unreachable error for the database at `url`, from the driver's error `exc`."""
    return Unreachable(f"cannot connect to the database at {mask_url(url)}: {_one_line(exc.orig)}")


def check_redis(url: str) -> None:
    """PING Redis at `url` (REDIS_URL); raise Unreachable if it does not answer within
    REDIS_CHECK_TIMEOUT_SECONDS or refuses (wrong port, password, database number)."""
    # Imported here: the embedded mode (no REDIS_URL) never loads redis-py.
    from redis import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_connect_timeout=REDIS_CHECK_TIMEOUT_SECONDS,
                            socket_timeout=REDIS_CHECK_TIMEOUT_SECONDS)
    try:
        client.ping()
    except RedisError as exc:
        raise Unreachable(f"cannot connect to Redis at {mask_url(url)}: {_one_line(exc)}") from None
    finally:
        client.close()


def _one_line(exc: BaseException) -> str:
    """A driver's error message on one line: libpq's hint lines joined with `; `, runs of spaces folded."""
    lines = (" ".join(line.split()) for line in str(exc).splitlines())
    return "; ".join(line for line in lines if line) or type(exc).__name__
