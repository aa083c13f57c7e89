"""Schema migrations (Alembic). Run by the release phase, never by web or worker at boot."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

# Importing Alembic's scripts logs one line per plugin it sets up, at INFO: noise before the one line a
# command prints (the schema check runs in every process that uses the database).
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

from alembic import command  # noqa: E402 - after quieting its plugin set-up
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import Connection, create_engine, inspect, text  # noqa: E402

from bridge.shipped import shipped_dir  # noqa: E402

MIGRATIONS_DIR = shipped_dir("migrations")
VERSION_TABLE = "alembic_version"  # Alembic's default, which migrations/env.py keeps


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def _scripts(database_url: str) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(database_url))


def head(database_url: str) -> str:
    """The latest revision the code ships, e.g. `"0008"`."""
    return _scripts(database_url).get_current_head()


def current(database_url: str) -> str | None:
    """The revision the database at `database_url` is at; None when no migration was ever applied."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema stands against the migrations this code ships."""

    current: str | None  # the revision the database is at; None when no migration was ever applied
    head: str  # the latest revision the code ships
    known: bool  # whether the code ships `current` (False: a newer release migrated the database)

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    @property
    def state(self) -> str:
        """`ok` (at head), `missing` (never migrated), `behind` (an older revision: `bridge db upgrade`
        brings it to head) or `ahead` (a revision this code does not ship, e.g. after rolling back a release)."""
        if self.at_head:
            return "ok"
        if self.current is None:
            return "missing"
        return "behind" if self.known else "ahead"

    @property
    def usable(self) -> bool:
        """Whether the code can work on this database: at head, or ahead (migrations add, so the code of
        the release before runs on its schema). A missing or older schema lacks tables or columns."""
        return self.state in ("ok", "ahead")

    def problem(self) -> str:
        """What is wrong, for an operator: `not migrated (at none, latest 0008): run `bridge db upgrade``."""
        return f"not migrated (at {self.current or 'none'}, latest {self.head}): run `bridge db upgrade`"


def schema_state(connection: Connection) -> SchemaState:
    """The schema state of the database `connection` is on: Alembic's version table read by two small
    queries (quietly: Alembic's own reading logs lines at INFO); the revisions the code ships are read
    from the migration scripts once per process. Raises SQLAlchemy's DBAPIError when the database cannot
    be read."""
    current = None
    if inspect(connection).has_table(VERSION_TABLE):
        revisions = sorted(connection.scalars(text(f"SELECT version_num FROM {VERSION_TABLE}")))
        current = ",".join(revisions) or None  # one row, as this project has one head
    head, shipped = _shipped()
    return SchemaState(current=current, head=head, known=current is None or current in shipped)


def shipped_head() -> str:
    """The latest revision the code ships, as `head()` says, read from the scripts once per process."""
    return _shipped()[0]


@cache
def _shipped() -> tuple[str, frozenset[str]]:
    """The head revision and every revision of the migration scripts (they do not change while a process runs)."""
    scripts = ScriptDirectory(str(MIGRATIONS_DIR))
    return scripts.get_current_head(), frozenset(script.revision for script in scripts.walk_revisions())


def describe(database_url: str, revision: str | None) -> str:
    """`revision` with its title, e.g. `0008 (Cohort batches get a random public id, …)`; `none` for None."""
    if revision is None:
        return "none (no migration applied)"
    script = _scripts(database_url).get_revision(revision)
    title = (script.doc or "").strip().splitlines()[0] if script is not None and script.doc else ""
    return f"{revision} ({title})" if title else revision


def between(database_url: str, lower: str | None, upper: str | None) -> list[str]:
    """The revisions above `lower` up to and including `upper`, oldest first (what an upgrade from
    `lower` to `upper` applies, or a downgrade from `upper` to `lower` reverts)."""
    if upper is None or upper == lower:
        return []
    return [rev.revision for rev in reversed(list(_scripts(database_url).iterate_revisions(upper, lower or "base")))]


def upgrade(database_url: str, revision: str = "head") -> list[str]:
    """Bring the database at `database_url` to `revision` (default: the latest); returns the revisions
    applied, oldest first (empty when it was already there)."""
    before = current(database_url)
    command.upgrade(alembic_config(database_url), revision)
    return between(database_url, before, current(database_url))


def downgrade(database_url: str, revision: str) -> list[str]:
    """Take the database at `database_url` back to `revision` (`base`: before the first migration);
    returns the revisions reverted, newest first. Raises alembic's CommandError for an unknown revision."""
    before = current(database_url)
    command.downgrade(alembic_config(database_url), revision)
    return list(reversed(between(database_url, current(database_url), before)))
