"""Where breakers, trials and stats live: this process alone (``memory``), or a fleet sharing a Redis (``redis``).

The hot path never asks a backend anything: a call while its breaker is closed reads only local memory. Each
service gets one ``ServiceLink`` from the backend when it is built (``StateBackend.link``), handed to its breaker and
its pause as they are made: through it they tell the fleet of the rare events (a failure, a transition, a pause the
upstream asked for) and ask for the rare decisions (the fleet's half-open trial). A process alone, and a service with
``shared: false``, get ``LOCAL``, which shares nothing. Health reports ask the backend for the fleet's view. Nothing
outside ``_state/redis.py``, ``_state/lease.py`` (the fleet's rate limit), ``_state/concurrency.py`` (the fleet's
adaptive limit) and ``_state/tokens.py`` (the fleet's retry token pool) imports redis (through ``_client``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

from .._config import ServiceConfig, StateConfig
from ..health import HistorySnapshot, LastError, StateBackendHealth, StatsSnapshot

if TYPE_CHECKING:
    from .._service import Service
    from .switches import FleetSwitches


class ServiceLink(Protocol):
    """One service's link to the state its fleet shares."""

    def failure(self, cause: LastError | None) -> None:
        """A failure was counted here (``cause``: what it was); the fleet adds it up."""

    def recovered(self) -> None:
        """A success followed failures here: the fleet's failure count starts again."""

    def transition(self, new: str, reason: str, open_seconds: float, cause: LastError | None) -> None:
        """This process moved the breaker to ``new`` by its own observation (``cause``: the failure that opened
        it); tell the fleet."""

    def claim_trial(self, seconds: float) -> bool:
        """Whether this process may run a half-open trial (the fleet's slots, held ``seconds`` at most)."""

    def paused(self, seconds: float) -> None:
        """The upstream asked for a pause of ``seconds``: tell every other process."""


class _Local:
    """No fleet: every decision is this process's own."""

    def failure(self, cause: LastError | None) -> None:
        pass

    def recovered(self) -> None:
        pass

    def transition(self, new: str, reason: str, open_seconds: float, cause: LastError | None) -> None:
        pass

    def claim_trial(self, seconds: float) -> bool:
        return True

    def paused(self, seconds: float) -> None:
        pass


LOCAL: ServiceLink = _Local()


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
    history: HistorySnapshot | None = None  # merged from every live process's, when health.history keeps one


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetView:
    """What a health report needs from the fleet; ``services`` holds the shared services only."""

    workers: int
    services: Mapping[str, FleetService]


class StateBackend(Protocol):
    """The state seam a registry talks to."""

    scope: Literal["process", "fleet"]

    def link(self, config: ServiceConfig) -> ServiceLink:
        """The link of the service ``config`` describes, for its breaker and pause (``LOCAL`` if it is not shared)."""

    def attach(self, services: Mapping[str, Service]) -> None:
        """Follow the fleet for ``services`` (built with this backend's links): apply what other processes decide."""

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

    def link(self, config: ServiceConfig) -> ServiceLink:
        return LOCAL

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


def key_prefix(config: StateConfig) -> str:
    """The start of every Redis key the fleet writes: on a cluster, a hash tag (``{outbound}:breaker:api``), so
    every key of the fleet lives in one slot and every script's keys are on one node."""
    return f"{{{config.prefix}}}" if config.cluster else config.prefix


def state_backend(config: StateConfig) -> StateBackend:
    """The backend ``state.backend`` names (the settings parser checked that its extra is installed)."""
    if config.backend == "redis":
        from .redis import RedisState

        return RedisState(config)
    return MemoryState()


def switches(config: StateConfig, services: Mapping[str, Service]) -> FleetSwitches | None:
    """The fleet's game-day switches for ``services`` (``_state/switches.py``), or ``None`` when there is no fleet
    or nothing to switch (no fault layer, no observe-only protection)."""
    if config.backend != "redis" or not any(
        service.policy.chaos is not None or service.policy.would_reject is not None for service in services.values()
    ):
        return None
    from .switches import FleetSwitches

    return FleetSwitches(config, services)
