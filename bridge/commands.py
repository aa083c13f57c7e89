"""What every `bridge` command shares: the lazily built Runtime, JSON output, and refusing to run.

The command groups (bridge/cli.py and each feature's `cli.py`) import this module; bridge/cli.py then
assembles them into the `bridge` command.
"""
from __future__ import annotations

import json
import sys
from typing import TextIO

import click
from sqlalchemy.exc import DBAPIError

from bridge import connections, logs
from bridge.runtime import Runtime, install
from bridge.settings import Settings, mask_url


class Context:
    """Builds the Runtime on first use, so `bridge --help` needs no database (and a command that does not
    use it, such as `bridge config`, connects to nothing).

    A one-off command's stdout is its result (JSON, for `| jq` and scripts), so its logs go to stderr;
    a long-running process (`bridge worker`) sets `log_stream` to stdout."""

    def __init__(self):
        self._runtime: Runtime | None = None
        self.log_stream: TextIO = sys.stderr

    @property
    def runtime(self) -> Runtime:
        """The Runtime, built on first use once the database has answered (Unreachable otherwise).
        Refuses (exit 1, one line) when the database's schema is missing or behind: every command that
        uses the database, `bridge worker` included, needs the release phase (`bridge db upgrade`)."""
        if self._runtime is None:
            settings = Settings.from_env()
            logs.configure(settings.log_level, self.log_stream, settings.log_format)
            runtime = Runtime(settings)
            try:
                _require_migrated(runtime)
            except BaseException:
                runtime.close()
                raise
            self._runtime = install(runtime)
        return self._runtime

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()


pass_ctx = click.make_pass_decorator(Context, ensure=True)


class Refusal(click.ClickException):
    """An operator's mistake the command cannot proceed with: `bridge: <message>` on stderr, exit 1."""

    def show(self, file=None) -> None:
        click.echo(f"bridge: {self.format_message()}", err=file is None, file=file)


def _require_migrated(runtime: Runtime) -> None:
    """Raise Refusal unless the database's schema is at head, or ahead (a rolled-back release: the
    older code runs on a newer schema); Unreachable if the database does not answer. This first
    connection is the command's check that the database answers."""
    from bridge import migrate  # Alembic takes a quarter of a second to import: only commands that use the database

    try:
        with runtime.engine.connect() as connection:
            state = migrate.schema_state(connection)
    except DBAPIError as exc:
        raise connections.database_unreachable(runtime.settings.database_url, exc) from None
    if not state.usable:
        raise Refusal(f"the database at {mask_url(runtime.settings.database_url)} is {state.problem()}")


def echo_json(value: object) -> None:
    """Print `value` as indented JSON on stdout (datetimes and other values as their str)."""
    click.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))
