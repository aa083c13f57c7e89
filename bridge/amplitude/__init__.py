"""Amplitude's HTTP V2 contract: the client the pusher uses and a local compatible server."""
