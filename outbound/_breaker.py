"""The circuit breaker: a non-blocking gate that owns its state, with the trip rule as a separate object.

``pybreaker.CircuitBreaker.call()`` holds an RLock for the whole guarded call, which serialises every thread using
one breaker (16 threads against a 50 ms upstream: 19 calls/s instead of 320; pybreaker issues #3 and #55). Here the
HTTP call never runs under a lock:

- the state is a plain attribute, read without locking: a call while closed costs one attribute read;
- an open breaker refuses until one "trial due at" time (monotonic clock), then turns half-open and admits at most
  ``half_open_max_calls`` trial calls per trial period; the rest are refused at once;
- outcomes are recorded under a short lock, only to count and to make a transition;
- the trip rule — when failures open the breaker — is its own object (``ConsecutiveFailures`` here, for
  ``mode: "consecutive"``; the failure-rate and slow-call window of ``mode: "rate"`` in ``_window.py``), the Polly
  split between the circuit and its behaviour;
- a shared state backend (its ``_state.ServiceLink``, given when the breaker is made) is told of failures and
  transitions and asked for the fleet's trial slot; it is never consulted while the breaker is closed, so the hot
  path never waits on it;
- the failure that opened the breaker is kept with the opening (``opened_by``), so a report shows the upstream's
  503 behind the refusals rather than only the refusals.

pybreaker still supplies the vocabulary and the listener protocol: a breaker given a listener keeps a
``pybreaker.CircuitBreaker`` as a mirror that is moved through ``open()`` / ``half_open()`` / ``close()`` on every
transition, so ``pybreaker.CircuitBreakerListener``s added with ``Breaker.add_listener`` get their usual
``state_change`` calls with pybreaker's own state objects. The mirror is never read to decide anything, and it is
made (and pybreaker imported, with the redis client it imports) only when a listener is added.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from ._config import BreakerConfig
from ._events import BreakerTransition
from ._outcome import NO_VERDICT, UPSTREAM_FAILURES, Kind, Outcome, Reason, Rejection
from ._state import LOCAL, ServiceLink
from .health import LastError

if TYPE_CHECKING:
    import pybreaker

logger = logging.getLogger("outbound.breaker")

# pybreaker's state names (STATE_CLOSED, STATE_OPEN, STATE_HALF_OPEN), so its listeners and our reports agree.
CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"
ISOLATED = "isolated"  # forced open by an operator (registry.isolate) until reset or its time runs out


class TripRule(Protocol):
    """When recorded outcomes open a closed breaker. Called with the breaker's lock held, except ``success``."""

    failures: int
    """Failures counted now (consecutive ones, or those in the window): read on every success, so an attribute."""

    fleet_counts: bool
    """Whether a fleet adds this rule's failures up across processes (consecutive failures); a rate window stays
    per process, and only the openings it decides are shared."""

    def failure(self, seconds: float) -> bool:
        """Count one failed attempt (lock held); ``True`` when the breaker should open."""

    def success(self, seconds: float) -> bool:
        """Count one successful attempt (no lock held: keep it cheap); ``True`` when the breaker should open."""

    def reset(self) -> None:
        """Forget everything counted (the breaker opened, closed or was reset; lock held)."""

    def describe(self) -> str:
        """Why it tripped, for the log line: ``"5 consecutive failures"``."""

    def snapshot(self) -> dict[str, Any]:
        """What health shows of it: ``{"failures": 3}`` and, for a rate window, the current rates."""

    def reset_after_fork(self, lock: threading.Lock) -> None:
        """In a forked child: the breaker's new lock (a parent thread may have held the old one)."""


class ConsecutiveFailures:
    """Opens after ``fail_max`` failed attempts in a row; any success clears the count (pybreaker's rule)."""

    fleet_counts = True

    def __init__(self, fail_max: int, lock: threading.Lock) -> None:
        self.fail_max = fail_max
        self.failures = 0
        self._lock = lock

    def failure(self, seconds: float) -> bool:
        self.failures += 1
        return self.failures >= self.fail_max

    def success(self, seconds: float) -> bool:
        if self.failures:  # read first, so the common case (no failures) takes no lock
            with self._lock:
                self.failures = 0
        return False

    def reset(self) -> None:
        self.failures = 0

    def describe(self) -> str:
        return f"{self.failures} consecutive failures"

    def snapshot(self) -> dict[str, Any]:
        return {"failures": self.failures}

    def reset_after_fork(self, lock: threading.Lock) -> None:
        self._lock = lock


def _trip_rule(config: BreakerConfig, lock: threading.Lock, clock: Callable[[], float]) -> TripRule:
    if config.mode == "rate":
        from ._window import FailureRate

        return FailureRate(config, clock=clock)
    return ConsecutiveFailures(config.fail_max, lock)


def failure_cause(outcome: Outcome) -> LastError:
    """A failed attempt as a report shows what opened a breaker: the class of its error (``HTTPStatus`` for a
    response) and what happened, without the URL (a breaker does not see it), so nothing in it needs redacting."""
    if outcome.kind is Kind.RESPONSE:
        kind, message = "HTTPStatus", f"HTTP {outcome.status}"
    else:
        kind = type(outcome.error).__name__ if outcome.error is not None else outcome.kind.name.title()
        message = "deadline expired" if outcome.deadline else outcome.kind.value
    return LastError(type=kind, message=message, at=datetime.now(timezone.utc))


def _ignore(event: BreakerTransition) -> None:
    pass


class Breaker:
    """One service's breaker: the ``breaker`` stage of its policy. Thread- and task-safe; never blocks on I/O.

    As a stage it admits attempts (``admit`` returns ``None`` for an ordinary attempt, the trial period's number for
    a half-open trial, or a ``Rejection``), records their outcomes and releases trial slots without a verdict.
    """

    def __init__(
        self,
        service: str,
        config: BreakerConfig,
        *,
        clock: Callable[[], float],
        notify: Callable[[BreakerTransition], None] = _ignore,
        rule: TripRule | None = None,
        shared: ServiceLink = LOCAL,
    ) -> None:
        self.service = service
        self.config = config
        self.shared = shared
        self._clock = clock
        self._notify = notify
        self._lock = threading.Lock()
        self.rule: TripRule = rule or _trip_rule(config, self._lock, clock)
        self.state = CLOSED
        self._opened_at: float | None = None  # monotonic
        self._opened_wall: datetime | None = None
        self.opened_by: LastError | None = None  # the failure that opened it (None: an operator, or slow calls)
        self.last_failure: LastError | None = None  # the latest failure counted: what a fleet's opening names
        self._trial_at = 0.0  # monotonic: while open or isolated, no attempt before this
        self._period = 0  # the current half-open trial period; a permit from an older one is void
        self._trials = 0  # trial calls in flight in this period
        self._successes = 0  # successful trials in this period
        self._failed_trials = 0  # failed trials since the breaker last closed (breaker.backoff)
        self._mirror: pybreaker.CircuitBreaker | None = None  # made by the first add_listener

    # -- reading -----------------------------------------------------------------------------------------------------

    @property
    def failures(self) -> int:
        """Failures the trip rule holds now (consecutive ones while closed, for the default rule)."""
        return self.rule.failures

    @property
    def opened_at(self) -> datetime | None:
        """Wall-clock time the breaker last opened, while it is not closed."""
        return None if self.state == CLOSED else self._opened_wall

    def effective_state(self) -> str:
        """The state the next call will meet: an open breaker whose trial is due reads ``half-open``.

        Health reports use this. The stored state changes only when a call arrives, and a health check must not
        keep reporting ``down`` after the trial is due: a load balancer that took the instance out on that 503
        would never send the traffic that lets the breaker close (Resilience4j #607).
        """
        state = self.state
        if state == OPEN and self._clock() >= self._trial_at:
            return HALF_OPEN
        return state

    def retry_in(self) -> float | None:
        """Seconds until an open (or isolated) breaker admits a call; ``None`` when it is not refusing, or when an
        isolation has no end."""
        if self.state not in (OPEN, ISOLATED):
            return None
        remaining = self._trial_at - self._clock()
        if math.isinf(remaining) or remaining <= 0:
            return None
        return remaining

    def tripped(self) -> bool:
        """Whether it is open or isolated: a retry decided now would be refused (half-open admits a trial)."""
        return self.state not in (CLOSED, HALF_OPEN)

    def refusal(self) -> Rejection | None:
        """The refusal ``admit`` would give now, without taking a trial slot or changing state."""
        if self.state == CLOSED:
            return None
        now = self._clock()
        return self._refusal(now) if now < self._trial_at else None

    # -- the stage ----------------------------------------------------------------------------------------------------

    def admit(self, call: object = None) -> int | Rejection | None:
        """Whether one attempt may be sent. Lock-free while closed, and while open before the trial is due."""
        if self.state == CLOSED:
            return None
        now = self._clock()
        if now < self._trial_at:
            return self._refusal(now)
        with self._lock:
            state = self.state
            if state == CLOSED:
                return None
            if now < self._trial_at:  # another thread re-opened it meanwhile
                return self._refusal(now)
            if state == ISOLATED:
                self._close("the isolation ended")
                return None
            if state == OPEN:
                if not self.shared.claim_trial(self.config.reset_timeout):
                    # Another process of the fleet holds this period's trials; ask again a little later.
                    self._trial_at = now + min(1.0, self.config.reset_timeout)
                    return Rejection(Reason.CIRCUIT_OPEN, 0.0, "a trial call is in flight in another process")
                self._half_open()
            elif self._trials >= self.config.half_open_max_calls:
                return Rejection(Reason.CIRCUIT_OPEN, 0.0, "a trial call is in flight")
            elif not self.shared.claim_trial(self.config.reset_timeout):
                return Rejection(Reason.CIRCUIT_OPEN, 0.0, "the fleet's trial calls are in flight")
            self._trials += 1
            return self._period

    def at_send(self, call: object, permit: int | None) -> Rejection | None:
        """As the attempt is written: one admitted while the breaker was closed (``permit`` None) is refused when it
        has opened since — a call that queued for a connection behind a failing upstream must not reach it as an
        extra trial. A trial (``permit`` set) goes on."""
        if self.state == CLOSED or permit is not None:
            return None
        now = self._clock()
        if now < self._trial_at:
            return self._refusal(now)
        return Rejection(Reason.CIRCUIT_OPEN, 0.0, "the breaker opened while this call waited for a connection")

    def is_failure(self, outcome: Outcome) -> bool:
        """Whether ``outcome`` counts against the upstream."""
        if outcome.kind is Kind.RESPONSE:
            return outcome.status in self.config.failure_statuses and not outcome.expected
        return outcome.kind in UPSTREAM_FAILURES

    def record(self, permit: int | None, outcome: Outcome, seconds: float) -> None:
        """Record the outcome of an attempt ``admit`` let through with ``permit``."""
        failed = self.is_failure(outcome)
        if permit is not None:
            self._record_trial(permit, outcome, failed)
        elif failed:
            cause = self.last_failure = failure_cause(outcome)
            with self._lock:
                if self.state != CLOSED:
                    return  # a call admitted before the breaker opened: the verdict is already in
                if self.rule.failure(seconds):
                    self._open(self.rule.describe(), cause)
            if self.rule.fleet_counts:
                self.shared.failure(self.last_failure)
        elif outcome.kind not in NO_VERDICT:
            had_failures = self.rule.failures > 0
            if self.rule.success(seconds):
                with self._lock:
                    if self.state == CLOSED:
                        self._open(self.rule.describe(), None)  # slow calls: no failure to name
            elif had_failures and self.rule.fleet_counts:
                self.shared.recovered()

    def release(self, permit: int | None) -> None:
        """The attempt ended without a verdict (cancelled, interrupted): free its trial slot."""
        if permit is None:
            return
        with self._lock:
            if permit == self._period and self.state == HALF_OPEN:
                self._trials -= 1

    # -- control -----------------------------------------------------------------------------------------------------

    def isolate(self, seconds: float | None = None, *, reason: str = "isolated by an operator") -> None:
        """Force the breaker open (state ``isolated``) until ``reset()``, or for ``seconds``."""
        with self._lock:
            self._move(ISOLATED, reason, seconds if seconds is not None else math.inf)

    def reset(self, *, reason: str = "reset by an operator") -> None:
        """Close the breaker and forget every count (also lifts an isolation)."""
        with self._lock:
            self.rule.reset()
            if self.state != CLOSED:
                self._close(reason)

    def apply(self, state: str, *, reason: str, open_seconds: float = 0.0, opened_by: LastError | None = None) -> None:
        """Apply a transition decided elsewhere (another process of the fleet, ``opened_by`` the failure that opened
        it there). Never reported back to it."""
        with self._lock:
            if state == self.state == CLOSED:
                return
            if state == CLOSED:
                self._close(reason, publish=False)
            elif state in (OPEN, ISOLATED):
                self._move(state, reason, open_seconds, publish=False, cause=opened_by)
            elif state == HALF_OPEN and self.state == OPEN:
                # Another process runs the trial: keep refusing here until its verdict arrives.
                self._trial_at = self._clock() + min(1.0, self.config.reset_timeout)

    def add_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        """Call ``listener.state_change(cb, old, new)`` (pybreaker's protocol) on every transition."""
        with self._lock:
            if self._mirror is None:
                import pybreaker

                config = self.config
                mirror = pybreaker.CircuitBreaker(
                    fail_max=config.fail_max,
                    reset_timeout=config.reset_timeout,
                    success_threshold=config.success_threshold,
                    name=self.service,
                )
                if self.state != CLOSED:  # in the state the breaker is in, quietly: no listener is there yet
                    mirror.open() if self.state != HALF_OPEN else mirror.half_open()
                self._mirror = mirror
        self._mirror.add_listener(listener)

    def reset_after_fork(self) -> None:
        """In a forked child: new locks (a parent thread may have held them) and no trial calls in flight (a parent
        thread may have held the only slot; it will never give it back here). A new trial period voids any earlier
        grant."""
        self._lock = threading.Lock()
        self.rule.reset_after_fork(self._lock)
        if self._mirror is not None:
            # pybreaker's own transition lock (private, pybreaker 1.x): replaced for the same reason.
            self._mirror._lock = threading.RLock()
        self._trials = 0
        self._period += 1

    # -- transitions (lock held) ----------------------------------------------------------------------------------

    def _refusal(self, now: float) -> Rejection:
        if self.state == ISOLATED:
            if math.isinf(self._trial_at):
                return Rejection(Reason.CIRCUIT_OPEN, math.inf, "the service is isolated until reset")
            left = self._trial_at - now
            return Rejection(Reason.CIRCUIT_OPEN, left, f"isolated for {left:.1f}s more")
        return Rejection(Reason.CIRCUIT_OPEN, self._trial_at - now, f"next trial in {self._trial_at - now:.1f}s")

    def _record_trial(self, permit: int, outcome: Outcome, failed: bool) -> None:
        with self._lock:
            if permit != self._period or self.state != HALF_OPEN:
                return
            self._trials -= 1
            if outcome.kind in NO_VERDICT:
                return
            if failed:
                self._failed_trials += 1
                self._open("a trial call failed", failure_cause(outcome))
                return
            self._successes += 1
            if self._successes >= self.config.success_threshold:
                self._close("upstream recovered")

    def _open(self, reason: str, cause: LastError | None) -> None:
        # The count stays until the breaker closes, so health shows what opened it (as pybreaker's storage did).
        self._move(OPEN, reason, self.open_seconds(), cause=cause)

    def open_seconds(self) -> float:
        """How long an opening now lasts: ``reset_timeout``, grown by ``breaker.backoff`` after each failed trial
        since the breaker last closed (Envoy's ejection time), up to its ``max``."""
        backoff = self.config.backoff
        seconds = self.config.reset_timeout
        if backoff is None or not self._failed_trials:
            return seconds
        exponent = min(self._failed_trials, 64)  # 2.0 ** 1024 overflows; the cap applies long before
        return max(seconds, min(backoff.max, seconds * backoff.factor**exponent))

    def _move(
        self, state: str, reason: str, open_seconds: float, *, publish: bool = True, cause: LastError | None = None
    ) -> None:
        old = self.state
        now = self._clock()
        self.state = state
        self.opened_by = cause  # before the announcement: a fleet publishes it with the opening
        self._opened_at = now
        self._opened_wall = datetime.now(timezone.utc)
        self._trial_at = now + open_seconds
        self._period += 1
        self._trials = 0
        self._successes = 0
        self._announce(old, state, reason, open_seconds, publish)

    def _half_open(self) -> None:
        old = self.state
        self.state = HALF_OPEN
        self._period += 1
        self._trials = 0
        self._successes = 0
        self._announce(old, HALF_OPEN, "the trial is due", 0.0, publish=True)

    def _close(self, reason: str, *, publish: bool = True) -> None:
        self.rule.reset()
        self._failed_trials = 0
        old = self.state
        self.state = CLOSED
        self.opened_by = None
        self._opened_at = None
        self._trial_at = 0.0
        self._period += 1
        self._trials = 0
        self._announce(old, CLOSED, reason, 0.0, publish)

    def _announce(self, old: str, new: str, reason: str, open_seconds: float, publish: bool) -> None:
        if publish:
            self.shared.transition(new, reason, open_seconds, self.opened_by)
        mirror = self._mirror
        if mirror is not None:
            try:
                # The pybreaker mirror: its listeners see the usual protocol (an isolated breaker is open to them).
                {CLOSED: mirror.close, HALF_OPEN: mirror.half_open}.get(new, mirror.open)()
            except Exception:
                logger.exception("a pybreaker listener of %r failed", self.service)
        self._notify(BreakerTransition(self.service, old, new, reason, open_seconds))
