"""`bridge apps ...`: create apps, change their settings, rotate their tokens."""
from __future__ import annotations

import click
from sqlalchemy import select

from bridge.amplitude.regions import REGIONS
from bridge.apps.models import TOKEN_KINDS, App
from bridge.apps.service import AppConfigError, connect_platform, create_app_record, describe, rotate_token, update_app
from bridge.cohorts import tagging
from bridge.commands import Context, echo_json, pass_ctx
from bridge.delivery.scheduling import drain_after_commit
from bridge.mapping import NAMINGS


def _event_names(values: tuple[str, ...]) -> dict[str, str | None]:
    """`--event-name KIND=NAME` values: kind → event_type; `KIND=` (no name) → None, which removes it."""
    names: dict[str, str | None] = {}
    for value in values:
        kind, equals, name = value.partition("=")
        if not equals or not kind.strip():
            raise click.BadParameter(f"{value!r}: expected KIND=NAME (KIND= removes the app's name for KIND)",
                                     param_hint="--event-name")
        names[kind.strip()] = name or None
    return names


NAMING = click.option("--naming", type=click.Choice(NAMINGS), help="The naming profile of the app's Amplitude events.")
EVENT_NAME = click.option(
    "--event-name", "event_names", multiple=True, metavar="KIND=NAME",
    help="The app's own Amplitude event_type for KIND, over the profile's (repeatable); KIND= removes it.")


def _kinds(value: str | None) -> list[str] | None:
    """`--kinds k1,k2` as a list; None when the option is not given. An empty value is refused: it would
    otherwise read as "every kind"."""
    if value is None:
        return None
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    if not kinds:
        raise click.BadParameter("give kinds (k1,k2), or 'all' for every kind with a name", param_hint="--kinds")
    return kinds


def _load(session, app_id: str) -> App:
    app = session.get(App, app_id)
    if app is None:
        raise click.ClickException(f"no app with id {app_id}")
    return app


@click.group()
def apps() -> None:
    """Apps (tenants): one messaging app wired to one Amplitude project."""


@apps.command("create")
@click.option("--name", required=True)
@click.option("--amplitude-api-key", required=True, help="The Amplitude project's API key.")
@click.option("--region", type=click.Choice(sorted(REGIONS), case_sensitive=False), default="us", show_default=True)
@click.option("--kinds", help="Comma-separated event kinds to send (default: every kind with a name).")
@NAMING
@EVENT_NAME
@pass_ctx
def create(ctx: Context, name: str, amplitude_api_key: str, region: str, kinds: str | None, naming: str | None,
           event_names: tuple[str, ...]) -> None:
    """Create an app; prints app_id, api_key and cohort_token as JSON (tokens are shown only now)."""
    names = _event_names(event_names)
    with ctx.runtime.session() as session:
        try:
            app, issued = create_app_record(session, name=name, amplitude_api_key=amplitude_api_key,
                                            region=region, enabled_kinds=_kinds(kinds), naming=naming,
                                            event_names={k: v for k, v in names.items() if v is not None})
        except AppConfigError as exc:
            raise click.ClickException(str(exc)) from None
        session.commit()
        echo_json({**describe(app), "api_key": issued.api_key, "cohort_token": issued.cohort_token})


@apps.command("list")
@pass_ctx
def list_apps(ctx: Context) -> None:
    """List apps (without tokens)."""
    with ctx.runtime.session() as session:
        echo_json([describe(a) for a in session.scalars(select(App).order_by(App.created_at))])


@apps.command("update")
@click.argument("app_id")
@click.option("--name")
@click.option("--amplitude-api-key", help="A new key also releases delivery held for an invalid key.")
@click.option("--region", type=click.Choice(sorted(REGIONS), case_sensitive=False))
@click.option("--kinds", help="Comma-separated event kinds to send; 'all' for every kind with a name.")
@NAMING
@EVENT_NAME
@click.option("--platform", help="The messaging platform cohorts are applied to as tags: onesignal; 'none' disconnects.")
@click.option("--platform-app-id", help="The app's id on the platform.")
@click.option("--platform-api-key", help="The platform's API key for that app (stored; shown masked).")
@click.option("--platform-rate", type=float, help="Requests per second to the platform (default: the platform's).")
@pass_ctx
def update(ctx: Context, app_id: str, name, amplitude_api_key, region, kinds, naming, event_names, platform,
           platform_app_id, platform_api_key, platform_rate) -> None:
    """Change an app's settings. A new naming profile or event name applies to events accepted after it."""
    names = _event_names(event_names)
    with ctx.runtime.session() as session:
        app = _load(session, app_id)
        enabled = ... if kinds is None else (None if kinds == "all" else _kinds(kinds))
        try:
            update_app(session, app, name=name, amplitude_api_key=amplitude_api_key, region=region, enabled_kinds=enabled,
                       naming=naming, event_names=names)
            if platform is not None or platform_app_id or platform_api_key or platform_rate is not None:
                if platform is None and app.platform is None:
                    raise AppConfigError("--platform is required to connect the app to its platform")
                before = (app.platform, app.platform_app_id)
                connect_platform(session, app, platform=None if platform == "none" else (platform or app.platform),
                                 platform_app_id=platform_app_id, platform_api_key=platform_api_key,
                                 rate_per_second=platform_rate)
                if app.platform is not None and before[0] is not None and (app.platform, app.platform_app_id) != before:
                    # another platform app: what the old one held says nothing of it
                    tagging.forget_platform_state(session, app_id)
        except AppConfigError as exc:
            raise click.ClickException(str(exc)) from None
        if amplitude_api_key:
            drain_after_commit(session, app_id)  # delivery held for the old key resumes
        session.commit()
        echo_json(describe(app))


@apps.command("rotate-token")
@click.argument("app_id")
@click.option("--kind", type=click.Choice(TOKEN_KINDS), required=True)
@click.option("--grace-seconds", type=click.IntRange(0, 366 * 86400), default=86400, show_default=True,
              help="How long the current tokens stay valid (at most a year).")
@pass_ctx
def rotate(ctx: Context, app_id: str, kind: str, grace_seconds: int) -> None:
    """Issue a new token; the current ones keep working for the grace period, then expire."""
    with ctx.runtime.session() as session:
        _load(session, app_id)
        try:
            token = rotate_token(session, app_id, kind, grace_seconds)
        except AppConfigError as exc:
            raise click.ClickException(str(exc)) from None
        session.commit()
    echo_json({"app_id": app_id, "kind": kind, "token": token, "previous_valid_for_seconds": grace_seconds})
