"""GET /v1/apps/<app_id>/deliveries/stats."""
from __future__ import annotations

from flask import Blueprint

from bridge.apps.models import App
from bridge.auth import require_token
from bridge.delivery.stats import delivery_stats
from bridge.request_scope import get_db

bp = Blueprint("delivery", __name__)


@bp.get("/v1/apps/<app_id>/deliveries/stats")
@require_token("api")
def stats(app_id: str):
    db = get_db()
    return delivery_stats(db, db.get(App, app_id))
