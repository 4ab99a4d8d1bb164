"""Where breakers, trials and stats live: this process alone (``memory``), or a fleet sharing a Redis (``redis``).

The hot path never asks a backend anything: a call while its breaker is closed reads only local memory. A backend
is told of the rare events (a failure, a transition), asked for the rare decisions (the fleet's one half-open
trial), and asked by health reports for the fleet's view. Nothing outside ``_state/redis.py`` imports redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

from .._config import StateConfig
from ..health import LastError, StateBackendHealth, StatsSnapshot

if TYPE_CHECKING:
    from .._service import Service


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetBreaker:
    """A breaker's state as the fleet holds it: ``failures`` counted by every process since the last success,
    ``retry_in`` seconds until a trial (or the end of an isolation), ``opened_by`` the failure that opened it."""

    state: str
    failures: int
    retry_in: float | None
    opened_at: datetime | None
    opened_by: LastError | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetService:
    """One service across the fleet: its shared breaker, and its stats summed over live processes."""

    breaker: FleetBreaker
    stats: StatsSnapshot
    last_error: LastError | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetView:
    """What a health report needs from the fleet; ``services`` holds the shared services only."""

    workers: int
    services: Mapping[str, FleetService]


class StateBackend(Protocol):
    """The state seam a registry talks to."""

    scope: Literal["process", "fleet"]

    def attach(self, services: Mapping[str, Service]) -> None:
        """Connect the services' breakers to the backend (a fleet's failure counts, transitions, trials)."""

    def ensure_running(self) -> None:
        """Start whatever this process needs to follow the fleet (cheap when it runs already)."""

    def view(self) -> FleetView | None:
        """The fleet's breakers and summed stats, or ``None`` for a process alone, or when the backend does not
        answer (``health()`` then says so): a report is then this process's own."""

    def health(self) -> StateBackendHealth | None:
        """How this process reaches the backend (``None`` for a process alone)."""

    def isolate(self, service: str, seconds: float | None) -> None:
        """Force the service's breaker open for the fleet (once the backend answers, if it does not now)."""

    def reset(self, service: str) -> None:
        """Close the service's breaker and clear its counts and every process's stats of it, for the fleet (once the
        backend answers, if it does not now)."""

    def close(self) -> None:
        """Stop talking to the backend; leave nothing running."""


class MemoryState:
    """Each process alone: nothing to run, nothing shared (the default)."""

    scope: Literal["process", "fleet"] = "process"

    def attach(self, services: Mapping[str, Service]) -> None:
        pass

    def ensure_running(self) -> None:
        pass

    def view(self) -> FleetView | None:
        return None

    def health(self) -> StateBackendHealth | None:
        return None

    def isolate(self, service: str, seconds: float | None) -> None:
        pass

    def reset(self, service: str) -> None:
        pass

    def close(self) -> None:
        pass


def state_backend(config: StateConfig) -> StateBackend:
    """The backend ``state.backend`` names (the settings parser checked that its extra is installed)."""
    if config.backend == "redis":
        from .redis import RedisState

        return RedisState(config)
    return MemoryState()
