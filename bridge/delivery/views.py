"""GET /v1/apps/<app_id>/deliveries/stats."""
from __future__ import annotations

from flask import Blueprint

from bridge.apidoc import APP_ID, documented
from bridge.apps.models import App
from bridge.apps.auth import require_token
from bridge.delivery.schemas import DeliveryStatsSchema
from bridge.delivery.stats import delivery_stats
from bridge.request_scope import get_db

bp = Blueprint("delivery", __name__)


@bp.get("/v1/apps/<app_id>/deliveries/stats")
@documented("Delivery stats", answer=DeliveryStatsSchema, path=(APP_ID,))
@require_token("api")
def stats(app_id: str):
    db = get_db()
    return DeliveryStatsSchema().dump(delivery_stats(db, db.get(App, app_id)))
