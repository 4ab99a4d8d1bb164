"""Client-side adaptive throttling (Google SRE, "Handling Overload"; Envoy's admission control): first attempts are
refused here, with a probability that grows as the upstream accepts fewer of them, before the breaker trips.

Over the last ``window`` seconds the stage counts ``requests`` (first attempts the caller made, refused ones
included) and ``accepts`` (those the upstream answered with neither a failure status, a 429, nor a timeout or a
connection failure). A first attempt is refused with probability

    p = max(0, (requests - k * accepts) / (requests + 1))

so a healthy upstream (accepts = requests) is never throttled, and one that accepts few keeps getting about ``k``
times what it accepts: enough to notice that it recovered. Retries are not throttled here (``retry.tokens`` and the
retry budget pool those). A critical call (``outbound.criticality``) is throttled at ``2k``, so sheddable calls go
first. Counts are kept in one-second buckets with running totals: an admission reads two numbers.
"""

from __future__ import annotations

import random as _random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._config import ThrottleConfig
from ._criticality import sheddable
from ._outcome import NO_VERDICT, Kind, Outcome, Reason, Rejection

if TYPE_CHECKING:
    from ._stage import CallView

REFUSED_STATUSES = frozenset({429})  # besides breaker.failure_statuses: the upstream did not accept the request


class Throttle:
    """An attempt stage refusing a share of first attempts while the upstream accepts few."""

    def __init__(
        self,
        config: ThrottleConfig,
        failure_statuses: frozenset[int],
        *,
        clock: Callable[[], float],
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.config = config
        self._refused = failure_statuses | REFUSED_STATUSES
        self._clock = clock
        self._random = random
        self._size = max(1, int(config.window))
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self._seconds = [-1] * self._size
        self._requests = [0] * self._size
        self._accepts = [0] * self._size
        self.requests = 0
        self.accepts = 0
        self._expired = -1  # the second expired buckets were last looked for

    def _bucket(self, second: int) -> int:
        index = second % self._size
        if self._seconds[index] != second:
            if self._seconds[index] >= 0:
                self.requests -= self._requests[index]
                self.accepts -= self._accepts[index]
            self._seconds[index] = second
            self._requests[index] = 0
            self._accepts[index] = 0
        return index

    def probability(self, critical: bool = False) -> float:
        """The share of first attempts refused now (for ``critical`` calls, or sheddable ones)."""
        k = self.config.k * (2 if critical else 1)
        return max(0.0, (self.requests - k * self.accepts) / (self.requests + 1))

    def admit(self, call: CallView) -> Any:
        if call.attempts:
            return None  # a retry: not this stage's to refuse
        with self._lock:
            second = int(self._clock())
            index = self._bucket(second)
            # Buckets older than the window are dropped as their slot comes round; one not touched since is stale.
            self._expire(second)
            p = self.probability(critical=not sheddable())  # over the requests before this one
            self._requests[index] += 1
            self.requests += 1
            if p > 0 and self._random() < p:
                return Rejection(
                    Reason.THROTTLED,
                    1.0,
                    f"the upstream accepted {self.accepts} of the last {self.requests} requests; "
                    f"{p:.0%} of first attempts are refused",
                )
            return second

    def _expire(self, second: int) -> None:
        if second == self._expired:
            return  # looked this second already
        self._expired = second
        oldest = second - self._size
        seconds = self._seconds
        for index, at in enumerate(seconds):
            if 0 <= at <= oldest:
                self.requests -= self._requests[index]
                self.accepts -= self._accepts[index]
                seconds[index] = -1
                self._requests[index] = self._accepts[index] = 0

    def record(self, permit: Any, outcome: Outcome, seconds: float) -> None:
        if permit is None:
            return
        kind = outcome.kind
        if kind in NO_VERDICT:
            self.release(permit)
            return
        if kind is Kind.RESPONSE and outcome.status not in self._refused:
            with self._lock:
                index = permit % self._size
                if self._seconds[index] == permit:
                    self._accepts[index] += 1
                    self.accepts += 1

    def release(self, permit: Any) -> None:
        """The first attempt was not sent after all (a later stage refused it, or it got no verdict): uncounted."""
        if permit is None:
            return
        with self._lock:
            index = permit % self._size
            if self._seconds[index] == permit:
                self._requests[index] -= 1
                self.requests -= 1

    report_key = "throttle"  # its snapshot's place in a health report's ``adaptive``

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._expire(int(self._clock()))  # a window nobody called in lately holds nothing, not its last counts
            return {
                "requests": self.requests,
                "accepts": self.accepts,
                "probability": round(self.probability(), 3),
                "probability_critical": round(self.probability(critical=True), 3),
            }

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
