"""What one API request holds: its database session, which is its unit of work.

A view asks for the session with `get_db()` (opened on first use, so a request that needs no database
opens none); the services it calls add and flush. The app commits it once the view has returned
(`commit`, called by bridge.web), so an error at the commit is answered like the view's own (503 for
a database that went away); a view that raises leaves it uncommitted. `close` ends it in the request's
teardown, rolling back whatever was not committed. The jobs its transaction asked for are queued by
that commit (bridge.jobs.after_commit_once).
"""
from __future__ import annotations

import logging

from flask import current_app, g
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


def get_db() -> Session:
    """The request's session, opened on first use from the app's Runtime."""
    if "db" not in g:
        g.db = current_app.extensions["bridge"].sessions()
    return g.db


def commit() -> None:
    """Commit the request's session, if the request opened one. Raises the database's error."""
    if "db" in g:
        g.db.commit()


def close() -> None:
    """Close the request's session, if the request opened one (rolling back what was not committed).
    Never raises: a connection that died under the request is discarded, and the answer stands."""
    db = g.pop("db", None)
    if db is None:
        return
    try:
        db.close()
    except DBAPIError as exc:
        log.warning("closing the request's database session failed: %s", exc.orig)
