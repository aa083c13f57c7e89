"""The `bridge` command: release, web, worker, and the operator's tools.

An operator's mistake ends any command with one line on stderr and no traceback: a bad setting as
`bridge: configuration: <the variable, its value, what is expected>` (exit code 2), a database or Redis
that cannot be reached as `bridge: cannot connect to <URL, password masked>: <reason>` (exit code 1).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from bridge import connections, logs, metrics
from bridge.apps.cli import apps
from bridge.cohorts.cli import cohorts
from bridge.commands import Context, echo_json, pass_ctx
from bridge.delivery.cli import deliveries
from bridge.jobs import QUEUES
from bridge.maintenance import prune as run_prune
from bridge.maintenance import sweep as run_sweep
from bridge.privacy.cli import users
from bridge.registry.cli import subscriptions
from bridge.settings import ConfigurationError, Settings

# A command imports the heavier modules it runs (Alembic, RQ, the local Amplitude and platform servers, the web
# app of the demo) when it runs, so that `bridge --help`, `bridge config` and the operator's quick commands start
# without them.

log = logging.getLogger(__name__)


def _database_url() -> str:
    """DATABASE_URL, normalized, once the database has answered (Unreachable otherwise)."""
    url = Settings.from_env().database_url
    connections.check_database(url)
    return url


class _Bridge(click.Group):
    """The command group, turning an operator's mistake in any command into one line on stderr."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            click.echo(f"bridge: configuration: {exc}", err=True)
            ctx.exit(2)
        except connections.Unreachable as exc:
            click.echo(f"bridge: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Bridge)
@click.pass_context
def main(ctx: click.Context) -> None:
    """bridge: messaging-platform events to Amplitude, Amplitude cohorts to channel records."""
    ctx.obj = Context()
    ctx.call_on_close(ctx.obj.close)


@main.group()
def db() -> None:
    """Database schema (run by the release phase)."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration to DATABASE_URL, and say which."""
    from bridge import migrate

    url = _database_url()
    applied = migrate.upgrade(url)
    for revision in applied:
        click.echo(f"applied {migrate.describe(url, revision)}")
    click.echo(f"database is at {migrate.head(url)}, the latest revision"
               + ("" if applied else "; nothing to apply"))


@db.command("current")
def db_current() -> None:
    """The revision DATABASE_URL is at, and whether it is the latest."""
    from bridge import migrate

    url = _database_url()
    at, latest = migrate.current(url), migrate.head(url)
    if at == latest:
        click.echo(f"{migrate.describe(url, at)}: the latest revision")
    else:
        click.echo(f"{migrate.describe(url, at)}: behind the latest, {latest}; run `bridge db upgrade`")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Take DATABASE_URL back to REVISION (e.g. 0007; `base` undoes every migration). Columns and tables
    that later revisions added are dropped, with their data."""
    from alembic.util import CommandError

    from bridge import migrate

    url = _database_url()
    try:
        reverted = migrate.downgrade(url, revision)
    except CommandError as exc:
        raise click.ClickException(f"cannot downgrade to {revision!r}: {exc}") from None
    for done in reverted:
        click.echo(f"reverted {migrate.describe(url, done)}")
    click.echo(f"database is at {migrate.describe(url, migrate.current(url))}")


def _queue_kinds(_ctx, _param, value: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(kind.strip() for kind in value.split(",") if kind.strip()))
    unknown = [kind for kind in kinds if kind not in QUEUES]
    if unknown or not kinds:
        raise click.BadParameter(f"a comma-separated list of {', '.join(QUEUES)}; got {value!r}")
    return kinds


@main.command()
@click.option("--burst", is_flag=True, help="Exit when the queues are empty (tests, one-off catch-up).")
@click.option("--queues", default="delivery,cohorts", show_default=True, callback=_queue_kinds,
              help="The queues to serve: delivery (outbox drains), cohorts (cohort batches), or both. "
                   "A worker serving both takes turns between them.")
@pass_ctx
def worker(ctx: Context, burst: bool, queues: tuple[str, ...]) -> None:
    """Run an RQ worker: drains outboxes to Amplitude, applies cohort batches, runs the sweep."""
    from bridge import worker as worker_module

    ctx.log_stream = sys.stdout
    runtime = ctx.runtime
    if runtime.settings.job_runner != "rq":
        raise click.ClickException("`bridge worker` needs REDIS_URL; without it, jobs run inside the web process")
    connections.check_redis(runtime.settings.redis_url)
    if runtime.settings.prometheus_multiproc_dir:  # its counts join the web's, on the same host
        metrics.ensure_directory(runtime.settings.prometheus_multiproc_dir)
    worker_module.run(runtime, burst=burst, queues=queues)


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--workers", type=click.IntRange(1), show_default="WEB_CONCURRENCY, or 2")
def web(host: str, workers: int | None) -> None:
    """Serve the HTTP API on $PORT: gunicorn's processes, each reading its connections with waitress, so
    slow clients hold no app thread (bridge/webserver.py). Every setting is checked here, before gunicorn
    starts, so a bad one is one line from this command rather than a traceback from each process."""
    settings = Settings.from_env()
    workers = settings.web_concurrency if workers is None else workers
    if settings.job_runner == "thread" and workers > 1:
        logs.configure(settings.log_level, sys.stdout, settings.log_format)
        log.warning("embedded mode: one web process runs the delivery thread")
        workers = 1
    args = ["gunicorn", "bridge.web:create_app()", "--bind", f"{host}:{settings.port}", "--workers", str(workers),
            "--worker-class", "bridge.webserver.BufferingWorker", "--threads", "8",
            "--worker-connections", str(settings.web_max_connections),
            "--access-logfile", "-",
            "--logger-class", "bridge.webserver.AccessLogger", "--graceful-timeout", "25",
            # gunicorn ≥ 25.1 otherwise listens on a control socket shared by every gunicorn of the user
            # ($XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl; in 25.1, gunicorn.ctl in the working
            # directory): each `bridge web` started takes it over from the one before
            "--no-control-socket"]
    if settings.metrics_token or settings.prometheus_multiproc_dir:
        # Every process writes its counts to files in one directory, which a scrape sums; the files of
        # processes no longer running are deleted now, once, before gunicorn starts its processes.
        metrics.prepare_for_web_server(settings.prometheus_multiproc_dir)
        args += ["--config", "python:bridge.gunicorn_config"]
    os.execvp(sys.executable, [sys.executable, "-m", *args])


@main.command()
@pass_ctx
def sweep(ctx: Context) -> None:
    """Queue every piece of due work the database holds (the workers also do this periodically)."""
    runtime = ctx.runtime
    if runtime.settings.job_runner == "rq":
        connections.check_redis(runtime.settings.redis_url)
    echo_json(run_sweep(runtime))


@main.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sink(args: tuple[str, ...]) -> None:
    """A local Amplitude-compatible server with fault injection (`bridge sink --help`)."""
    from bridge.amplitude.sink import main as sink_main

    sys.exit(sink_main(list(args)))


@main.command("platform-server", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def platform_server(args: tuple[str, ...]) -> None:
    """A local OneSignal-compatible user-tag server with fault injection (`bridge platform-server --help`)."""
    from bridge.platforms.server import main as server_main

    sys.exit(server_main(list(args)))


@main.command()
@click.option("--events", "events_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Event-stream JSON, an array of event objects  "
                   "[default: fixtures/onesignal-events.json, shipped with the bridge]")
def demo(events_file: Path | None) -> None:
    """Replay fixture events through the real pipeline into a local Amplitude-compatible server."""
    from bridge.demo import DEFAULT_EVENTS, print_demo

    print_demo(events_file or DEFAULT_EVENTS)


@main.command()
@click.option("--older-than-days", default=30, show_default=True, type=click.IntRange(7),
              help="Keep this much history (at least Amplitude's 7-day insert_id window).")
@pass_ctx
def prune(ctx: Context, older_than_days: int) -> None:
    """Forget old event receipts (the intake's duplicate check) and applied cohort batches' user lists,
    and the message catalog's entries no event named for MESSAGE_CATALOG_RETENTION_DAYS."""
    echo_json(run_prune(ctx.runtime, older_than_days))


@main.command("config")
def show_config() -> None:
    """Print every setting in effect, by its environment variable's name, as JSON (credentials masked)."""
    echo_json(Settings.from_env().redacted())


main.add_command(apps)
main.add_command(cohorts)
main.add_command(deliveries)
main.add_command(subscriptions)
main.add_command(users)
