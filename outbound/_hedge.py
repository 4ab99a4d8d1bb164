"""Hedged requests (``hedge`` settings, async clients): when an attempt has not answered within a delay, send one
more alongside it and take whichever answers first.

Two pieces, each only in the pipeline of a service that hedges:

- ``HedgePlan``, one per call of a hedged method: how many hedges it may still send and the ones in flight. The
  async driver asks it for the delay, asks the call for an extra attempt each time the delay passes (the call
  admits it through the stages, without waiting), and hands the race's result back.
- ``AnsweredLatencies``, an attempt stage that admits everything and records how long answered attempts took: the
  live p95 a ``"p95"`` delay waits. Attempts, not calls: a call's duration holds its waits (backoff, a bulkhead, a
  rate limit, a pause) and its retries, which a hedge does not race; and only answered ones, so an outage of fast
  connection errors does not make every call after it a hedge.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

from ._config import HedgeConfig
from ._outcome import Kind, Outcome
from ._stats import LATENCY_WINDOW

# A live p95 needs this many recent attempts to mean anything, and is recomputed (a sort of the window) once per
# this many: a fraction of a microsecond per attempt.
P95_MINIMUM_CALLS = 20
P95_REFRESH_CALLS = 64


class Hedge:
    """An extra attempt of a call, racing the one that has not answered: the permits its stages gave."""

    __slots__ = ("permits", "started")

    def __init__(self, permits: list[Any], started: float) -> None:
        self.permits = permits
        self.started = started


class AnsweredLatencies:
    """The attempt stage behind a ``"p95"`` hedge delay (see the module's docstring)."""

    def __init__(self) -> None:
        self._seconds: deque[float] = deque(maxlen=LATENCY_WINDOW)  # append is atomic: no lock on the call's path
        self._lock = threading.Lock()
        self._p95: float | None = None
        self._since = P95_REFRESH_CALLS  # attempts recorded since the p95 was computed

    def admit(self, call: object) -> None:
        return None

    def record(self, permit: Any, outcome: Outcome, seconds: float) -> None:
        if outcome.kind is Kind.RESPONSE:
            self._seconds.append(seconds)
            self._since += 1

    def release(self, permit: Any) -> None:
        pass

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()

    def p95(self) -> float | None:
        """The p95 in seconds, at most ``P95_REFRESH_CALLS`` attempts old; ``None`` before ``P95_MINIMUM_CALLS``."""
        if self._since < P95_REFRESH_CALLS:
            return self._p95
        with self._lock:
            recent = list(self._seconds)
            if len(recent) >= P95_MINIMUM_CALLS:
                ordered = sorted(recent)
                self._p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest rank, unrounded
                self._since = 0
            return self._p95


class HedgePlan:
    """One call's hedges: ``left`` still allowed, ``sent`` so far (they do not use up ``retry.total``), and those
    whose attempts are in flight."""

    __slots__ = ("_config", "_latencies", "in_flight", "left", "sent")

    def __init__(self, config: HedgeConfig, latencies: AnsweredLatencies | None) -> None:
        self._config = config
        self._latencies = latencies
        self.left = config.max
        self.sent = 0
        self.in_flight: list[Hedge] = []

    def delay(self) -> float | None:
        """Seconds to wait for an answer before hedging, or ``None``: no hedge left, or a ``"p95"`` delay without
        enough answered attempts to know it."""
        if not self.left:
            return None
        delay = self._config.delay
        if delay == "p95":
            return self._latencies.p95() if self._latencies is not None else None
        return delay

    def add(self, permits: list[Any], started: float) -> Hedge:
        """One more hedge was admitted with ``permits``."""
        self.left -= 1
        self.sent += 1
        hedge = Hedge(permits, started)
        self.in_flight.append(hedge)
        return hedge

    def remove(self, hedge: Hedge) -> bool:
        """Take ``hedge`` out of the race; ``False`` if it was out already."""
        if hedge in self.in_flight:
            self.in_flight.remove(hedge)
            return True
        return False
