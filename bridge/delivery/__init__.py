"""Delivery: the durable outbox and the pusher that drains it into Amplitude."""
