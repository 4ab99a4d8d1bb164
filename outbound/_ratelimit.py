"""The client-side rate limit stage, on the ``limits`` library: ``rate_limit: {"rate": "100/second", ...}``.

Every attempt takes one permit (a retry is one more request to the upstream). Without a permit a call waits for the
next one when it comes within ``max_wait`` (and before the call's deadline); otherwise it is refused at once with
``RateLimitedError`` naming when the next permit comes — it never waits only to fail.

Permits are counted as attempts are admitted, before they wait for a pooled connection; calls that queued there
would then reach the upstream bunched (up to twice the rate in a second). So the rate limit is also a send gate
(``_stage.py``): as the request is written, with its connection in hand, it is spaced so that no more than the rate
go out in any window from this process (``_SendWindow``). The window it spaces them over is a little longer than
the limit's (by ``SEND_MARGIN``: 1 % and 20 ms), so that a request's trip to the upstream may vary that much without
two windows' requests arriving in one. The wait this adds is short — the time the pool wait bunched it by — and is
not counted against ``max_wait`` (the call has its permit); only a deadline it would cross refuses it.

- ``scope: "process"``: limits' moving window on its memory storage, exact (never more than N in any window), behind
  our own lock (the storage's thread-safety fix is unreleased in limits 5.8). That storage starts a timer thread on
  each hit to expire old entries — about 0.4 ms per call at low rates — so ``_QuietMemoryStorage`` turns the timer
  off and keeps only the newest N entries itself (a moving window never looks further back).
- ``scope: "fleet"``: permits leased from the fleet's Redis in batches (``_state/lease.py``): a call spends one of
  this process's lease, and only a lease spent or expired costs a round trip; never more than the limit across the
  fleet in any window, on Redis's clock. When Redis fails, the limit holds per process until it answers again (one
  WARNING), so a call is never refused because Redis is away.

limits reads ``time.time()``: a wall-clock step changes when the next permit comes by as much (never more permits
than the window allows on the memory storage).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

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


class _QuietMemoryStorage(MemoryStorage):
    """limits' memory storage without its expiry timer thread; ``trim`` keeps each key's newest entries instead."""

    def __init__(self) -> None:
        super().__init__()
        self.timer.cancel()
        self.timer.join(timeout=1.0)  # a cancelled timer ends at once: leave no thread behind

    def _MemoryStorage__schedule_expiry(self) -> None:  # the private hook every hit calls (name-mangled)
        pass

    def trim(self, key: str, keep: int) -> None:
        events = self.events.get(key)
        if events is not None and len(events) > keep:
            del events[keep:]


def _memory_storage() -> MemoryStorage:
    if hasattr(MemoryStorage, "_MemoryStorage__schedule_expiry"):
        quiet = _QuietMemoryStorage()  # no probe instance: each would start a timer thread of its own
        if hasattr(quiet, "events"):
            return quiet
    return MemoryStorage()  # a limits release that changed its internals: correct, only slower  # pragma: no cover


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
        self._wall: Callable[[], float] = time.time  # limits' clock (a test swaps it for a fake one)
        self._lock = threading.Lock()
        self._local = _memory_storage()
        self._local_limiter = MovingWindowRateLimiter(self._local)
        self._key = self.item.key_for(service)
        window = float(self.item.get_expiry())
        self._sent = _SendWindow(self.item.amount, window * (1 + SEND_MARGIN[0]) + SEND_MARGIN[1], time.monotonic)
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
        if self._hit():
            return None
        wait = max(_MIN_WAIT, self._next_permit_in())
        if self.config.max_wait and wait <= call.waits.left(self, self.config.max_wait):
            return Wait(wait)
        return Rejection(Reason.RATE_LIMITED, wait, f"{self.config.rate} reached; the next permit comes in {wait:.3f}s")

    def at_send(self, call: CallView, permit: Any) -> Rejection | Wait | None:
        wait = self._sent.wait()
        if wait <= 0:
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
        remaining = None
        if self._fleet is None:
            with self._lock:
                remaining = self._local_limiter.get_window_stats(self.item, self.service).remaining
        return RateLimitSnapshot(rate=self.config.rate, scope=self.config.scope, remaining=remaining)

    def reset(self) -> None:
        """Forget the permits taken (``registry.reset``); a fleet's shared window is left to expire."""
        with self._lock:
            self._local_limiter.clear(self.item, self.service)

    def close(self) -> None:
        """Close a fleet limit's connection to Redis (nothing to close for a process limit)."""
        if self._fleet is not None:
            self._fleet.close()

    def reset_after_fork(self) -> None:
        # The parent's hits are not this process's, and a parent thread may have held a lock of the storage.
        self._lock = threading.Lock()
        self._sent = _SendWindow(self._sent.amount, self._sent.seconds, time.monotonic)
        self._local = _memory_storage()
        self._local_limiter = MovingWindowRateLimiter(self._local)
        self._own_notice = None  # a forked child says its own
        if self._fleet is not None:
            self._fleet.reset_after_fork()

    # -- permits ----------------------------------------------------------------------------------------------

    def _hit(self) -> bool:
        if self._fleet is not None and time.monotonic() >= self._fleet_down_until:
            try:
                taken = self._fleet.take()
            except self._fleet_error as error:
                self._redis_failed(error)
            else:
                self._redis_answered()
                return taken
        with self._lock:
            taken = self._local_limiter.hit(self.item, self.service)
            if taken and isinstance(self._local, _QuietMemoryStorage):
                self._local.trim(self._key, self.item.amount)
            return taken

    def _next_permit_in(self) -> float:
        """Seconds until the window has room again."""
        if self._fleet is not None and time.monotonic() >= self._fleet_down_until:
            return self._fleet.next_in()
        with self._lock:
            reset = self._local_limiter.get_window_stats(self.item, self.service).reset_time
        return float(reset) - self._wall()

    def _redis_failed(self, error: Exception) -> None:
        # Look again only every few seconds: each try while Redis is away costs up to state.timeout. Meanwhile the
        # limit holds per process (the notice's WARNING says so).
        self._fleet_down_until = time.monotonic() + _RETRY_REDIS_AFTER
        self._notice().failed(str(error))

    def _redis_answered(self) -> None:
        if self._fleet_down_until:
            self._fleet_down_until = 0.0
            self._notice().answered()


class _SendWindow:
    """When this process's last ``amount`` requests were written, and how long the next must wait so that no more
    than ``amount`` go out in any ``seconds``: an exact moving window, O(1) per request."""

    def __init__(self, amount: int, seconds: float, clock: Callable[[], float]) -> None:
        self.amount = amount
        self.seconds = seconds
        self._clock = clock
        self._sent: deque[float] = deque(maxlen=amount)
        self._lock = threading.Lock()

    def wait(self) -> float:
        """0 (and the request counted as written now), or the seconds it must wait first."""
        with self._lock:
            now = self._clock()
            sent = self._sent
            if len(sent) == self.amount and now - sent[0] < self.seconds:
                return sent[0] + self.seconds - now
            sent.append(now)
            return 0.0
