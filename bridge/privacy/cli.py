"""`bridge users erase`: erasure on request, from the command line."""
from __future__ import annotations

import click

from bridge.apps.models import App
from bridge.commands import Context, echo_json, pass_ctx
from bridge.privacy.schemas import ErasureSchema
from bridge.privacy.service import InvalidExternalId, clean_external_id, erase_user


@click.group()
def users() -> None:
    """The people behind the External User IDs: erasure on request."""


@users.command("erase")
@click.option("--app", "app_id", required=True, help="The app whose records of the user are erased.")
@click.argument("external_id")
@pass_ctx
def erase(ctx: Context, app_id: str, external_id: str) -> None:
    """Remove what the app holds of EXTERNAL_ID (channel records, outbox events, cohort memberships, tags,
    catalog entries naming them) in one transaction, and print what was removed, as the API answers it.
    Running it again prints zeros. Zeros mean nothing is held under exactly EXTERNAL_ID (case-sensitive):
    a mistyped id prints zeros too. An id starting with '-' goes after '--'."""
    try:
        cleaned = clean_external_id(external_id)
    except InvalidExternalId as exc:
        raise click.BadParameter(str(exc), param_hint="EXTERNAL_ID") from None
    with ctx.runtime.session() as session:
        if session.get(App, app_id) is None:
            raise click.ClickException(f"no app with id {app_id}")
        erased = erase_user(session, app_id, cleaned)
        session.commit()
    echo_json(ErasureSchema().dump({"removed": erased}))
