"""Erasure on request: removing what the bridge holds of one person (one External User ID of one app)."""
