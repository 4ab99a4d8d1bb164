"""The process-wide switch that turns every service's cache off in tests (``outbound.testing.no_cache``)."""

from __future__ import annotations


class CacheSwitch:
    __slots__ = ("enabled",)

    def __init__(self) -> None:
        self.enabled = True


CACHING = CacheSwitch()
