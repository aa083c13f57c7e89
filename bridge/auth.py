"""Bearer-token authentication of the per-app API, checked before the body is read."""
from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from flask import current_app, g, request

from bridge import tokens
from bridge.apps.models import App
from bridge.apps.service import valid_token_digests
from bridge.errors import ApiError


def require_token(kind: str) -> Callable:
    """Decorate a view taking `app_id`: 404 for an unknown app, 401 unless the bearer token is one of
    that app's valid `kind` tokens. The app is put on `g.app` and the view's session on `g.db`."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(app_id: str, **kwargs):
            presented = _bearer()
            db = g.db = current_app.extensions["bridge"].sessions()
            app = db.get(App, app_id) if len(app_id) <= 36 else None
            if app is None:
                raise ApiError(404, "app_not_found", f"No app with id {app_id!r}.")
            if not presented or not tokens.matches(presented, valid_token_digests(db, app_id, kind)):
                which = "api_key" if kind == "api" else "cohort_token"
                raise ApiError(401, "unauthorized", f"Send this app's {which} as 'Authorization: Bearer <token>'.")
            g.app = app
            return view(app_id, **kwargs)

        return wrapped

    return decorator


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
