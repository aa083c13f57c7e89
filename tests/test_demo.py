"""`bin/demo`, the README's first command, run as written: it installs the bridge into .venv, then runs
the whole pipeline on the embedded default (SQLite, in-process delivery thread)."""
from __future__ import annotations

import subprocess

import pytest

from support.processes import ROOT


@pytest.mark.slow
def test_the_demo_delivers_every_resolvable_fixture_event_once():
    done = subprocess.run(["bin/demo"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "40 accepted, 4 skipped (no External User ID), 2 ignored" in done.stdout
    assert "44 duplicates, 0 accepted" in done.stdout
    assert "Bridge stats: 40 delivered, 0 pending, 0 dead" in done.stdout
    assert "Sink: 40 events ingested, 40 unique insert_ids" in done.stdout
    assert "In-App Message Clicked" in done.stdout and "SMS Pending Delivery" in done.stdout
