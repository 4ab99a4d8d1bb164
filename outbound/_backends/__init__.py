"""Backends: the requests adapter and the httpx transports that run the shared policy."""
