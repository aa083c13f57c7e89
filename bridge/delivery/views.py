"""GET /v1/apps/<app_id>/deliveries/stats."""
from __future__ import annotations

from flask import Blueprint, g

from bridge.apps.models import App
from bridge.apps.auth import require_token
from bridge.delivery.stats import delivery_stats

bp = Blueprint("delivery", __name__)


@bp.get("/v1/apps/<app_id>/deliveries/stats")
@require_token("api")
def stats(app_id: str):
    return delivery_stats(g.db, g.db.get(App, app_id))
