"""GET /v1/apps/<app_id>: the app as its API key sees it, with the names its events take in Amplitude."""
from __future__ import annotations

from flask import Blueprint

from bridge.apidoc import APP_ID, documented
from bridge.apps.auth import require_token
from bridge.apps.models import App
from bridge.apps.schemas import AppSchema
from bridge.apps.service import describe, vocabulary_of
from bridge.request_scope import get_db

bp = Blueprint("apps", __name__)
APP = AppSchema()


@bp.get("/v1/apps/<app_id>")
@documented("The app and its vocabulary", answer=AppSchema, path=(APP_ID,))
@require_token("api")
def show(app_id: str):
    """The app's settings and, for every kind of the stream, its event_type and whether it is sent."""
    app = get_db().get(App, app_id)
    return APP.dump({**describe(app), "kinds": vocabulary_of(app).rows()})
