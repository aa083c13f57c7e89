"""`bridge deliveries ...`: look at and replay what the outbox holds."""
from __future__ import annotations

from datetime import datetime

import click

from bridge import times

from bridge.apps.models import App
from bridge.commands import Context, echo_json, pass_ctx
from bridge.delivery.models import REPLAYABLE_REASONS
from bridge.delivery.replay import replay as run_replay
from bridge.delivery.schemas import DeliveryStatsSchema
from bridge.delivery.stats import delivery_stats


class Time(click.ParamType):
    """A time as the whole bridge reads one (`bridge.times.parse_time`): ISO 8601, no zone meaning UTC,
    or epoch seconds."""

    name = "time"

    def convert(self, value, param, ctx) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return times.parse_time(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.group()
def deliveries() -> None:
    """The outbox: what is pending, delivered, dead or skipped."""


@deliveries.command("stats")
@click.option("--app", "app_id", required=True)
@pass_ctx
def stats(ctx: Context, app_id: str) -> None:
    """Counts per state, with reasons, and the last error."""
    with ctx.runtime.session() as session:
        app = session.get(App, app_id)
        if app is None:
            raise click.ClickException(f"no app with id {app_id}")
        echo_json(DeliveryStatsSchema().dump(delivery_stats(session, app)))


@deliveries.command("replay")
@click.option("--app", "app_id", help="Only this app's events.")
@click.option("--since", type=Time(), help="Only events accepted at or after this time (ISO 8601, UTC unless it "
                                           "names a zone; or epoch seconds).")
@click.option("--reason", type=click.Choice(REPLAYABLE_REASONS),
              help="Only events dead for this reason; 'unresolved_user' re-resolves skipped events through the "
                   "channel registry.")
@pass_ctx
def replay(ctx: Context, app_id: str | None, since: datetime | None, reason: str | None) -> None:
    """Re-queue dead-lettered events for delivery (same insert_id: never counted twice)."""
    with ctx.runtime.session() as session:
        result = run_replay(session, app_id=app_id, since=since, reason=reason, checkpoint=session.commit)
        session.commit()  # which queues the drains
    echo_json({"requeued": result.requeued, "still_unresolved": result.still_unresolved, "apps": sorted(result.app_ids)})
