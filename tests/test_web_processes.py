"""`bridge web` beside other servers on one machine (issue 11, item 6). gunicorn 25.1 and later listen by
default on a control socket that every gunicorn of a user shares ($XDG_RUNTIME_DIR/gunicorn.ctl, else
~/.gunicorn/gunicorn.ctl; in 25.1, gunicorn.ctl in the working directory): each `bridge web` started took
it over from the one before. `bridge web` opens none."""
from __future__ import annotations

from pathlib import Path

import httpx

from bridge.migrate import upgrade
from support.processes import ROOT, start_web


def sockets_under(*directories: Path) -> list[Path]:
    return [path for directory in directories for path in directory.rglob("*") if path.is_socket()]


def test_two_bridge_webs_on_one_machine_both_serve_and_open_no_control_socket(tmp_path):
    runtime_dir, home = tmp_path / "run", tmp_path / "home"  # where gunicorn would put its control socket
    runtime_dir.mkdir()
    home.mkdir()
    database_url = f"sqlite:///{tmp_path / 'bridge.db'}"
    upgrade(database_url)
    env = {"DATABASE_URL": database_url, "REDIS_URL": "", "AMPLITUDE_BASE_URL": "http://127.0.0.1:9",
           "XDG_RUNTIME_DIR": str(runtime_dir), "HOME": str(home)}
    first, first_url = start_web(env, tmp_path / "first.log")
    try:
        second, second_url = start_web(env, tmp_path / "second.log")  # same machine, user and working directory
        try:
            assert [httpx.get(f"{url}/healthz", timeout=5).status_code for url in (first_url, second_url)] == [200, 200]
            assert sockets_under(runtime_dir, home) == []
            assert not (ROOT / "gunicorn.ctl").exists()  # where gunicorn 25.1 put it
        finally:
            second.stop()
    finally:
        first.stop()
