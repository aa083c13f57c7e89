"""bridge: a OneSignal-style messaging platform <-> Amplitude bridge."""
