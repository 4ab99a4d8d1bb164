"""The pause stage: an upstream that answers 429 (or 503) with ``Retry-After`` pauses the whole service.

A per-caller retry that honours ``Retry-After`` still lets every other thread, task and worker hit the upstream
while it asked us to stop. Here one such answer pauses the service for what it asked (capped by
``retry.retry_after_max``) in this process, and in the fleet when the state is shared: calls meanwhile wait for the
end of the pause when it comes within ``pause.max_wait`` and before their deadline, or fail fast with
``RateLimitedError`` naming the time left. The wait is the server's, to the millisecond: no jitter shortens it.

Reading the pause costs one attribute read while there is none. With ``retry.respect_retry_after`` (the default) the
call whose answer paused the service waits the same ``Retry-After`` before its retry (``_retry.RetryRule``), so its
own pause never refuses it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._config import PauseConfig
from ._outcome import Kind, Outcome, Reason, Rejection, Wait
from ._retry import WAITS, parse_retry_after
from ._state import LOCAL, ServiceLink

if TYPE_CHECKING:
    from ._stage import CallView

# A pause with less than this left is over: the retry that waited it out must not be refused by a clock tick.
PAUSE_TOLERANCE = 0.002


class Pause:
    """A policy stage of every attempt."""

    def __init__(
        self, config: PauseConfig, *, cap: float, clock: Callable[[], float], shared: ServiceLink = LOCAL
    ) -> None:
        self.config = config
        self.cap = cap
        self.shared = shared  # the fleet's link: a pause this process started goes to every other
        self._clock = clock
        self.until = 0.0  # monotonic end of the current pause; 0.0: none
        self._lock = threading.Lock()

    def admit(self, call: CallView) -> Any:
        until = self.until
        if not until:
            return None
        left = until - self._clock()
        if left <= PAUSE_TOLERANCE:
            with self._lock:  # over: once per pause, so the next calls read one attribute again
                if self.until == until:
                    self.until = 0.0
            return None
        if self.config.max_wait and left <= call.waits.left(self, self.config.max_wait):
            return Wait(left)
        return Rejection(Reason.RATE_LIMITED, left, f"the upstream asked for a pause; {left:.1f}s left")

    def record(self, permit: Any, outcome: Outcome, seconds: float) -> None:
        if outcome.retry_after is None or outcome.kind is not Kind.RESPONSE:
            return
        if outcome.status in self.config.statuses:
            asked = parse_retry_after(outcome.retry_after)
            if asked:
                self.pause(min(asked, self.cap))

    def release(self, permit: Any) -> None:
        pass

    def pause(self, seconds: float, *, publish: bool = True) -> None:
        """Pause the service for ``seconds`` from now (a pause never ends earlier than one already running)."""
        if not WAITS.enabled:  # outbound.testing's no-waits: every Retry-After wait is zero, this one too
            return
        with self._lock:  # rare (an upstream asked for a pause): a lock keeps the later end when two race
            until = self._clock() + seconds
            if until > self.until:
                self.until = until
        if publish:
            self.shared.paused(seconds)

    def would_refuse_after(self, delay: float) -> bool:
        """Whether a retry ``delay`` seconds from now would still meet this pause, longer than it may wait."""
        if not self.until:
            return False
        paused_for = self.paused_for()
        return paused_for is not None and paused_for > delay + self.config.max_wait + PAUSE_TOLERANCE

    def paused_for(self) -> float | None:
        """Seconds left of the current pause, or ``None``."""
        until = self.until
        if not until:
            return None
        left = until - self._clock()
        return left if left > PAUSE_TOLERANCE else None

    def reset(self) -> None:
        self.until = 0.0

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
