"""Real processes for end-to-end tests: gunicorn serving the web app, `bridge worker` on Redis."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from support import ROOT


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self._file = log.open("ab")
        self.popen = subprocess.Popen(args, env={**os.environ, **env}, cwd=ROOT, stdout=self._file,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def run_bridge(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `python -m bridge ARGS` with `env` laid over this process's environment; its exit code,
    stdout and stderr, as text."""
    return subprocess.run([sys.executable, "-m", "bridge", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# One key=value pair of a `LOG_FORMAT=text` line: a bare value, or a quoted one with `\"` and `\\` escapes.
_PAIR = re.compile(r'([A-Za-z_]+)=("(?:[^"\\]|\\.)*"|[^\s"=]+)(?: |$)')


def parse_log_line(line: str, log_format: str) -> dict:
    """The fields of one log line written in `log_format` (LOG_FORMAT: "text" or "json"), as a log
    platform reads them; ValueError if the line is not wholly in that format."""
    if log_format == "json":
        return json.loads(line)
    fields, at = {}, 0
    while at < len(line):
        pair = _PAIR.match(line, at)
        if pair is None or pair.group(1) in fields:
            raise ValueError(f"not a key=value line (at character {at}): {line!r}")
        value = pair.group(2)
        fields[pair.group(1)] = re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith('"') else value
        at = pair.end()
    return fields


def log_records(output: str, log_format: str) -> list[dict]:
    """Every line of a process's `output`, parsed (`parse_log_line`)."""
    return [parse_log_line(line, log_format) for line in output.splitlines()]


def bridge_cli(env: dict[str, str], *args: str) -> dict:
    """Run a `bridge` command and parse its JSON output."""
    done = run_bridge(env, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


SECRET_KEY = "test-secret-key-0123456789abcdef0123456789"  # SECRET_KEY for processes on Redis (production mode)
BRIDGE = str(Path(sys.executable).parent / "bridge")  # the console script, as the Procfile runs it


def start_web(env: dict[str, str], log: Path) -> tuple[Process, str]:
    """`bridge web`, as the Procfile's web process runs it (2 processes unless WEB_CONCURRENCY says)."""
    port = free_port()
    web = Process([BRIDGE, "web"], {"WEB_CONCURRENCY": "2", **env, "PORT": str(port)}, log)
    url = f"http://127.0.0.1:{port}"
    wait_until_answering(web, f"{url}/healthz", "the web process")
    return web, url


def wait_until_answering(process: Process, url: str, what: str, timeout: float = 30) -> None:
    """Poll `url` until it answers 200; fail at once, with its output, if `process` exits meanwhile."""

    def answers():
        if process.popen.poll() is not None:
            raise AssertionError(f"{what} exited:\n{process.output()}")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout, f"{what} to answer {url}")


def start_worker(env: dict[str, str], log: Path) -> Process:
    """`bridge worker`, as the Procfile's worker process runs it."""
    return Process([BRIDGE, "worker"], env, log)
