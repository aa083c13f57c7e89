"""gunicorn's server hooks for `bridge web` (`--config python:bridge.gunicorn_config`), run by gunicorn's
master process: they keep the metrics directory (PROMETHEUS_MULTIPROC_DIR, bridge/metrics.py) right as
gunicorn's processes come and go."""
from __future__ import annotations

import os
import shutil

from prometheus_client import multiprocess

from bridge.metrics import MADE_DIR_VARIABLE, multiprocess_dir


def child_exit(_server, worker) -> None:
    """A web process has exited: prometheus_client's bookkeeping for it (its counters stay in the sum)."""
    if path := multiprocess_dir():
        multiprocess.mark_process_dead(worker.pid, path)


def on_exit(_server) -> None:
    """gunicorn stops: remove the metrics directory if `bridge web` made it for this run."""
    path = multiprocess_dir()
    if path and os.environ.get(MADE_DIR_VARIABLE) == path:
        shutil.rmtree(path, ignore_errors=True)
