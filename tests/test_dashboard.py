"""The operator dashboard through Flask's test client: its login, its cookie, its CSRF checks, escaping,
and pages that show the numbers the API answers. Both databases (the `database_url` fixture)."""
from __future__ import annotations

import html
import logging
import re

from datetime import timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from bridge.dashboard.charts import waterfall
from bridge.db import utcnow
from bridge.delivery.models import OutboxEvent
from bridge.maintenance import sweep
from bridge.settings import ConfigurationError, Settings
from bridge.web import create_app
from support.factories import channel_record, cohort_batch, event_items, new_tenant

ADMIN_TOKEN = "operator-" + "k" * 40
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
def settings_env(database_url, sink):
    return {"DATABASE_URL": database_url, "JOB_RUNNER": "manual", "AMPLITUDE_BASE_URL": sink.url,
            "LOG_LEVEL": "INFO", "DELIVERY_LINGER_SECONDS": "0", "ADMIN_TOKEN": ADMIN_TOKEN,
            "SECRET_KEY": "s" * 40}


def over_https(app):
    """A test client of `app` over https, as the dashboard is served in production (its cookie is Secure)."""
    client = app.test_client()
    client.environ_base["wsgi.url_scheme"] = "https"
    return client


@pytest.fixture
def browser(app):
    return over_https(app)


def csrf_token(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def log_in(browser, token: str = ADMIN_TOKEN):
    token_field = csrf_token(browser.get("/dashboard/login").text)
    return browser.post("/dashboard/login", data={"token": token, "csrf_token": token_field})


def shown(page: str) -> dict[str, str]:
    """The numbers a page shows, by the `data-stat` of their cell, as text without thousands separators."""
    cells = re.findall(r'data-stat="([^"]+)"[^>]*>(.*?)</td>', page, flags=re.S)
    return {name: html.unescape(re.sub(r"\s+", " ", text)).strip().replace(",", "") for name, text in cells}


def test_without_an_admin_token_there_is_no_dashboard(settings_env, runtime):
    env = {k: v for k, v in settings_env.items() if k != "ADMIN_TOKEN"}
    client = create_app(env).test_client()
    for path in ("/dashboard", "/dashboard/login", "/dashboard/static/dashboard.css"):
        assert client.get(path).status_code == 404, path
    assert client.post("/dashboard/login", data={"token": ADMIN_TOKEN}).status_code == 404


def test_an_admin_token_too_short_to_be_unguessable_stops_the_start():
    with pytest.raises(ConfigurationError, match="ADMIN_TOKEN must be at least 32 characters, got 8"):
        Settings.from_env({"ADMIN_TOKEN": "12345678"})
    assert Settings.from_env({"ADMIN_TOKEN": ADMIN_TOKEN}).redacted()["ADMIN_TOKEN"] == "***"


def test_every_page_but_the_login_asks_for_it(browser, tenant):
    for path in ("/dashboard", f"/dashboard/apps/{tenant.app_id}", f"/dashboard/apps/{tenant.app_id}/cohorts/c1"):
        response = browser.get(path)
        assert (response.status_code, response.headers["Location"]) == (303, "/dashboard/login"), path


def test_the_login_sets_a_signed_cookie_that_scripts_and_other_sites_cannot_use(browser, tenant):
    response = log_in(browser)
    assert (response.status_code, response.headers["Location"]) == (303, "/dashboard")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("bridge_dashboard=")
    flags = {part.strip().split("=")[0].lower(): part for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path", "expires"} <= flags.keys()
    assert flags["samesite"].strip() == "SameSite=Lax" and flags["path"].strip() == "Path=/dashboard"
    assert ADMIN_TOKEN not in cookie
    page = browser.get("/dashboard")
    assert page.status_code == 200 and "Test app" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"


def test_a_wrong_token_is_refused_and_never_logged(browser, caplog):
    with caplog.at_level(logging.INFO):
        response = log_in(browser, "not-the-token-" + "x" * 40)
    assert response.status_code == 401 and "That is not the admin token." in response.text
    assert browser.get("/dashboard").status_code == 303
    assert "dashboard login refused" in caplog.messages
    log_in(browser)
    assert not [r for r in caplog.records if ADMIN_TOKEN in r.getMessage() or "not-the-token" in r.getMessage()]


def test_a_post_without_its_sessions_csrf_token_is_refused_and_changes_nothing(browser, app, client, tenant, runtime,
                                                                                sink):
    # the login itself: no token, or another session's
    assert browser.post("/dashboard/login", data={"token": ADMIN_TOKEN}).status_code == 400
    other = over_https(app)
    foreign = csrf_token(other.get("/dashboard/login").text)
    assert browser.post("/dashboard/login", data={"token": ADMIN_TOKEN, "csrf_token": foreign}).status_code == 400
    assert browser.get("/dashboard").status_code == 303  # still not logged in
    # a replay, by an operator who is logged in
    dead_letters(client, tenant, runtime, sink)
    log_in(browser)
    assert "Replay" in browser.get(f"/dashboard/apps/{tenant.app_id}").text  # the session's token is in the form
    path = f"/dashboard/apps/{tenant.app_id}/replay"
    for data in ({}, {"csrf_token": foreign}, {"csrf_token": "forged"}):
        response = browser.post(path, data=data)
        assert response.status_code == 400 and response.json["message"].startswith("The CSRF token"), data
    assert outbox_states(runtime) == {"dead": 2}
    # and the logout
    assert browser.post("/dashboard/logout").status_code == 400
    assert browser.get("/dashboard").status_code == 200


def test_logging_out_ends_the_session(browser):
    log_in(browser)
    page = browser.get("/dashboard").text
    response = browser.post("/dashboard/logout", data={"csrf_token": csrf_token(page)})
    assert (response.status_code, response.headers["Location"]) == (303, "/dashboard/login")
    assert browser.get("/dashboard").status_code == 303


def test_changing_the_admin_token_ends_every_session(browser, settings_env, runtime):
    log_in(browser)
    cookie = browser.get_cookie("bridge_dashboard", path="/dashboard")
    other = over_https(create_app({**settings_env, "ADMIN_TOKEN": "rotated-" + "r" * 40}))
    other.set_cookie("bridge_dashboard", cookie.value, path="/dashboard")
    assert other.get("/dashboard").status_code == 303


def test_a_session_ends_twelve_hours_after_its_login_however_often_it_is_used(browser, app):
    """Not 12 hours after its last use: a copy of the cookie taken at the login ends with it."""
    with freeze_time("2026-11-30 08:00:00") as clock:
        log_in(browser)
        copy = browser.get_cookie("bridge_dashboard", path="/dashboard").value
        thief = over_https(app)
        thief.set_cookie("bridge_dashboard", copy, path="/dashboard")
        for _ in range(11):
            clock.tick(timedelta(hours=1))
            assert browser.get("/dashboard").status_code == 200
            assert thief.get("/dashboard").status_code == 200
        clock.tick(timedelta(hours=1))
        assert browser.get("/dashboard").status_code == 303
        assert thief.get("/dashboard").status_code == 303


def test_a_secure_cookie_over_plain_http_is_explained_not_just_refused(app):
    """Over http the browser keeps the Secure session cookie to itself, so the login's POST comes without
    it: the 400 says why and what to set."""
    plain = app.test_client()
    token_field = csrf_token(plain.get("/dashboard/login").text)
    assert plain.get_cookie("bridge_dashboard", path="/dashboard").secure
    plain.delete_cookie("bridge_dashboard", path="/dashboard")  # what a browser does with it over http
    response = plain.post("/dashboard/login", data={"token": ADMIN_TOKEN, "csrf_token": token_field})
    assert response.status_code == 400
    assert "DASHBOARD_COOKIE_SECURE=false" in response.json["message"]
    assert response.json["message"].startswith("The CSRF session token is missing.")


def dead_letters(client, tenant, runtime, sink) -> None:
    """Six events sent: four delivered, two dead (Amplitude named them invalid)."""
    response = client.post(f"/v1/apps/{tenant.app_id}/events", json=event_items(6), headers=tenant.auth)
    assert response.json["accepted"] == 6
    sink.add_faults([{"status": 400, "body": {"code": 400, "error": "Invalid field values on some events",
                                             "events_with_invalid_fields": {"time": [1, 4]}}}])
    runtime.runner.run_pending()


def outbox_states(runtime) -> dict[str, int]:
    with runtime.session() as session:
        states = session.scalars(select(OutboxEvent.state)).all()
    return {state: states.count(state) for state in set(states)}


def test_the_app_page_shows_what_the_stats_api_answers(browser, client, tenant, runtime, sink):
    dead_letters(client, tenant, runtime, sink)
    client.post(f"/v1/apps/{tenant.app_id}/events", json=event_items(3, start=100), headers=tenant.auth)  # pending
    api = client.get(f"/v1/apps/{tenant.app_id}/deliveries/stats", headers=tenant.auth).json
    log_in(browser)
    page = browser.get(f"/dashboard/apps/{tenant.app_id}").text
    numbers = shown(page)
    assert numbers["pending"] == str(api["pending"]) == "3"
    assert numbers["delivered"] == str(api["delivered"]) == "4"
    assert numbers["delivered_last_hour"] == str(sum(api["delivered_last_hour"]["per_minute"])) == "4"
    assert numbers["dead.total"] == str(api["dead"]["total"]) == "2"
    assert numbers["dead.reasons.amplitude_400"] == str(api["dead"]["reasons"]["amplitude_400"])
    assert api["last_error"]["message"] in numbers["last_error"]
    assert numbers["held"] == "no" and api["held"] is None
    assert numbers["oldest_pending_at"].startswith(api["oldest_pending_at"][:16].replace("T", " "))
    assert "chart.umd.min.js" in page and "chart.umd.min.js" not in browser.get("/dashboard").text  # charts: where drawn


def test_the_replay_button_requeues_the_dead_letters_and_they_are_delivered(browser, client, tenant, runtime, sink):
    dead_letters(client, tenant, runtime, sink)
    log_in(browser)
    page = browser.get(f"/dashboard/apps/{tenant.app_id}").text
    response = browser.post(f"/dashboard/apps/{tenant.app_id}/replay",
                            data={"csrf_token": csrf_token(page), "reason": "amplitude_400"})
    assert (response.status_code, response.headers["Location"]) == (303, f"/dashboard/apps/{tenant.app_id}")
    assert "2 event(s) re-queued for delivery." in browser.get(f"/dashboard/apps/{tenant.app_id}").text
    runtime.runner.run_pending()  # the drain the replay's commit queued
    assert outbox_states(runtime) == {}
    assert client.get(f"/v1/apps/{tenant.app_id}/deliveries/stats", headers=tenant.auth).json["delivered"] == 6


def test_a_replay_with_an_unknown_reason_or_app_is_refused(browser, tenant):
    log_in(browser)
    token = csrf_token(browser.get("/dashboard").text)
    assert browser.post(f"/dashboard/apps/{tenant.app_id}/replay",
                        data={"csrf_token": token, "reason": "bogus"}).status_code == 400
    assert browser.post("/dashboard/apps/nope/replay", data={"csrf_token": token}).status_code == 404
    assert browser.get("/dashboard/apps/nope").status_code == 404
    assert browser.get(f"/dashboard/apps/{tenant.app_id}/cohorts/nope").status_code == 404


def sync_cohort(client, tenant, runtime, name: str = "Churn risk") -> None:
    """Five users in cohort c1; three of them have channel records (one with two, one unsubscribed). The
    batch is applied and the report's snapshot computed (the sweep queues it)."""
    records = [channel_record("sub-1", external_id="user-000000", notification_types=1),
               channel_record("sub-2", external_id="user-000000", notification_types=1, type="Email"),
               channel_record("sub-3", external_id="user-000001", notification_types=1),
               channel_record("sub-4", external_id="user-000002", notification_types=-2)]
    assert client.post(f"/v1/apps/{tenant.app_id}/subscriptions", json=records, headers=tenant.auth).status_code == 200
    post_batch(client, tenant, cohort_batch(5, cohort_id="c1", cohort_name=name), runtime)
    assert sweep(runtime)["cohort_reports"] == 1
    runtime.runner.run_pending()


def post_batch(client, tenant, body: dict, runtime) -> None:
    """Post a cohort webhook batch and apply it."""
    assert client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=body, headers=tenant.cohort_auth).status_code == 200
    runtime.runner.run_pending()


def refreshes_waiting(runtime) -> int:
    return sum(1 for func, _ in runtime.runner.pending if getattr(func, "__name__", None) == "refresh_report")


def test_the_cohort_page_walks_from_users_to_the_segment_with_the_reports_numbers(browser, client, tenant, runtime):
    sync_cohort(client, tenant, runtime)
    api = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1", headers=tenant.auth).json
    log_in(browser)
    page = browser.get(f"/dashboard/apps/{tenant.app_id}/cohorts/c1").text
    numbers = shown(page)
    assert numbers["users.in_cohort"] == str(api["users"]["in_cohort"]) == "5"
    assert numbers["segment_size"] == str(api["segment_size"]) == "3"
    for explanation in api["explanations"]:
        sign = "+" if explanation["delta"] > 0 else "−"
        assert numbers[f"explanations.{explanation['cause']}"] == f"{sign}{abs(explanation['delta'])}"
    assert [e["cause"] for e in api["explanations"]] == ["users_without_channel_record", "users_with_multiple_devices",
                                                          "unsubscribed_records"]
    for channel, counts in api["devices"]["by_channel"].items():
        assert numbers[f"devices.by_channel.{channel}.total"] == str(counts["total"])
    assert api["arithmetic"] in page
    assert page.count("<tr><td>") >= len(api["recent_syncs"]) == 1  # the sync history
    assert 'id="waterfall-data"' in page and "chart.umd.min.js" in page
    assert "never been applied to the platform" in page and api["platform_sync"] is None


def test_the_cohort_page_says_computing_until_the_first_report_is_computed(browser, client, tenant, runtime):
    post_batch(client, tenant, cohort_batch(5, cohort_id="c1"), runtime)  # applied; no sweep has run yet
    log_in(browser)
    page = browser.get(f"/dashboard/apps/{tenant.app_id}/cohorts/c1").text
    assert 'data-state="computing"' in page and "Computing…" in page
    assert shown(page) == {} and "waterfall-data" not in page and "chart.umd.min.js" not in page  # nothing guessed
    assert "As of" not in page
    assert sweep(runtime)["cohort_reports"] == 1
    runtime.runner.run_pending()
    page = browser.get(f"/dashboard/apps/{tenant.app_id}/cohorts/c1").text
    assert 'data-state="current"' in page and shown(page)["users.in_cohort"] == "5"


def test_the_cohort_page_shows_the_snapshot_with_its_time_and_says_when_the_cohort_changed_after_it(
        browser, client, tenant, runtime):
    start = utcnow().replace(microsecond=0)
    with freeze_time(start) as clock:
        sync_cohort(client, tenant, runtime)
        log_in(browser)
        clock.tick(30)
        post_batch(client, tenant, cohort_batch(["user-000005", "user-000006"], cohort_id="c1"), runtime)
        api = client.get(f"/v1/apps/{tenant.app_id}/cohorts/c1", headers=tenant.auth).json
        assert api["users"]["in_cohort"] == 7  # the live report
        page = browser.get(f"/dashboard/apps/{tenant.app_id}/cohorts/c1").text
        numbers = shown(page)
        assert (numbers["users.in_cohort"], numbers["segment_size"]) == ("5", "3")  # the snapshot's
        text = html.unescape(re.sub(r"<[^>]+>|\s+", " ", page))
        assert f"As of {start:%Y-%m-%d %H:%M:%S} UTC (30 s ago)" in " ".join(text.split())
        assert 'data-state="changed"' in page
        notice = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", re.search(
            r'id="stale-notice">(.*?)</p>', page, flags=re.S).group(1))).split())
        assert notice == (f"The cohort changed at {start + timedelta(seconds=30):%Y-%m-%d %H:%M:%S} UTC, after these "
                          f"numbers were read: a recompute is due at about {start + timedelta(seconds=60):%Y-%m-%d %H:%M:%S} "
                          "UTC (at most one every 60 s per cohort).")
        clock.tick(30)
        body = cohort_batch(["user-000007"], cohort_id="c1")
        assert client.post(f"/v1/apps/{tenant.app_id}/amplitude/cohorts", json=body, headers=tenant.cohort_auth).status_code == 200
        assert "a recompute is queued once the batches waiting below are applied." in " ".join(
            browser.get(f"/dashboard/apps/{tenant.app_id}/cohorts/c1").text.split())
        assert sweep(runtime)["cohort_reports"] == 0
        runtime.runner.run_pending()  # the batch is applied (the cohort changes again)
        assert sweep(runtime)["cohort_reports"] == 1
        assert "a recompute is queued." in browser.get(f"/dashboard/apps/{tenant.app_id}/cohorts/c1").text
        runtime.runner.run_pending()
        page = browser.get(f"/dashboard/apps/{tenant.app_id}/cohorts/c1").text
    assert 'data-state="current"' in page and "stale-notice" not in page
    assert shown(page)["users.in_cohort"] == "8"


def test_the_recompute_button_needs_its_csrf_token_and_queues_the_refresh(browser, client, tenant, runtime):
    sync_cohort(client, tenant, runtime)
    log_in(browser)
    path = f"/dashboard/apps/{tenant.app_id}/cohorts/c1"
    page = browser.get(path).text
    assert "Recompute now" in page
    for data in ({}, {"csrf_token": "forged"}):
        assert browser.post(f"{path}/recompute", data=data).status_code == 400
    assert refreshes_waiting(runtime) == 0
    response = browser.post(f"{path}/recompute", data={"csrf_token": csrf_token(page)})
    assert (response.status_code, response.headers["Location"]) == (303, path)
    assert "A recompute of this cohort&#39;s report is queued" in browser.get(path).text
    browser.post(f"{path}/recompute", data={"csrf_token": csrf_token(page)})
    assert refreshes_waiting(runtime) == 1  # pressed twice: queued once, and the page says so
    assert "A recompute of this cohort&#39;s report is already queued or running" in browser.get(path).text
    runtime.runner.run_pending()
    assert refreshes_waiting(runtime) == 0
    assert browser.post(f"/dashboard/apps/{tenant.app_id}/cohorts/nope/recompute",
                        data={"csrf_token": csrf_token(page)}).status_code == 404


def test_a_recompute_the_queue_cannot_take_is_said_on_the_page_not_a_server_error(browser, client, tenant, runtime,
                                                                                  monkeypatch):
    sync_cohort(client, tenant, runtime)
    log_in(browser)
    path = f"/dashboard/apps/{tenant.app_id}/cohorts/c1"
    token = csrf_token(browser.get(path).text)

    def redis_down(*args, **kwargs):  # what RQRunner.enqueue_once raises when Redis does not answer
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(runtime.runner, "enqueue_once", redis_down)
    assert browser.post(f"{path}/recompute", data={"csrf_token": token}).status_code == 303
    assert "The recompute could not be queued: the job queue did not answer." in browser.get(path).text


def test_names_from_outside_are_escaped_in_every_page(browser, client, runtime):
    tenant = new_tenant(runtime, name=SCRIPT)
    sync_cohort(client, tenant, runtime, name=f"</script>{SCRIPT}")
    log_in(browser)
    for path in ("/dashboard", f"/dashboard/apps/{tenant.app_id}", f"/dashboard/apps/{tenant.app_id}/cohorts/c1"):
        page = browser.get(path).text
        assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path
    page = browser.get(f"/dashboard/apps/{tenant.app_id}/cohorts/c1").text
    assert "</script><script>" not in page  # not even inside the chart's embedded JSON


def test_the_api_document_leaves_the_dashboards_pages_out(client):
    paths = client.get("/openapi.json").json["paths"]
    assert paths and not [path for path in paths if path.startswith("/dashboard")]


def test_the_waterfall_walks_from_the_users_to_the_segment_size():
    explanations = [{"cause": "users_without_channel_record", "delta": -3},
                    {"cause": "users_with_multiple_devices", "delta": 2}, {"cause": "unsubscribed_records", "delta": -1}]
    steps = waterfall(5, explanations, 3)
    assert [(s["label"], s["from"], s["to"], s["kind"]) for s in steps] == [
        ("Users in cohort", 0, 5, "total"), ("No channel record", 5, 2, "down"), ("Extra devices", 2, 4, "up"),
        ("Unsubscribed", 4, 3, "down"), ("Segment size", 0, 3, "total")]
    assert [(s["label"], s["to"]) for s in waterfall(4, [], 4)] == [("Users in cohort", 4), ("Segment size", 4)]
