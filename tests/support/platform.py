"""The messaging platform as the tests use it: the app and its key."""
from __future__ import annotations

APP_ID = "5eb5a37e-b458-11e3-ac11-000c2940e62c"  # a OneSignal app id (a UUID)
API_KEY = "os_v2_app_test-key"  # the app's API key

