"""Messaging platforms the bridge writes to: each an adapter keeping bridge.platforms.base's contract.

    with connect("onesignal", app_id=..., api_key=...) as platform:
        outcome = platform.set_tags("user-1", {"cohort_vip": "1", "cohort_churned": ""})

A new platform is a module of its own with a Platform subclass, and its line in PLATFORMS.
"""
from __future__ import annotations

import httpx

from bridge.platforms.base import Platform
from bridge.platforms.onesignal import OneSignal

PLATFORMS: dict[str, type[Platform]] = {"onesignal": OneSignal}


def connect(name: str, *, app_id: str, api_key: str, base_url: str | None = None,
            client: httpx.Client | None = None, timeout: float = 10.0) -> Platform:
    """The adapter of the platform `name` (a key of PLATFORMS) for one of its apps; Platform.__init__
    says what the arguments are. ValueError for a platform not in PLATFORMS, or without app_id or api_key."""
    try:
        platform = PLATFORMS[name]
    except KeyError:
        raise ValueError(f"unknown platform {name!r}: one of {', '.join(sorted(PLATFORMS))}") from None
    return platform(app_id=app_id, api_key=api_key, base_url=base_url, client=client, timeout=timeout)
