"""The dashboard's login: ADMIN_TOKEN exchanged for a signed session cookie, and CSRF tokens on its forms.

- The cookie is Flask's session (signed with SECRET_KEY by itsdangerous), named `bridge_dashboard`,
  scoped to `/dashboard` (the API never sees it), `HttpOnly`, `SameSite=Lax`, `Secure` unless
  DASHBOARD_COOKIE_SECURE is false. A session ends SESSION_HOURS after its login, however much it is used
  (the login time is in the signed cookie; a copy of the cookie ends then too). It holds a fingerprint of
  ADMIN_TOKEN, not the token: changing ADMIN_TOKEN ends every session.
- Every POST of the dashboard (login, logout, replay) must carry the CSRF token of its session, checked
  by Flask-WTF's CSRFProtect; one without it, or with another session's, is a 400 and changes nothing.
- Failed logins are not throttled: ADMIN_TOKEN has at least 32 characters (settings), which no number of
  guesses finds, while a throttle keyed on the client's address would, behind a router, let anyone lock
  the operator out.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import time
from datetime import timedelta

from flask import Flask, Response, current_app, request, session
from flask_wtf.csrf import CSRFError, CSRFProtect

from bridge.settings import Settings

log = logging.getLogger(__name__)

SESSION_HOURS = 12
COOKIE_NAME = "bridge_dashboard"
# What the dashboard's pages may load: their own scripts, styles and images, nothing inline, no frames.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

# Where the app keeps the fingerprint of ADMIN_TOKEN that a logged-in session holds.
FINGERPRINT = "dashboard_login_fingerprint"
# Said when a POST came without the session cookie: the usual cause is a Secure cookie over plain http.
NO_SESSION_COOKIE = ("Your browser sent no dashboard session cookie. It is Secure unless DASHBOARD_COOKIE_SECURE=false, "
                     "and browsers send a Secure cookie only over https (or to localhost): open the dashboard over "
                     "https, or set DASHBOARD_COOKIE_SECURE=false to use it over plain http.")

csrf = CSRFProtect()


def init_app(app: Flask, settings: Settings) -> None:
    """Set up the session cookie and Flask-WTF's CSRF tokens on `app`. Only the dashboard's POSTs are
    checked (`check_csrf`): the API authenticates by bearer token, not by cookie."""
    app.secret_key = settings.secret_key
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME, SESSION_COOKIE_PATH="/dashboard", SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=settings.dashboard_cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        SESSION_REFRESH_EACH_REQUEST=False,  # the cookie's expiry stays SESSION_HOURS after the login
        WTF_CSRF_CHECK_DEFAULT=False,  # the API's POSTs are not forms: the dashboard asks for the check
        WTF_CSRF_TIME_LIMIT=None,  # a token lives as long as its session
    )
    app.extensions[FINGERPRINT] = fingerprint(settings.admin_token or "", settings.secret_key)
    csrf.init_app(app)


def check_csrf() -> None:
    """Refuse a POST whose form lacks its session's CSRF token: raises Flask-WTF's CSRFError, a 400, whose
    message says what to do when the browser sent no session cookie at all."""
    if request.method != "POST":
        return
    try:
        csrf.protect()
    except CSRFError as exc:
        if COOKIE_NAME not in request.cookies:
            exc.description = f"{exc.description} {NO_SESSION_COOKIE}"
        raise


def secure_headers(response: Response, *, page: bool) -> Response:
    """Add the dashboard's security headers to `response`; a `page` (not a static file) is never cached."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if page:
        response.headers["Cache-Control"] = "no-store"
    return response


def fingerprint(admin_token: str, secret_key: str) -> str:
    """What a session holds to show it was opened with `admin_token`: an HMAC of it under `secret_key`,
    which tells nothing of the token to whoever reads the (signed, not encrypted) cookie."""
    return hmac.new(secret_key.encode(), b"dashboard-login:" + admin_token.encode(), hashlib.sha256).hexdigest()


def log_in(presented: str) -> bool:
    """Open an operator session if `presented` is ADMIN_TOKEN (compared in constant time); a new session
    either way, so a session fixed before the login is not the one that logs in. Logs the outcome, never
    the token."""
    expected = current_app.extensions["bridge"].settings.admin_token or ""
    session.clear()
    if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
        log.warning("dashboard login refused")
        return False
    session.permanent = True
    session["operator"] = current_app.extensions[FINGERPRINT]
    session["since"] = int(time.time())
    log.info("dashboard login")
    return True


def log_out() -> None:
    session.clear()


def logged_in() -> bool:
    """Whether the request carries a session opened with the current ADMIN_TOKEN less than SESSION_HOURS ago."""
    held, since = session.get("operator"), session.get("since")
    return (isinstance(held, str) and hmac.compare_digest(held, current_app.extensions[FINGERPRINT])
            and isinstance(since, int) and 0 <= time.time() - since < SESSION_HOURS * 3600)
