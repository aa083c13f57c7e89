"""Schema migrations (Alembic). Run by the release phase, never by web or worker at boot."""
from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from bridge.shipped import shipped_dir

MIGRATIONS_DIR = shipped_dir("migrations")


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
