"""`bridge demo` runs the whole pipeline on the embedded default (SQLite, in-process delivery thread)."""
from __future__ import annotations

from click.testing import CliRunner

from bridge.cli import main


def test_the_demo_delivers_every_resolvable_fixture_event_once():
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    assert "40 accepted, 4 skipped (no External User ID), 2 ignored" in result.output
    assert "44 duplicates, 0 accepted" in result.output
    assert "Bridge stats: 40 delivered, 0 pending, 0 dead" in result.output
    assert "Sink: 40 events ingested, 40 unique insert_ids" in result.output
    assert "In-App Message Clicked" in result.output and "SMS Pending Delivery" in result.output
