"""Reading and updating the channel registry."""
from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from bridge.registry.models import Subscription


def external_ids_for(session: Session, app_id: str, subscription_ids: Iterable[str]) -> dict[str, str]:
    """External User IDs the registry records for these subscriptions (those without one are left out)."""
    wanted = sorted(set(subscription_ids))
    found: dict[str, str] = {}
    for start in range(0, len(wanted), 900):
        chunk = wanted[start : start + 900]
        rows = session.execute(
            select(Subscription.subscription_id, Subscription.external_id).where(
                Subscription.app_id == app_id,
                Subscription.subscription_id.in_(chunk),
                Subscription.external_id.is_not(None),
            )
        )
        found.update({sub: ext for sub, ext in rows if ext})
    return found
