"""`bridge cohorts ...`: apply cohorts to the messaging platform as tags, see what that would change,
and send failed tags again."""
from __future__ import annotations

import click

from bridge.apps.models import App
from bridge.cohorts import tagging
from bridge.cohorts.schemas import PlatformPlanSchema, PlatformSyncSchema
from bridge.cohorts.tagger import tag_after_commit
from bridge.commands import Context, echo_json, pass_ctx


@click.group()
def cohorts() -> None:
    """Cohorts synced from Amplitude, applied to the messaging platform as tags."""


def _app(session, app_id: str) -> App:
    app = session.get(App, app_id)
    if app is None:
        raise click.ClickException(f"no app with id {app_id}")
    return app


@cohorts.command("platform-sync")
@click.argument("app_id")
@click.argument("cohort_id")
@click.option("--enable/--disable", "enabled", required=True, help="Apply the cohort as tags, or stop.")
@click.option("--tag-key", help="The tag's key (default: amplitude_cohort_<cohort_id>).")
@pass_ctx
def platform_sync(ctx: Context, app_id: str, cohort_id: str, enabled: bool, tag_key: str | None) -> None:
    """Turn a cohort's platform tags on (its current members are queued) or off; prints its status."""
    with ctx.runtime.session() as session:
        app = _app(session, app_id)
        if enabled and app.platform is None:
            raise click.ClickException("the app has no platform: bridge apps update APP_ID --platform onesignal "
                                       "--platform-app-id ID --platform-api-key KEY")
        try:
            tagging.set_platform_sync(session, app_id, cohort_id, enabled=enabled, tag_key=tag_key)
        except tagging.PlatformSyncError as exc:
            raise click.ClickException(str(exc)) from None
        if enabled:
            tag_after_commit(session, app_id)
        session.commit()
        echo_json(PlatformSyncSchema().dump(tagging.sync_status(session, app_id, cohort_id)))


@cohorts.command("platform-plan")
@click.argument("app_id")
@click.argument("cohort_id")
@pass_ctx
def platform_plan(ctx: Context, app_id: str, cohort_id: str) -> None:
    """What turning the sync on (or its next sends) would change: counts and a sample. Sends nothing."""
    with ctx.runtime.session() as session:
        _app(session, app_id)
        echo_json(PlatformPlanSchema().dump(tagging.plan(session, app_id, cohort_id)))


@cohorts.command("platform-replay")
@click.option("--app", "app_id", help="Only this app's tags.")
@click.option("--reason", help="Only tags failed for this reason (retry_window_exceeded, conflict, rejected).")
@pass_ctx
def platform_replay(ctx: Context, app_id: str | None, reason: str | None) -> None:
    """Send failed tags again (a tag sets a value: sending it twice changes nothing)."""
    with ctx.runtime.session() as session:
        requeued, app_ids = tagging.replay(session, app_id=app_id, reason=reason)
        for app in app_ids:
            tag_after_commit(session, app)
        session.commit()
    echo_json({"requeued": requeued})
