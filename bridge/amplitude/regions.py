"""Amplitude's data centres: where the events of an app go, by the app's `region`."""
from __future__ import annotations

# Region → the host of its HTTP V2 API (`bridge.amplitude.client.HTTP_API_PATH` is appended).
REGIONS = {"us": "https://api2.amplitude.com", "eu": "https://api.eu.amplitude.com"}


def base_url(region: str, override: str | None = None) -> str:
    """Where the events of an app in `region` (a key of REGIONS) go: `override` when set
    (AMPLITUDE_BASE_URL: tests, proxies), else the region's host."""
    return override or REGIONS[region]
