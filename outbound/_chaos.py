"""Fault injection for game days and tests: which fault, if any, an attempt of a service meets.

A service gets a ``Chaos`` only when its settings have a ``chaos`` section *and* the process allows injection
(``OUTBOUND_CHAOS=1``, or the top-level ``chaos: {"allow": true}``); the settings parser refuses ``enabled: true``
without the allow switch. The faults themselves are made by a transport layer *below* the policy
(``_backends/_chaos.py``): retries, the breaker, hedges and deadlines see an injected fault exactly as they see one
from the network, and an injected fault never reaches the upstream.

What is injected now is the settings' faults (``enabled: true``), or an override set at run time — by the fleet's
game-day switch (``outbound chaos NAME ...``, through the shared state) or by the ``outbound_chaos`` pytest fixture.
An override carries its own end on ``time.monotonic``, so it stops on time in every process even when nobody turns
it off. ``draw()`` is the only call on the attempt path: with nothing to inject it reads one attribute.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ._config import ChaosConfig, FaultConfig

logger = logging.getLogger("outbound.chaos")

# Marks every injected fault: the status response's header, the text of the errors raised.
INJECTED_HEADER = "x-outbound-injected"
INJECTED_TEXT = "injected by outbound chaos"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosState:
    """What a service injects now (for health reports, the status page and the CLI)."""

    active: bool
    source: str  # "settings", "fleet", "test" or "" when nothing is injected
    faults: tuple[FaultConfig, ...]
    ends_in: float | None  # seconds until an override ends by itself; None: no end set (or nothing injected)
    injected: Mapping[str, int]  # faults injected so far, by kind
    drawn: int  # attempts that drew (injected or not) while something was to be injected

    def as_dict(self) -> dict[str, object]:
        return {
            "active": self.active,
            "source": self.source,
            "faults": [
                {"kind": f.kind, "rate": f.rate, "status": f.status, "retry_after": f.retry_after, "seconds": f.seconds}
                for f in self.faults
            ],
            "ends_in": None if self.ends_in is None else round(self.ends_in, 3),
            "injected": dict(self.injected),
        }


class _Plan:
    """Faults with their cumulative bands on [0, 1), and when the plan ends (``None``: never)."""

    __slots__ = ("bands", "ends_at", "faults", "source")

    def __init__(self, faults: Sequence[FaultConfig], ends_at: float | None, source: str) -> None:
        self.faults = tuple(faults)
        bands: list[tuple[float, FaultConfig]] = []
        bound = 0.0
        for fault in self.faults:
            bound += fault.rate
            bands.append((bound, fault))
        self.bands = tuple(bands)
        self.ends_at = ends_at
        self.source = source


class Chaos:
    """One service's fault injection (see the module's docstring). Thread-safe: ``draw`` takes no lock unless it
    injects."""

    def __init__(
        self,
        name: str,
        config: ChaosConfig,
        *,
        draw: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._random = draw
        self._clock = clock
        self._settings = _Plan(config.faults, None, "settings") if config.enabled and config.faults else None
        self._plan: _Plan | None = self._settings
        self._lock = threading.Lock()
        self._injected: dict[str, int] = {}
        self._drawn = 0
        if self._settings is not None:
            logger.warning("fault injection is ON for service %r (chaos.enabled)", name, extra=_extra(name))

    def draw(self) -> FaultConfig | None:
        """The fault this attempt meets, or ``None``: send it for real."""
        plan = self._plan
        if plan is None:
            return None
        if plan.ends_at is not None and self._clock() >= plan.ends_at:
            self._expire(plan)
            return self.draw()
        self._drawn += 1  # approximate under threads: a report, not a decision
        value = self._random()
        for bound, fault in plan.bands:
            if value < bound:
                with self._lock:
                    self._injected[fault.kind] = self._injected.get(fault.kind, 0) + 1
                logger.debug(
                    "injected a %s fault into a call to service %r",
                    fault.kind,
                    self.name,
                    extra={**_extra(self.name), "outbound_fault": fault.kind},
                )
                return fault
        return None

    def override(self, faults: Sequence[FaultConfig], seconds: float | None, *, source: str) -> None:
        """Inject ``faults`` instead of the settings' for ``seconds`` (``None``: until ``restore``)."""
        ends_at = None if seconds is None else self._clock() + seconds
        self._plan = _Plan(faults, ends_at, source) if faults else None
        logger.warning(
            "fault injection is ON for service %r (%s: %s%s)",
            self.name,
            source,
            ", ".join(f"{f.kind} at {f.rate:g}" for f in faults) or "nothing",
            "" if seconds is None else f", for {seconds:g}s",
            extra=_extra(self.name),
        )

    def restore(self) -> None:
        """End any override: back to what the settings say."""
        plan = self._plan
        if plan is not None and plan is not self._settings:
            self._expire(plan)

    @property
    def overridden_by(self) -> str:
        """The source of the override in force (``""``: none)."""
        plan = self._plan
        return plan.source if plan is not None and plan is not self._settings else ""

    def state(self) -> ChaosState:
        plan = self._plan
        if plan is not None and plan.ends_at is not None and self._clock() >= plan.ends_at:
            self._expire(plan)
            plan = self._plan
        with self._lock:
            injected = dict(self._injected)
        ends_in = None
        if plan is not None and plan.ends_at is not None:
            ends_in = max(0.0, plan.ends_at - self._clock())
        return ChaosState(
            active=plan is not None,
            source=plan.source if plan is not None else "",
            faults=plan.faults if plan is not None else (),
            ends_in=ends_in,
            injected=injected,
            drawn=self._drawn,
        )

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()

    def _expire(self, plan: _Plan) -> None:
        with self._lock:
            if self._plan is not plan:
                return
            self._plan = self._settings
        logger.warning(
            "fault injection (%s) ended for service %r",
            plan.source,
            self.name,
            extra=_extra(self.name),
        )


def _extra(name: str) -> dict[str, object]:
    return {"outbound_service": name, "outbound_injected": True}


def fault(
    kind: str, rate: float = 1.0, *, status: int = 503, retry_after: float | None = None, seconds: float = 0.5
) -> FaultConfig:
    """One fault, validated as the settings parser validates ``chaos.faults`` (raises ``ConfigError``)."""
    from ._config import parse_config

    entry: dict[str, object] = {"kind": kind, "rate": rate, "status": status, "seconds": seconds}
    if retry_after is not None:
        entry["retry_after"] = retry_after
    config = parse_config(
        {"services": {"s": {"base_url": "http://x.invalid/", "chaos": {"faults": [entry]}}}}
    ).services["s"]
    assert config.chaos is not None
    return config.chaos.faults[0]
