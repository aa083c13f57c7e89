"""`bridge subscriptions ...`: load the channel registry from OneSignal CSV files."""
from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import click
from sqlalchemy import select
from tqdm import tqdm

from bridge.apps.models import App
from bridge.commands import Context, echo_json, pass_ctx
from bridge.registry.importer import ImportLimits, UnreadableFile, import_subscriptions


@click.group()
def subscriptions() -> None:
    """The channel registry: one record per push token, e-mail address and phone number."""


@subscriptions.command("import")
@click.option("--app", "app_id", required=True, help="The app whose registry receives the records.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("--errors-file", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write rejected rows here as CSV: line, reason, then the row as it was "
                   "(the first IMPORT_MAX_ERRORS_FILE_ROWS of them).")
@click.option("--chunk-size", default=5000, show_default=True, type=click.IntRange(1, 100_000),
              help="Rows merged (and committed) together.")
@click.option("--quiet", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
@pass_ctx
def import_file(ctx: Context, app_id: str, file: Path, errors_file: Path | None, chunk_size: int, quiet: bool) -> None:
    """Import FILE (CSV, or gzipped CSV) in either OneSignal format: the legacy subscriptions export
    (id, identifier, device_type, notification_types, ...) or the import format (external_id, email,
    phone_number, subscription_id, subscribed, ...), told apart by the header.

    Importing again updates records and never duplicates them. Prints a JSON summary: added, updated,
    unchanged, rejected, with the first rejected rows' line numbers and reasons, and warnings naming a
    missing column that leaves records with an unknown subscription state (also written to stderr).

    What one import reads is capped (IMPORT_MAX_BYTES, IMPORT_MAX_LINE_BYTES, IMPORT_MAX_ROWS): past a
    cap the import stops, and the rows before it stay imported. Rejected rows past
    IMPORT_MAX_ERRORS_FILE_ROWS are counted, not written to the errors file.

    The exit status is 0 even when rows were rejected; it is non-zero, with one line on stderr, when the
    file cannot be read, its header is neither format, or it passes a cap.
    """
    with ctx.runtime.session() as session:
        if session.scalar(select(App.id).where(App.id == app_id)) is None:
            raise click.ClickException(f"no app with id {app_id}")
        bar = tqdm(total=file.stat().st_size, unit="B", unit_scale=True, file=sys.stderr,
                   disable=quiet or not sys.stderr.isatty(), desc=file.name)
        try:
            with errors_file.open("w", newline="", encoding="utf-8") if errors_file else nullcontext() as errors_to:
                summary = import_subscriptions(session, app_id, file, chunk_size=chunk_size, errors_to=errors_to,
                                               on_progress=lambda done: bar.update(done - bar.n),
                                               limits=ImportLimits.of(ctx.runtime.settings),
                                               checkpoint=session.commit)  # one transaction per chunk
        except UnreadableFile as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            bar.close()
    for warning in summary.warnings:
        click.echo(f"Warning: {warning['message']}", err=True)
    if summary.rejections_not_written:
        click.echo(f"Warning: {errors_file} holds the first {summary.rejected - summary.rejections_not_written:,} "
                   f"rejected rows (IMPORT_MAX_ERRORS_FILE_ROWS); {summary.rejections_not_written:,} more were "
                   "counted, not written.", err=True)
    echo_json(summary.as_dict())
