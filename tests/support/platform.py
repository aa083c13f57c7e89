"""The local messaging platform (bridge.platforms.server) as the tests use it: the app and key they
configure, and a clock they move by hand so arrival times are exact without sleeping."""
from __future__ import annotations

APP_ID = "5eb5a37e-b458-11e3-ac11-000c2940e62c"  # a OneSignal app id (a UUID)
API_KEY = "os_v2_app_test-key"  # the app's API key, as the server is told to accept it
OTHER_APP_ID = "0f2c1bde-5b8c-4a4e-9d3c-1a2b3c4d5e6f"


class ManualClock:
    """A clock for PlatformServer(clock=...): seconds that move only when the test says."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
