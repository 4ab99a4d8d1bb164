"""The client-side rate limit stage: ``rate_limit: {"rate": "100/second", ...}`` (the ``limits`` library's syntax).

Every attempt takes one permit (a retry is one more request to the upstream). Without a permit a call waits for the
next one when it comes within ``max_wait`` (and before the call's deadline); otherwise it is refused at once with
``RateLimitedError`` naming when the next permit comes — it never waits only to fail.

Permits are counted as attempts are admitted, before they wait for a pooled connection; calls that queued there
would then reach the upstream bunched (up to twice the rate in a second). So the rate limit is also a send gate
(``_stage.py``): as the request is written, with its connection in hand, it is spaced so that no more than the rate
go out in any window from this process (a second ``_MovingWindow``). The window it spaces them over is a little
longer than the limit's (by ``SEND_MARGIN``: 1 % and 20 ms), so that a request's trip to the upstream may vary that
much without two windows' requests arriving in one. The wait this adds is short — the time the pool wait bunched it
by — and is not counted against ``max_wait`` (the call has its permit); only a deadline it would cross refuses it.

- ``scope: "process"``: an exact moving window of the times the last N permits were taken (``_MovingWindow``: never
  more than N in any window, O(1) a permit, at most N times kept). limits' own moving window (used before) inserts
  each hit at the front of a list of up to N entries and builds an object per hit: 16 us a permit at 1,000 entries,
  59 us and 43 MB at 300,000 (a daily quota).
- ``scope: "fleet"``: permits leased from the fleet's Redis in batches (``_state/lease.py``): a call spends one of
  this process's lease, and only a lease spent or expired costs a round trip; never more than the limit across the
  fleet in any window, on Redis's clock. When Redis fails, the limit holds per process until it answers again (one
  WARNING), so a call is never refused because Redis is away.

The windows read ``time.monotonic``: a wall-clock step changes nothing. ``limits`` parses the rate.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from limits import RateLimitItem, parse

from ._config import RateLimitConfig, StateConfig
from ._outcome import Outcome, Reason, Rejection, Wait
from ._state._notice import SharesNotice
from .health import RateLimitSnapshot

if TYPE_CHECKING:
    from ._stage import CallView
    from ._state.lease import LeasedPermits


# The shortest wait handed out: a permit "due now" may be a clock tick away.
_MIN_WAIT = 0.001
# How much longer than the limit's window requests are spaced over as they are written: a share of the window and
# seconds, for the variation of a request's trip to the upstream (a new connection, a busy server, the network).
SEND_MARGIN = (0.01, 0.02)
# Seconds between tries of the fleet's Redis while it fails (the limit holds per process meanwhile).
_RETRY_REDIS_AFTER = 5.0


class RateLimit(SharesNotice):
    """A policy stage of every attempt: one permit each."""

    def __init__(
        self,
        service: str,
        config: RateLimitConfig,
        *,
        state: StateConfig | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self.item: RateLimitItem = parse(config.rate)
        window = float(self.item.get_expiry())
        # Real time, not the policy's clock: a call waits for its permit in real time (a test's fake clock that
        # stood still would make max_wait never run out).
        self._taken = _MovingWindow(self.item.amount, window, time.monotonic)
        self._sent = _MovingWindow(self.item.amount, window * (1 + SEND_MARGIN[0]) + SEND_MARGIN[1], time.monotonic)
        self._fleet: LeasedPermits | None = None
        self._fleet_down_until = 0.0  # monotonic: while Redis failed lately, the limit holds per process
        self._fleet_error: type[Exception] = Exception
        # An outage is one WARNING for the process, naming state.url, whichever fleet user meets it first
        # (``SharesNotice``: the fleet backend's attach hands its notice).
        self._state = state
        if config.scope == "fleet" and state is not None:
            from ._state.lease import FleetUnreachable, LeasedPermits  # only a fleet limit imports redis

            margin = window * SEND_MARGIN[0] + SEND_MARGIN[1]
            self._fleet = LeasedPermits(state, service, self.item.amount, window, margin)
            self._fleet_error = FleetUnreachable

    # -- the stage ---------------------------------------------------------------------------------------------

    def admit(self, call: CallView) -> Any:
        wait = self._take()
        if wait is None:
            return None
        wait = max(_MIN_WAIT, wait)
        if self.config.max_wait and wait <= call.waits.left(self, self.config.max_wait):
            return Wait(wait)
        return Rejection(Reason.RATE_LIMITED, wait, f"{self.config.rate} reached; the next permit comes in {wait:.3f}s")

    def at_send(self, call: CallView, permit: Any) -> Rejection | Wait | None:
        wait = self._sent.take()
        if wait is None:
            return None
        left = call.waits.before_deadline()
        if left is None or wait <= left:  # bounded by the deadline only
            return Wait(wait)
        return Rejection(Reason.RATE_LIMITED, wait, f"{self.config.rate} reached at the upstream; no time left to wait")

    def record(self, permit: Any, outcome: Outcome, seconds: float) -> None:
        pass

    def release(self, permit: Any) -> None:
        pass  # a permit is spent when taken, as the upstream's own limit counts a request we started

    # -- reading ----------------------------------------------------------------------------------------------

    def snapshot(self) -> RateLimitSnapshot:
        remaining = self._taken.remaining() if self._fleet is None else None
        return RateLimitSnapshot(rate=self.config.rate, scope=self.config.scope, remaining=remaining)

    def reset(self) -> None:
        """Forget the permits taken (``registry.reset``); a fleet's shared window is left to expire."""
        self._taken.clear()

    def close(self) -> None:
        """Close a fleet limit's connection to Redis (nothing to close for a process limit)."""
        if self._fleet is not None:
            self._fleet.close()

    def reset_after_fork(self) -> None:
        # The parent's permits are not this process's, and a parent thread may have held a window's lock.
        self._taken = self._taken.fresh()
        self._sent = self._sent.fresh()
        self._own_notice = None  # a forked child says its own
        if self._fleet is not None:
            self._fleet.reset_after_fork()

    # -- permits ----------------------------------------------------------------------------------------------

    def _take(self) -> float | None:
        """``None`` and a permit taken, or the seconds until the window has room again (0.0 when it said a moment
        ago: a refusal all the same)."""
        if self._fleet is not None and time.monotonic() >= self._fleet_down_until:
            try:
                taken = self._fleet.take()
            except self._fleet_error as error:
                self._redis_failed(error)
            else:
                self._redis_answered()
                return None if taken else self._fleet.next_in()
        return self._taken.take()

    def _redis_failed(self, error: Exception) -> None:
        # Look again only every few seconds: each try while Redis is away costs up to state.timeout. Meanwhile the
        # limit holds per process (the notice's WARNING says so).
        self._fleet_down_until = time.monotonic() + _RETRY_REDIS_AFTER
        self._notice().failed(str(error))

    def _redis_answered(self) -> None:
        if self._fleet_down_until:
            self._fleet_down_until = 0.0
            self._notice().answered()


class _MovingWindow:
    """When the last ``amount`` permits were taken, and how long the next must wait so that no more than ``amount``
    are taken in any ``seconds``: an exact moving window, O(1) a permit, the times of the last window kept (at most
    ``amount``: a daily quota of a million costs nothing until it is used)."""

    def __init__(self, amount: int, seconds: float, clock: Callable[[], float]) -> None:
        self.amount = amount
        self.seconds = seconds
        self._clock = clock
        self._taken: deque[float] = deque(maxlen=amount)
        self._lock = threading.Lock()

    def fresh(self) -> _MovingWindow:
        """An empty window like this one (a forked child's)."""
        return _MovingWindow(self.amount, self.seconds, self._clock)

    def take(self) -> float | None:
        """``None``, and a permit taken now; or the seconds until one can be."""
        with self._lock:
            now = self._clock()
            taken = self._leave_out(now)
            if len(taken) == self.amount:
                return taken[0] + self.seconds - now
            taken.append(now)
            return None

    def remaining(self) -> int:
        """Permits that can be taken now."""
        with self._lock:
            return self.amount - len(self._leave_out(self._clock()))

    def _leave_out(self, now: float) -> deque[float]:
        # Lock held. Let go of the times out of the window (each once: O(1) a permit taken), so that the times kept
        # are the permits of the last window, no more, and a quota's memory follows its use.
        taken, seconds = self._taken, self.seconds
        while taken and now - taken[0] >= seconds:
            taken.popleft()
        return taken

    def clear(self) -> None:
        with self._lock:
            self._taken.clear()
