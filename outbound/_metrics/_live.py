"""The registries a set of gauges reports on: pool numbers, breaker states and health statuses are read when they
are asked for.

Pools, breakers and statuses change without an event for every change (a connection goes idle, an open breaker's
trial falls due, failures age out of the last minute), so the gauges read them from the services themselves.
Registries are held weakly and skipped once closed: a gauge never keeps a discarded registry, or its sockets, alive.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._registry import Registry
    from .._service import Service

BREAKER_STATES = ("closed", "open", "half-open", "isolated")


class LiveRegistries:
    """Registries that are alive and not closed; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._registries: weakref.WeakSet[Registry] = weakref.WeakSet()

    def add(self, registry: Registry) -> None:
        with self._lock:
            self._registries.add(registry)

    def reset_after_fork(self) -> None:
        """In a forked child: a new lock (a parent's thread may have held this one at the fork)."""
        self._lock = threading.Lock()

    def services(self) -> list[Service]:
        """Every service of every live registry (a service name may appear once per registry)."""
        with self._lock:
            registries = list(self._registries)  # a WeakSet must not change size while it is iterated
        return [service for registry in registries if not registry.closed for service in registry]

    def pool(self, name: str) -> tuple[int, int, int]:
        """``(in_use, idle, waiting)`` summed over the live services called ``name``."""
        in_use = idle = waiting = 0
        for service in self.services():
            if service.name == name:
                pool = service.pool()
                in_use, idle, waiting = in_use + pool.in_use, idle + pool.idle, waiting + pool.waiting
        return in_use, idle, waiting

    def states(self, name: str) -> set[str]:
        """The breaker states of the live services called ``name``, as the health report reads them (an open
        breaker whose trial is due is ``half-open``)."""
        return {service.policy.breaker.effective_state() for service in self.services() if service.name == name}

    def statuses(self, name: str) -> set[str]:
        """The health statuses of the live services called ``name``, as this process's report gives them (without a
        fleet's numbers: a gauge never waits for Redis)."""
        return {service.health().status for service in self.services() if service.name == name}

    def cache_counts(self, name: str) -> dict[str, int] | None:
        """The cache counts of the live services called ``name`` summed, or ``None`` when none has a cache."""
        total: dict[str, int] | None = None
        for service in self.services():
            layer = service.policy.cache if service.name == name else None
            if layer is not None:
                counts = layer.snapshot()
                total = total or {}
                for key, value in counts.items():
                    if isinstance(value, int):
                        total[key] = total.get(key, 0) + value
        return total
