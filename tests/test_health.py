"""GET /healthz tells the truth (the database, its schema, Redis, the live workers) within a bounded
time; GET /livez answers without touching anything; and a database the release phase has not migrated
gets one clear error from the API, the CLI and `bridge worker`, on SQLite and PostgreSQL alike."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy.exc import OperationalError

from bridge.db import CONNECT_TIMEOUT_SECONDS, make_engine


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
