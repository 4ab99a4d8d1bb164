"""A non-blocking circuit breaker on pybreaker's storage and listener protocol.

``pybreaker.CircuitBreaker.call()`` holds an RLock for the whole guarded call, which serialises every thread using
the breaker (FACTS.md). Here the HTTP call never runs under a lock: ``admit()`` reads the state from the storage
without locking, ``record_*()`` take a lock only to count and to make a transition, and the transitions themselves
are pybreaker's (``open()``, ``half_open()``, ``close()``), so its storage and ``state_change`` listeners see the
usual protocol. Half-open admits at most ``half_open_max_calls`` trial calls at once; the rest are rejected fast.

Time since opening is measured with the injectable monotonic clock; pybreaker's wall-clock ``opened_at`` is kept
for display and is the fallback when another process opened a shared breaker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import pybreaker

from ._config import BreakerConfig

# A public logger name rather than __name__ ("outbound._breaker"): users configure it, so it must not look private.
logger = logging.getLogger("outbound.breaker")

CLOSED = pybreaker.STATE_CLOSED
OPEN = pybreaker.STATE_OPEN
HALF_OPEN = pybreaker.STATE_HALF_OPEN


@dataclass(frozen=True, slots=True)
class Admission:
    """The breaker's answer to one attempt.

    ``trial`` is the half-open period the attempt holds a trial slot in (``None`` when admitted while closed).
    """

    admitted: bool
    trial: int | None = None
    retry_in: float = 0.0


ADMITTED = Admission(admitted=True)


class _TransitionListener(pybreaker.CircuitBreakerListener):
    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._breaker._on_state_change(old_state.name if old_state else None, new_state.name)


class Breaker:
    """Gate and record for one service. Thread- and task-safe; never blocks on I/O."""

    def __init__(
        self,
        service: str,
        config: BreakerConfig,
        *,
        clock: Callable[[], float],
        storage: pybreaker.CircuitBreakerStorage | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self._clock = clock
        self._storage = storage or pybreaker.CircuitMemoryStorage(CLOSED)
        self._lock = threading.Lock()
        self._opened_monotonic: float | None = None
        self._trial_period = 0
        self._trials_in_flight = 0
        self._cb = pybreaker.CircuitBreaker(
            fail_max=config.fail_max,
            reset_timeout=config.reset_timeout,
            success_threshold=config.success_threshold,
            state_storage=self._storage,
            listeners=[_TransitionListener(self)],
            name=service,
        )

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        return self._storage.state

    def effective_state(self) -> str:
        """The state the next call will meet: an open breaker whose ``reset_timeout`` has passed is ``half-open``.

        Health reports use this. The stored state changes only when a call arrives, and a health check must not
        keep reporting ``down`` after the trial is due: a load balancer that took the instance out on that 503
        would never send the traffic that lets the breaker close (Resilience4j #607).
        """
        state = self._storage.state
        if state == OPEN and self._seconds_open() >= self.config.reset_timeout:
            return HALF_OPEN
        return state

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed."""
        return self._storage.counter

    @property
    def opened_at(self) -> datetime | None:
        """Wall-clock time the breaker last opened, while it is not closed."""
        return None if self._storage.state == CLOSED else self._storage.opened_at

    def retry_in(self) -> float | None:
        """Seconds until the open breaker admits a trial call; ``None`` unless open (or once the trial is due)."""
        if self._storage.state != OPEN:
            return None
        remaining = self.config.reset_timeout - self._seconds_open()
        return remaining if remaining > 0 else None

    def admit(self) -> Admission:
        """Decide whether one attempt may be sent. Lock-free while closed."""
        state = self._storage.state
        if state == CLOSED:
            return ADMITTED
        if state == OPEN:
            retry_in = self.config.reset_timeout - self._seconds_open()
            if retry_in > 0:
                return Admission(admitted=False, retry_in=retry_in)
        with self._lock:
            state = self._storage.state
            if state == OPEN:
                if self._seconds_open() < self.config.reset_timeout:  # another thread re-opened it meanwhile
                    return Admission(admitted=False, retry_in=self.config.reset_timeout - self._seconds_open())
                self._trial_period += 1
                self._trials_in_flight = 0
                self._cb.half_open()
            elif state == CLOSED:
                return ADMITTED
            if self._trials_in_flight >= self.config.half_open_max_calls:
                return Admission(admitted=False, retry_in=0.0)
            self._trials_in_flight += 1
            return Admission(admitted=True, trial=self._trial_period)

    def record_success(self, admission: Admission) -> None:
        """The attempt got an answer that is not a failure."""
        if admission.trial is None:
            # Consecutive-failure counting: a success while closed clears the count. Read first so the common
            # case (no failures) takes no lock.
            if self._storage.counter and self._storage.state == CLOSED:
                with self._lock:
                    self._storage.reset_counter()
            return
        with self._lock:
            if not self._holds_current_trial(admission):
                return
            self._trials_in_flight -= 1
            self._storage.increment_success_counter()
            if self._storage.success_counter >= self.config.success_threshold:
                self._cb.close()

    def record_failure(self, admission: Admission) -> None:
        """The attempt failed in a way that counts against the upstream."""
        with self._lock:
            if admission.trial is not None:
                if self._holds_current_trial(admission):
                    self._trials_in_flight -= 1
                    self._cb.open()
                return
            if self._storage.state != CLOSED:
                return  # a call admitted before the breaker opened: the verdict is already in
            self._storage.increment_counter()
            if self._storage.counter >= self.config.fail_max:
                self._cb.open()

    def release(self, admission: Admission) -> None:
        """The attempt ended without a verdict on the upstream (pool timeout, cancellation): free its trial slot."""
        if admission.trial is None:
            return
        with self._lock:
            if self._holds_current_trial(admission):
                self._trials_in_flight -= 1

    def reset_after_fork(self) -> None:
        """In a forked child: new locks (a parent thread may have held them) and no trial calls in flight (a parent
        thread may have held the only slot; it will never give it back here). A new trial period makes any
        earlier grant void."""
        self._lock = threading.Lock()
        # pybreaker's own transition lock (private, pybreaker 1.x): replaced for the same reason.
        self._cb._lock = threading.RLock()
        self._trials_in_flight = 0
        self._trial_period += 1

    def _holds_current_trial(self, admission: Admission) -> bool:
        return admission.trial == self._trial_period and self._storage.state == HALF_OPEN

    def _seconds_open(self) -> float:
        if self._opened_monotonic is not None:
            return self._clock() - self._opened_monotonic
        opened_at = self._storage.opened_at
        if opened_at is None:
            return self.config.reset_timeout  # unknown: let a trial through
        return (datetime.now(timezone.utc) - opened_at).total_seconds()

    def _on_state_change(self, old: str | None, new: str) -> None:
        if new == OPEN:
            self._opened_monotonic = self._clock()
            cause = "a trial call failed" if old == HALF_OPEN else f"{self._storage.counter} consecutive failures"
            logger.warning(
                "circuit breaker for %r opened after %s; calls fail fast for %.1fs",
                self.service,
                cause,
                self.config.reset_timeout,
            )
        elif new == HALF_OPEN:
            logger.info("circuit breaker for %r half-open: admitting trial calls", self.service)
        elif new == CLOSED and old is not None and old != CLOSED:
            self._opened_monotonic = None
            logger.info("circuit breaker for %r closed: upstream recovered", self.service)
