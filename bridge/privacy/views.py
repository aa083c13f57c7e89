"""DELETE /v1/apps/<app_id>/users/<external_id>: erasure on request."""
from __future__ import annotations

from flask import Blueprint

from bridge.apidoc import APP_ID, documented, path_parameter
from bridge.apps.auth import require_token
from bridge.errors import ApiError
from bridge.privacy.schemas import ErasureSchema
from bridge.privacy.service import MAX_EXTERNAL_ID_LENGTH, InvalidExternalId, clean_external_id, erase_user
from bridge.request_scope import get_db

bp = Blueprint("privacy", __name__)
ERASURE = ErasureSchema()


# `any_id` (bridge.web): an External User ID may hold "/" (sent as %2F), and a bad one is a 400 naming it.
@bp.delete("/v1/apps/<app_id>/users/<any_id:external_id>")
@documented("Erase what the bridge holds of one user", answer=ErasureSchema, errors=(400,),
            path=(APP_ID, path_parameter("external_id", MAX_EXTERNAL_ID_LENGTH)))
@require_token("api")
def erase(app_id: str, external_id: str):
    """Remove the user's channel records, outbox events, cohort memberships, tags and the catalog entries
    that name them (`bridge.privacy.service.erase_user`); the same call again answers zeros. Zeros mean
    nothing is held under exactly this id (case-sensitive): a mistyped id answers zeros too."""
    try:
        cleaned = clean_external_id(external_id)
    except InvalidExternalId as exc:
        raise ApiError(400, "invalid_external_id", f"external_id: {exc}", {"external_id": [str(exc)]}) from None
    return ERASURE.dump({"removed": erase_user(get_db(), app_id, cleaned)})
