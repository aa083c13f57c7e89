"""Logs a log platform parses (issue 11, item 6): LOG_FORMAT=text (key=value pairs) or json (one object
per line), for the access log and the application's lines alike, read from the real `bridge web` and
`bridge worker`. Each access line carries the request id the answer returned in X-Request-ID and the
request's measured duration."""
from __future__ import annotations

import io
import logging
import os
import re
import socket
import subprocess

import httpx
import pytest

from bridge import logs
from bridge.settings import LOG_FORMATS
from support.processes import BRIDGE, ROOT, SECRET_KEY, free_port, log_records, parse_log_line, start_web, wait_until

UNKNOWN_APP = "no-such-app"


@pytest.fixture(params=LOG_FORMATS)
def log_format(request) -> str:
    return request.param


@pytest.fixture
def web(database_url, log_format, tmp_path, request):
    """`bridge web` as the Procfile runs it, writing `log_format`: on PostgreSQL with Redis (2 processes),
    or embedded on SQLite (1 process)."""
    env = {"DATABASE_URL": database_url.replace("+psycopg", ""), "AMPLITUDE_BASE_URL": "http://127.0.0.1:9",
           "LOG_LEVEL": "INFO", "LOG_FORMAT": log_format, "REDIS_URL": ""}
    if database_url.startswith("postgresql"):
        env.update(REDIS_URL=request.getfixturevalue("redis_url"), SECRET_KEY=SECRET_KEY)
    process, url = start_web(env, tmp_path / "web.log")
    yield process, url
    process.stop()


def access_lines(process, log_format: str, request_id: str) -> list[dict]:
    """The access-log records of the request `request_id`, once there is one; every line of the output
    must parse in `log_format`, gunicorn's own lines included."""
    def written():
        records = log_records(process.output(), log_format)
        assert all({"time", "level", "logger"} <= set(record) for record in records), records
        return [r for r in records if r["logger"] == "gunicorn.access" and r.get("req") == request_id]

    wait_until(written, 5, f"the access line of {request_id}")
    return written()


def test_each_request_has_one_access_line_with_its_request_id_and_duration(web, log_format):
    process, url = web
    with httpx.Client(base_url=url, timeout=10) as client:
        answers = [client.get("/healthz", headers={"X-Request-ID": "client-chosen-1"}),
                   client.get("/healthz?probe=1"),  # no X-Request-ID: the bridge makes one up
                   client.post(f"/v1/apps/{UNKNOWN_APP}/events", json=[{"event": {}}])]
    assert [a.status_code for a in answers] == [200, 200, 401]
    assert answers[0].headers["X-Request-ID"] == "client-chosen-1"
    for answer in answers:
        request_id = answer.headers["X-Request-ID"]
        [line] = access_lines(process, log_format, request_id)
        duration = line.pop("duration_ms")
        if log_format == "text":
            duration, line["status"], line["bytes"] = float(duration), int(line["status"]), int(line["bytes"])
        # The server stops its clock once waitress has the last byte, which a loaded machine may schedule
        # after the client has read it: the client's own elapsed time bounds it, give or take 100 ms.
        assert isinstance(duration, float) and 0 < duration <= answer.elapsed.total_seconds() * 1000 + 100
        path = answer.request.url.raw_path.decode()
        assert {key: line[key] for key in ("method", "path", "status", "bytes", "remote", "ua")} == {
            "method": answer.request.method, "path": path.partition("?")[0], "status": answer.status_code,
            "bytes": len(answer.content), "remote": "127.0.0.1", "ua": f"python-httpx/{httpx.__version__}"}
        assert line.get("query") == (path.partition("?")[2] or None)


# Spellings of an erasure's path that route to it (or to werkzeug's redirect to it), each with the
# status the unknown app answers: the id must not reach the log however the path was written.
ERASURE_SPELLINGS = [("/v1/apps/{app}/users/anna%2Fk%40example.com", 401), ("/v1/apps/{app}/users/anna-k", 401),
                     ("/v1/apps/{app}/user%73/anna-k", 401), ("/v1%2Fapps/{app}/users/anna-k", 401),
                     ("/v1/apps/{app}/%75sers/anna-k", 401), ("/v1/apps/{app}//users/anna-k", 308),
                     ("/v1//apps/{app}/users//anna-k", 308)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_erasure_is_logged_without_the_external_id_however_its_path_is_spelled(web, log_format):
    """`DELETE /v1/apps/<app_id>/users/<external_id>` names a person in its path: the access line keeps
    the route, never the id, whatever escapes or doubled slashes the client wrote (the server decodes
    and routing merges them; a doubled slash is answered with a redirect whose Location holds the id)."""
    process, url = web
    host, port = url.removeprefix("http://").split(":")
    for number, (spelling, status) in enumerate(ERASURE_SPELLINGS):
        path = spelling.format(app=UNKNOWN_APP)
        with socket.create_connection((host, int(port)), timeout=5) as connection:
            connection.sendall(f"DELETE {path} HTTP/1.1\r\nHost: bridge\r\nX-Request-ID: erasure-{number}\r\n"
                               "Connection: close\r\n\r\n".encode())
            assert connection.recv(100).startswith(f"HTTP/1.1 {status}".encode()), path
        [line] = access_lines(process, log_format, f"erasure-{number}")
        assert line["path"] == f"/v1/apps/{UNKNOWN_APP}/users/(redacted)", path
    assert "anna" not in process.output()


@pytest.mark.hostile
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_request_values_cannot_forge_an_access_line_or_rewrite_the_terminal(web, log_format):
    """The path, query and User-Agent come from the client; header bytes are read as Latin-1, so a C1
    control (0x9b is a terminal's CSI) or the UTF-8 bytes of a bidi override would reach the log as sent,
    and a quote or a space could start a forged field."""
    process, url = web
    host, port = url.removeprefix("http://").split(":")
    user_agent = b'agent\xc2\x9b2J\xe2\x80\xaereversed" req=forged status=200 x="\\'
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(b'GET /healthz?probe="%0d%0a&req=forged HTTP/1.1\r\nHost: bridge\r\n'
                           b"X-Request-ID: hostile\r\nUser-Agent: " + user_agent + b"\r\nConnection: close\r\n\r\n")
        assert connection.recv(100).startswith(b"HTTP/1.1 200")
    [line] = access_lines(process, log_format, "hostile")
    assert line["ua"] == 'agent\u00c2\\x9b2J\u00e2\\x80\u00aereversed" req=forged status=200 x="\\'
    assert line["query"] == 'probe="%0d%0a&req=forged'  # as sent: percent-escapes stay
    assert int(line["status"]) == 200 and line["path"] == "/healthz"
    output = process.output()
    assert "\x9b" not in output and "\u202e" not in output and "\x80" not in output
    assert not [r for r in log_records(output, log_format) if r.get("req") == "forged"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_app_lines_carry_the_request_id_the_answer_returns(app, client, log_format):
    """The application's own lines in a request (`bridge.logs`) have `req`, the id of X-Request-ID."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.LineFormatter(log_format))
    logger = logging.getLogger("bridge.test_access_log")
    logger.addHandler(handler)
    app.add_url_rule("/_logs", "logs", lambda: logger.warning("seen %s", "it\nforged") or "")
    try:
        answers = [client.get("/_logs", headers={"X-Request-ID": "r-1"}), client.get("/_logs")]
    finally:
        logger.removeHandler(handler)
    lines = [parse_log_line(line, log_format) for line in stream.getvalue().splitlines()]
    assert [(line["req"], line["level"], line["msg"]) for line in lines] == [
        (answer.headers["X-Request-ID"], "WARNING", "seen it\\x0aforged") for answer in answers]
    assert answers[0].headers["X-Request-ID"] == "r-1"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_worker_lines_are_in_the_chosen_format(database_url, redis_url, log_format):
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY,
           "LOG_LEVEL": "INFO", "LOG_FORMAT": log_format}
    done = subprocess.run([BRIDGE, "worker", "--burst"], env={**os.environ, **env}, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    records = log_records(done.stdout, log_format)
    assert any(r["logger"].startswith("rq.") for r in records), records


@pytest.mark.parametrize("command", [["web"], ["worker"]])
def test_a_bad_log_format_stops_the_process_with_one_line(command, tmp_path):
    env = {"LOG_FORMAT": "xml", "DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}", "PORT": str(free_port()),
           "REDIS_URL": "redis://127.0.0.1:9/0", "SECRET_KEY": SECRET_KEY}
    done = subprocess.run([BRIDGE, *command], env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    [line] = done.stderr.splitlines()
    assert done.returncode != 0 and done.stdout == ""
    assert "LOG_FORMAT must be one of text, json, got 'xml'" in line


def test_the_readme_examples_are_lines_of_their_format():
    """The lines the README's Logs section shows parse in their format, the access line with its keys."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n### Logs\n", 1)[1].split("\n### ", 1)[0]
    shown = dict(re.findall(r"^```(text|json)\n(.*?)^```", section, re.DOTALL | re.MULTILINE))
    assert set(shown) == set(LOG_FORMATS)
    for log_format, block in shown.items():
        access, *others = [parse_log_line(line, log_format) for line in block.splitlines()]
        assert set(access) == {"time", "level", "logger", "method", "path", "status", "bytes", "duration_ms", "req",
                               "remote", "ua"}
        assert others and all("msg" in record for record in others)
