"""GET /healthz tells the truth (the database, its schema, Redis, the live workers) within a bounded
time; GET /livez answers without touching anything; and a database the release phase has not migrated
gets one clear error from the API, the CLI and `bridge worker`, on SQLite and PostgreSQL alike."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy.exc import OperationalError

from bridge.db import CONNECT_TIMEOUT_SECONDS, make_engine
from bridge.migrate import shipped_head
from processes import BRIDGE, ROOT, SECRET_KEY

HEAD = shipped_head()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel completes the handshake) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


def test_a_new_postgresql_connection_gives_up_after_the_connect_timeout(silent_server):
    """A database host that accepts and never answers (or drops packets) fails the connection, instead of
    holding a request, a job or /healthz for minutes."""
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{silent_server}/bridge")
    failed = threading.Event()

    def connect():
        with pytest.raises(OperationalError):
            engine.connect()
        failed.set()

    threading.Thread(target=connect, daemon=True).start()
    assert failed.wait(CONNECT_TIMEOUT_SECONDS + 5)
    engine.dispose()


@pytest.mark.parametrize("command", [["apps", "list"], ["worker"]], ids=["bridge apps list", "bridge worker"])
def test_commands_refuse_an_unmigrated_database_in_one_line(unmigrated_database_url, redis_url, command):
    url = unmigrated_database_url.replace("postgres@", "postgres:s3cret@")  # a password, as Heroku gives
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY}
    done = subprocess.run([BRIDGE, *command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    masked = url.replace("s3cret", "***")
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", f"bridge: the database at {masked} is not migrated (at none, latest {HEAD}): run `bridge db upgrade`\n")
