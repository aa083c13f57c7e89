"""The process-wide services built from settings: database engine, sessions, job runner, Amplitude client.

Web, worker and CLI each build one Runtime at start. RQ jobs receive only ids and find the worker's
Runtime through `current()`.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from bridge.db import limit_statements, make_engine, make_session_factory
from bridge.jobs import make_runner, session_info
from bridge.settings import Settings

_current: Runtime | None = None


class Runtime:
    def __init__(self, settings: Settings):
        # Imported here, not at the top: the httpx, cryptography and Flask they need would otherwise load in
        # the commands that build no Runtime (`bridge --help`, `config`, `db`, `web`: the CLI imports this module).
        from bridge.amplitude.client import AmplitudeClient
        from bridge.paging import Cursors

        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.amplitude = AmplitudeClient(
            timeout=settings.amplitude_timeout_seconds,
            gzip_requests=settings.delivery_gzip,
        )
        self.cursors = Cursors(settings.secret_key)
        self.runner = make_runner(settings, self)
        # Every session's commit queues the jobs its transaction asked for (bridge.jobs.after_commit_once).
        self.sessions = make_session_factory(self.engine, session_info(self.runner))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that is closed on exit (rolling back what was not committed). Its owner (a job, a
        command) commits; the services it calls only flush."""
        session = self.sessions()
        try:
            yield session
        finally:
            session.close()

    @contextmanager
    def job_session(self) -> Iterator[Session]:
        """A session for job work (cohort batches, delivery): as `session()`, but on PostgreSQL each of its
        transactions cancels a statement that runs over JOB_STATEMENT_TIMEOUT_SECONDS."""
        with self.session() as session:
            yield limit_statements(session, self.settings.job_statement_timeout_seconds)

    def close(self) -> None:
        self.runner.close()
        self.amplitude.close()
        self.engine.dispose()


def install(runtime: Runtime) -> Runtime:
    """Make `runtime` the one that RQ jobs in this process use."""
    global _current
    _current = runtime
    return runtime


def current() -> Runtime:
    """The process's Runtime, built from the environment on first use (RQ worker processes)."""
    global _current
    if _current is None:
        _current = Runtime(Settings.from_env())
    return _current
