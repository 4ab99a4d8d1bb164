"""The adaptive concurrency limit: attempts in flight to a service, at most a limit learned from the upstream's latency.

A fixed bulkhead is a guess that is wrong as soon as the upstream changes. This stage sizes the limit as Netflix's
concurrency-limits does: while the upstream keeps up, more calls in flight do not make an answer slower; past its
capacity they queue there and every answer takes longer. The limit follows the latency of the answers:

    gradient2   Netflix's Gradient2: the limit is scaled by ``tolerance * long / short`` (the long-run average
                latency over the recent one, at most 1) and gets a small queue on top; smoothed.
    vegas       TCP Vegas: the queue at the upstream is estimated as ``limit * (1 - no_load / recent)``; the limit
                grows while it is below ``alpha``, shrinks above ``beta``.
    aimd        additive increase, multiplicative decrease: +1 while the latency stays below twice the lowest seen
                and nothing is dropped, x0.9 otherwise.

Latencies are gathered in sample windows (at least ``MIN_SAMPLES`` answers, and ``MIN_WINDOW`` seconds or the
last window's mean latency, whichever is longer) and each
window's mean updates the limit once. A timeout, a connection failure, a 429 or a 503 is a *drop*: the limit shrinks.
A window in which fewer than half the limit were in flight never grows it (the caller, not the upstream, bounded it).

An attempt over the limit is refused at once with ``ConcurrencyLimitedError`` (``retry_in``: the recent latency over
the limit, when a slot is likely to free), or
a critical call waits up to ``max_wait`` for a slot, handed over first come, first served (the bulkhead's queue,
``_slots.py``).
Criticality (``_criticality.py``): a sheddable call never waits, never takes a slot while a critical call waits, and
is refused once three quarters of the limit are in flight, so the last quarter stays for critical calls.

The limit holds per process (``scope: "process"``), or for the fleet of workers sharing the state backend's Redis
(``scope: "fleet"``, ``_state/concurrency.py``): there one limit is learned from every worker's answers, and each
worker admits up to its share of it.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._config import ConcurrencyConfig
from ._criticality import sheddable
from ._outcome import NO_VERDICT, UPSTREAM_FAILURES, Kind, Outcome, Reason, Rejection
from ._slots import SlotQueue

if TYPE_CHECKING:
    from ._stage import CallView

MIN_SAMPLES = 10  # answers in a sample window at least
MIN_WINDOW = 0.05  # seconds a sample window lasts at least
SHEDDABLE_SHARE = 0.75  # sheddable calls are refused once this share of the limit is in flight
DROP_STATUSES = frozenset({429, 503})  # answers that say "too much": the limit shrinks as for a timeout


def latency_verdict(outcome: Outcome) -> bool | None:
    """What an attempt says of the upstream's capacity: ``True``, a drop (a timeout, a failed connection, a 429 or
    503: too much), ``False`` (an answer whose latency is a sample), or ``None`` (nothing: cancelled, refused here)."""
    kind = outcome.kind
    if kind in NO_VERDICT:
        return None
    return kind in UPSTREAM_FAILURES or (kind is Kind.RESPONSE and outcome.status in DROP_STATUSES)


class Algorithm:
    """How one sample window moves the limit."""

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        raise NotImplementedError


class Gradient2(Algorithm):
    """Netflix's Gradient2 update (concurrency-limits ``Gradient2Limit``): the limit is scaled by
    ``tolerance * long / short``, clamped to [0.5, 1], a small queue is added and the result smoothed.

    Five choices differ from Netflix's defaults, so that the limit settles near the upstream's capacity rather
    than half as high again: the tolerance is 1.0 (not 1.5); the queue added is 0.25 (not 4: the limit settles
    about that far past the point where latency starts to grow, and grows by 0.1 a window while it does not); the
    smoothing is 0.4 (not 0.2: the limit reaches the capacity within seconds); the long-run latency falls half way
    to a lower recent one at once and rises only over ``LONG_WINDOW`` windows (Netflix's average drifts up under
    sustained overload, which lets the limit creep up with it; falling all the way would chase the lowest window's
    noise, and the limit would sink below the capacity); and the limit is halved for ``PROBE_WINDOWS`` windows
    after ``PROBE_FIRST`` busy windows, then every ``PROBE_EVERY`` (as Netflix's first Gradient limit probes), so
    that a limit that started above the capacity sees the latency of an upstream that is not queueing, and comes
    down to it. The numbers were chosen on row 21 (benchmarks/_adaptive.py: a fleet of 4 and one process).
    """

    TOLERANCE = 1.0
    SMOOTHING = 0.4
    FALL = 0.5  # how far the long-run latency falls towards a lower window's at once
    QUEUE = 0.25  # added to the scaled limit: how far past the capacity the limit settles, and how fast it grows
    LONG_WINDOW = 600
    PROBE_EVERY = 40  # each probe costs the upstream half its load for three windows: not too often
    PROBE_FIRST = 5  # the first probe comes sooner: a limit that started above the capacity never saw an idle upstream
    PROBE_WINDOWS = 3  # the first window's answers queued before the probe, the second's behind them; the third's not

    def __init__(self) -> None:
        self.long: float | None = None
        self._probed = False
        self._busy = 0  # busy windows since the last probe
        self._probe = 0  # windows of the probe left
        self._before = 0.0  # the limit the probe halved

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        if self.long is None:
            self.long = rtt
        elif rtt < self.long:
            self.long += (rtt - self.long) * self.FALL
        else:
            self.long += (rtt - self.long) / self.LONG_WINDOW
        if self._probe:
            self._probe -= 1
            if self._probe:
                return limit
            limit = self._before  # the probe is over: from the limit before it, against the latency it saw
        if dropped:
            return max(1.0, limit * 0.9)
        if in_flight < limit / 2:
            return limit  # limited by the caller: nothing learned
        self._busy += 1
        if self._busy >= (self.PROBE_EVERY if self._probed else self.PROBE_FIRST) and limit >= 4:
            self._busy = 0
            self._probe = self.PROBE_WINDOWS
            self._probed = True
            self._before = limit
            return limit / 2
        gradient = max(0.5, min(1.0, self.TOLERANCE * self.long / rtt))
        queue = self.QUEUE
        new = limit * gradient + queue
        return limit * (1 - self.SMOOTHING) + new * self.SMOOTHING


class Vegas(Algorithm):
    """TCP Vegas as concurrency-limits' ``VegasLimit``: alpha 3, beta 6 (times log10 of the limit)."""

    def __init__(self) -> None:
        self.no_load: float | None = None

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        if self.no_load is None or rtt < self.no_load:
            self.no_load = rtt
        step = max(1.0, math.log10(limit))
        if dropped:
            return limit - step
        if in_flight < limit / 2:
            return limit
        queue = limit * (1 - self.no_load / rtt)
        if queue <= 3 * step:
            return limit + step
        if queue >= 6 * step:
            return limit - step
        return limit


class Aimd(Algorithm):
    """Additive increase, multiplicative decrease: +1 per busy window, x0.9 on a drop or on a latency twice the
    lowest seen. Like gradient2 it probes: it halves the limit for two windows every 20 busy ones, to see the latency
    of an upstream that is not queueing."""

    BACKOFF = 0.9
    PROBE_EVERY = 20
    PROBE_WINDOWS = 2

    def __init__(self) -> None:
        self.no_load: float | None = None
        self._busy = 0
        self._probe = 0
        self._before = 0.0

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        if self.no_load is None or rtt < self.no_load:
            self.no_load = rtt
        if self._probe:
            self._probe -= 1
            if self._probe:
                return limit
            limit = self._before
        if dropped or rtt > 2 * self.no_load:
            return limit * self.BACKOFF
        if in_flight < limit / 2:
            return limit
        self._busy += 1
        if self._busy >= self.PROBE_EVERY and limit >= 4:
            self._busy = 0
            self._probe = self.PROBE_WINDOWS
            self._before = limit
            return limit / 2
        return limit + 1


ALGORITHMS: dict[str, Callable[[], Algorithm]] = {"gradient2": Gradient2, "vegas": Vegas, "aimd": Aimd}


class ConcurrencyLimit(SlotQueue):
    """An attempt stage: at most ``limit`` attempts of a service in flight, the limit learned from latency."""

    report_key = "concurrency"  # its snapshot's place in a health report's ``adaptive``

    def __init__(self, config: ConcurrencyConfig, *, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self._algorithm = ALGORITHMS[config.algorithm]()
        self.limit = float(config.initial)
        self.slots = config.initial  # attempts this process admits at once: the limit, whole (a fleet's: a share)
        self.in_flight = 0
        self.rtt = 0.0  # the last window's mean latency (a refusal's retry_in is this over the slots)
        self._lock = threading.Lock()
        self._waiters: deque[threading.Event] = deque()
        self._window_start = clock()
        self._samples = 0
        self._total = 0.0
        self._peak = 0
        self._dropped = False

    def admit(self, call: CallView) -> Any:
        shed = sheddable()
        with self._lock:
            limit = self.slots
            waits = call.waits if self.config.max_wait else None
            wake = waits.wake_event(self) if waits is not None else None
            if waits is not None and self._handed(waits, wake):
                return self._took()
            room = (max(1, int(limit * SHEDDABLE_SHARE)) if limit else 0) if shed else limit
            if wake is None and self.in_flight < room and not (shed and self._waiters):
                self.in_flight += 1
                return self._took()
            left = waits.left(self, self.config.max_wait) if waits is not None and not shed else 0.0
            if left <= 0:
                if waits is not None:
                    self._leave(call)
                who = "sheddable call: " if shed else ""
                detail = f"{who}{self.in_flight} attempts in flight, the adaptive limit is {limit}"
                return Rejection(Reason.CONCURRENCY_LIMITED, self.retry_in(), detail)
            return self._wait(waits, wake, left)  # type: ignore[arg-type]

    def retry_in(self) -> float:
        """When a refused call may find a slot: the calls in flight end over about one latency, so the next slot
        frees in about the latency over the slots (not a whole latency: a caller that waits that long leaves the
        slots others free idle meanwhile)."""
        return self.rtt / max(1, self.slots)

    def _took(self) -> bool:
        if self.in_flight > self._peak:
            self._peak = self.in_flight
        return True

    def record(self, permit: Any, outcome: Outcome, seconds: float) -> None:
        verdict = latency_verdict(outcome)
        with self._lock:
            self._hand_over()
            if verdict is not None:
                self._learn(verdict, seconds)

    def _learn(self, dropped: bool, seconds: float) -> None:
        # Lock held. One attempt's verdict (a drop, or a latency sample), into this process's window.
        if dropped:
            self._dropped = True
        else:
            self._samples += 1
            self._total += seconds
        now = self._clock()
        if (self._samples >= MIN_SAMPLES and now - self._window_start >= MIN_WINDOW) or (
            self._dropped and now - self._window_start >= MIN_WINDOW
        ):
            self._update(now)

    def _update(self, now: float) -> None:
        rtt = self._total / self._samples if self._samples else max(self.rtt, 1e-6)
        config = self.config
        new = self._algorithm.update(self.limit, max(rtt, 1e-6), self._peak, self._dropped)
        self.limit = min(float(config.max), max(float(config.min), new))
        self.slots = max(1, int(self.limit))
        self.rtt = rtt
        self._window_start = now
        self._samples = 0
        self._total = 0.0
        self._peak = self.in_flight
        self._dropped = False
        self._let_in()

    def _let_in(self) -> None:
        while self._waiters and self.in_flight < self.slots:  # a grown limit lets waiting calls in
            self.in_flight += 1
            self._waiters.popleft().set()

    def release(self, permit: Any) -> None:
        with self._lock:
            self._hand_over()

    def _hand_over(self) -> None:
        # A freed slot goes to the longest-waiting call while the limit has room for it (a shrunk limit does not).
        if self._waiters and self.in_flight <= self.slots:
            self._waiters.popleft().set()
        else:
            self.in_flight -= 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "limit": int(self.limit),
            "in_flight": self.in_flight,
            "waiting": len(self._waiters),
            "latency": round(self.rtt, 4),
        }

    def clear(self) -> None:
        """Start learning again from ``initial`` (``registry.reset``)."""
        with self._lock:
            self.limit = float(self.config.initial)
            self.slots = self.config.initial
            self._algorithm = ALGORITHMS[self.config.algorithm]()

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self._waiters = deque()
        self._peak = 0
