"""Headless Chromium for the dashboard's browser test: Debian's `chromium` (bin/test installs it), driven
by playwright, which is never asked to download a browser of its own."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support import ROOT
from support.databases import unavailable

CHROMIUM = Path(os.environ.get("BRIDGE_TEST_CHROMIUM", "/usr/bin/chromium"))
# Headless, and quiet: no sandbox (CI runs as root), no GPU, no calls home of its own.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Screenshots and other files a test leaves for people to look at (git-ignored).
ARTIFACTS = Path(os.environ.get("BRIDGE_TEST_ARTIFACTS", ROOT / "test-artifacts"))


@contextmanager
def chromium() -> Iterator[object]:
    """A playwright Browser on Debian's Chromium; skipped without one (failed under BRIDGE_REQUIRE_SERVICES=1)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable("playwright (the test extra)", exc)
    if not CHROMIUM.exists():
        unavailable("Chromium", FileNotFoundError(f"{CHROMIUM} (bin/test installs Debian's chromium as root)"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def artifact(name: str) -> Path:
    """Where a test keeps the file `name` for people to look at: ARTIFACTS/name, its folder made."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name
