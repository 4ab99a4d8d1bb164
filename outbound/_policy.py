"""The resilience pipeline, sans-IO: admit -> attempt outcome -> decision (retry after d / done).

It never sends, sleeps or awaits, and knows nothing of requests or httpx; it only decides, and tells observers what
happened. ``_driver.drive`` / ``adrive`` run it the same way for every backend::

    call = policy.start(method, url, replayable=...)
    while True:
        refusal = call.admit()              # None, a Rejection (raise) or a Wait (wait, then admit again)
        limits = call.attempt_timeouts(...) # the caller's or configured timeouts, cut to the deadline
        outcome = <one attempt, classified>
        decision = call.record(outcome)     # stages record it; retry after decision.delay, or stop
        ...
        call.abandon()                      # on any interruption: frees what the call holds, ends it

Admission asks the policy's stages in order. A stage has ``admit(call) -> permit | Rejection | Wait``,
``record(permit, outcome, seconds)`` and ``release(permit)``; ``per_call`` stages (a bulkhead slot) are admitted
once for the whole call and released when it ends, the others (the breaker, a rate limit) for every attempt. The
retry budget is not a gate — it never refuses a first attempt — so the retry decision consults it directly.
"""

from __future__ import annotations

import random as _random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

from ._breaker import CLOSED, HALF_OPEN, Breaker
from ._config import ServiceConfig
from ._errors import redact_url
from ._events import (
    AttemptFinished,
    CallFinished,
    CallRejected,
    CallStarted,
    Hooks,
    Observer,
    RetryDenied,
    RetryScheduled,
)
from ._logging import LOG_OBSERVER
from ._outcome import (
    DONE,
    NOTHING_SENT,
    UPSTREAM_FAILURES,
    Decision,
    Kind,
    Outcome,
    Rejection,
    Wait,
)
from ._retry import RETRY_AFTER_STATUSES, WAITS, RetryBudget, backoff_delay, parse_retry_after
from ._stats import Stats


class Stage(Protocol):
    """One admission gate of the policy (the breaker; later a bulkhead, a rate limit)."""

    per_call: bool
    """``True``: admitted once per logical call and released when it ends; ``False``: once per attempt."""

    def admit(self, call: Any) -> Any:
        """A permit (any object, handed back to ``record`` / ``release``), a ``Rejection`` or a ``Wait``."""

    def record(self, permit: Any, outcome: Outcome, seconds: float) -> None:
        """The attempt ``permit`` admitted ended with ``outcome`` after ``seconds`` (per-attempt stages only)."""

    def release(self, permit: Any) -> None:
        """Give back what ``permit`` holds without a verdict."""


class AttemptTimeouts(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: as immutable, and built on every attempt at half the cost.
    connect: float | None
    read: float | None
    write: float | None
    pool: float | None


_CLOSED = Rejection("closed", 0.0, "the outbound registry was closed")
_REFUSALS = (Rejection, Wait)


class Policy:
    """One service's stages, retry budget, stats and observers, and the rules that combine them."""

    def __init__(
        self,
        config: ServiceConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
        observers: Iterable[Observer] = (),
    ) -> None:
        self.config = config
        self.name = config.name
        self.clock = clock
        self.random = random
        self.stats = Stats()
        self.hooks = Hooks((self.stats, LOG_OBSERVER, *observers))
        self.breaker = Breaker(config.name, config.breaker, clock=clock, notify=self._transition)
        self.budget = RetryBudget(config.retry.budget, clock=clock) if config.retry.budget else None
        self.stages: tuple[Stage, ...] = (self.breaker,)
        self.call_stages: tuple[Stage, ...] = ()
        self.closed = False
        # Set by close(): a thread sleeping before a retry wakes at once, and its next admit() is refused.
        self.closing = threading.Event()

    def start(
        self,
        method: str,
        url: object,
        *,
        replayable: bool,
        asked: tuple[float | None, ...] = (),
    ) -> Call:
        """Begin one logical call.

        ``url`` is a string or anything whose ``str()`` is the URL (httpx's ``URL``): it is formatted only when a
        message needs it. ``asked`` are the per-phase timeouts the caller set for this one call (empty when it set
        none): a caller who asks for a longer phase than ``timeout.total`` gets a deadline that long, and one who
        asks for no limit (httpx's ``timeout=None``) gets no deadline.
        """
        return Call(self, method.upper(), url, replayable, asked)

    def add_observer(self, observer: Observer) -> None:
        """Deliver this service's events to ``observer`` too."""
        self.hooks.add(observer)

    def early_rejection(self, method: str) -> Rejection | None:
        """The breaker's refusal, checked before a client builds the request (a rejected call then costs a few
        microseconds); ``None`` when it would admit. The transport still gates every attempt."""
        refusal = self.breaker.refusal()
        if refusal is not None:
            self._rejected(method, refusal)
        return refusal

    def close(self) -> None:
        """Refuse every new attempt from now on and wake calls waiting to retry."""
        self.closed = True
        self.closing.set()

    def reset(self) -> None:
        """Close the breaker, clear its counts, the retry budget and the stats."""
        self.breaker.reset()
        if self.budget is not None:
            self.budget.clear()
        self.stats.clear()

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's other threads, their locks, calls and trial slots do not exist here."""
        self.breaker.reset_after_fork()
        self.stats.reset_after_fork()
        for stage in (*self.stages, *self.call_stages):
            reset = getattr(stage, "reset_after_fork", None)
            if reset is not None and stage is not self.breaker:
                reset()
        if self.budget is not None:
            self.budget.reset_lock()
        self.closing = threading.Event()
        if self.closed:
            self.closing.set()

    def _rejected(self, method: str, rejection: Rejection) -> None:
        if rejection.reason != "closed" and self.hooks.call_rejected:
            self.hooks.emit(
                self.hooks.call_rejected, CallRejected(self.name, method, rejection.reason, rejection.retry_in)
            )

    def _transition(self, event: Any) -> None:
        if self.hooks.breaker_transition:
            self.hooks.emit(self.hooks.breaker_transition, event)


def _retry_reason(outcome: Outcome) -> str:
    # Low-cardinality labels for metrics: a status code from status_forcelist, or the failure's kind.
    if outcome.kind is Kind.RESPONSE:
        return f"status_{outcome.status}"
    return str(outcome.kind.value).replace(" ", "_")


class Call:
    """The state of one logical call across its attempts. Used by one thread or task at a time."""

    # One is built per call: slots make that cheaper and smaller.
    __slots__ = (
        "_attempt_started",
        "_attempts",
        "_done",
        "_held",
        "_idempotent",
        "_permits",
        "_policy",
        "_replayable",
        "_started",
        "_url",
        "deadline",
        "method",
    )

    def __init__(
        self, policy: Policy, method: str, url: object, replayable: bool, asked: tuple[float | None, ...]
    ) -> None:
        self._policy = policy
        self.method = method
        self._url = url
        self._replayable = replayable
        self._idempotent = method in policy.config.retry.allowed_methods
        self._started = self._attempt_started = policy.clock()
        total = policy.config.timeout.total
        if asked and total is not None:
            total = _longer_total(total, asked)
        self.deadline = self._started + total if total is not None else None
        self._attempts = 0
        self._permits: list[Any] = []
        self._held: list[tuple[Stage, Any]] = []
        self._done = False

    @property
    def service(self) -> str:
        return self._policy.name

    @property
    def url(self) -> str:
        return str(self._url)

    @property
    def attempts(self) -> int:
        """Attempts admitted so far."""
        return self._attempts

    @property
    def closing(self) -> threading.Event:
        """Set when the registry closes: a thread waiting to retry wakes on it."""
        return self._policy.closing

    def admit(self) -> Rejection | Wait | None:
        """Let one attempt through (``None``), refuse it (``Rejection``: the call ends) or ask the caller to wait
        and ask again (``Wait``)."""
        policy = self._policy
        if policy.closed:
            return self._refused(_CLOSED)
        if not self._attempts:
            for stage in policy.call_stages[len(self._held) :]:
                permit = stage.admit(self)
                if type(permit) in _REFUSALS:
                    return permit if type(permit) is Wait else self._refused(permit)
                self._held.append((stage, permit))
        permits = self._permits
        for stage in policy.stages:
            permit = stage.admit(self)
            if type(permit) in _REFUSALS:
                self._release_attempt()
                return permit if type(permit) is Wait else self._refused(permit)
            permits.append(permit)
        self._attempts += 1
        if self._attempts == 1:
            if policy.hooks.call_started:
                policy.hooks.emit(policy.hooks.call_started, CallStarted(policy.name, self.method))
            if policy.budget is not None:
                policy.budget.record_request()
        self._attempt_started = policy.clock()
        return None

    def time_left(self) -> float | None:
        """Seconds until the call's deadline (0.0 once past it), or ``None`` without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self._policy.clock())

    def deadline_passed(self) -> bool:
        """Whether the deadline has struck (a millisecond early counts: the read cut to it ends right at it)."""
        return self.deadline is not None and self._policy.clock() >= self.deadline - 0.001

    def attempt_timeouts(
        self,
        connect: float | None,
        read: float | None,
        write: float | None,
        pool: float | None,
    ) -> AttemptTimeouts:
        """The caller's (or configured) timeouts, each cut to what is left of the call's deadline."""
        if self.deadline is None:
            return AttemptTimeouts(connect, read, write, pool)
        left = max(0.001, self.deadline - self._policy.clock())
        # Spelled out rather than a generator over the four: this runs on every attempt.
        return AttemptTimeouts(
            left if connect is None else min(connect, left),
            left if read is None else min(read, left),
            left if write is None else min(write, left),
            left if pool is None else min(pool, left),
        )

    def record(self, outcome: Outcome) -> Decision:
        """Record one attempt's outcome with the stages and observers, and decide whether to retry."""
        policy = self._policy
        now = policy.clock()
        seconds = now - self._attempt_started
        for stage, permit in zip(policy.stages, self._permits, strict=True):
            stage.record(permit, outcome, seconds)
        self._permits.clear()
        hooks = policy.hooks
        if hooks.attempt_finished:
            error = type(outcome.error).__name__ if outcome.error is not None else None
            failure = policy.breaker.is_failure(outcome)
            hooks.emit(
                hooks.attempt_finished,
                AttemptFinished(
                    policy.name, self.method, self._attempts, outcome.kind, outcome.status, seconds, error, failure
                ),
            )
        decision = self._decide(outcome, now)
        if decision.retry:
            if hooks.retry_scheduled:
                event = RetryScheduled(
                    policy.name,
                    self.method,
                    redact_url(self.url),
                    self._attempts,
                    _retry_reason(outcome),
                    decision.delay,
                    self.describe(outcome),
                )
                hooks.emit(hooks.retry_scheduled, event)
            return decision
        self._finish(outcome, now)
        return decision

    def abandon(self) -> None:
        """The call was interrupted (``KeyboardInterrupt``, task cancellation, an error of our own): give back what
        it holds without a verdict and end it. Does nothing once the call has ended, so a driver may call it on
        every exit path."""
        self._release_attempt()
        if self._attempts and not self._done:
            self._finish(Outcome(Kind.CANCELLED), self._policy.clock())
        self._release_call()

    def describe(self, outcome: Outcome) -> str:
        """``"GET https://host/path -> HTTP 503"`` or ``"read timeout on GET https://host/path (ReadTimeout)"``."""
        target = f"{self.method} {redact_url(self.url)}"
        if outcome.kind is Kind.RESPONSE:
            return f"{target} -> HTTP {outcome.status}"
        cause = type(outcome.error).__name__ if outcome.error is not None else ""
        what = "deadline expired" if outcome.deadline else outcome.kind.value
        return f"{what} on {target} ({cause})" if cause else f"{what} on {target}"

    def error_message(self, outcome: Outcome) -> str:
        """The message of the error a failed final attempt raises (no credentials, no query string)."""
        message = f"{self._policy.name}: {self.describe(outcome)}"
        if outcome.deadline:
            message += f" (timeout.total of {self._total_text()} for the whole call)"
        if self._attempts > 1:
            message += f" (after {self._attempts} attempts)"
        return message

    # -- decisions ----------------------------------------------------------------------------------------------

    def _decide(self, outcome: Outcome, now: float) -> Decision:
        if not self._retryable(outcome):
            return DONE
        delay = self._delay(outcome)
        if delay is None:
            return self._deny("retry_after")
        return self._allowed(delay, now)

    def _retryable(self, outcome: Outcome) -> bool:
        """Eligibility: attempts left, a body that can be sent again, and a failure a retry may fix."""
        if self._attempts > self._policy.config.retry.total or not self._replayable:
            return False
        kind = outcome.kind
        if kind is Kind.RESPONSE:
            return self._idempotent and outcome.status in self._policy.config.retry.status_forcelist
        if kind in NOTHING_SENT:
            return True  # the upstream never saw the request: safe for every method
        return self._idempotent and kind in UPSTREAM_FAILURES

    def _delay(self, outcome: Outcome) -> float | None:
        """The wait before the retry: backoff, or what ``Retry-After`` asks (``None`` when it asks too much)."""
        retry = self._policy.config.retry
        delay = backoff_delay(retry, self._attempts, self._policy.random)
        if outcome.kind is Kind.RESPONSE and retry.respect_retry_after and outcome.status in RETRY_AFTER_STATUSES:
            asked = parse_retry_after(outcome.retry_after)
            if asked is not None:
                if asked > retry.retry_after_max:
                    return None  # the upstream asks for longer than we may hold a worker: answer now
                delay = asked
        return delay

    def _allowed(self, delay: float, now: float) -> Decision:
        """The breaker, the deadline and the budget each may still say no."""
        policy = self._policy
        if policy.breaker.state not in (CLOSED, HALF_OPEN):
            return self._deny("breaker")  # the breaker tripped: stop hammering, report what we have
        if self.deadline is not None and now + delay >= self.deadline:
            return self._deny("deadline")
        if policy.budget is not None and not policy.budget.try_spend():
            return self._deny("budget")
        return Decision(retry=True, delay=delay if WAITS.enabled else 0.0)

    def _deny(self, reason: str) -> Decision:
        hooks = self._policy.hooks
        if hooks.retry_denied:
            hooks.emit(hooks.retry_denied, RetryDenied(self._policy.name, self.method, reason))
        return DONE

    # -- endings --------------------------------------------------------------------------------------------------

    def _refused(self, rejection: Rejection) -> Rejection:
        policy = self._policy
        policy._rejected(self.method, rejection)
        if self._attempts and not self._done:  # a retry refused (the breaker opened meanwhile): the call ends here
            self._finish_rejected(rejection)
        self._release_call()
        return rejection

    def _finish_rejected(self, rejection: Rejection) -> None:
        self._done = True
        hooks = self._policy.hooks
        if hooks.call_finished:
            now = self._policy.clock()
            message = f"{self.method} {redact_url(self.url)} refused before a retry: {rejection.reason}"
            # A retry refused because the registry closed is our own shutdown: quiet, like an attempt it cut short.
            kind = Kind.CLOSED if rejection.reason == "closed" else Kind.OTHER_ERROR
            event = CallFinished(
                self._policy.name,
                self.method,
                self._url,
                kind,
                None,
                self._attempts,
                now - self._started,
                _REJECTION_TYPES.get(rejection.reason, "RejectedError"),
                message,
            )
            hooks.emit(hooks.call_finished, event)

    def _finish(self, outcome: Outcome, now: float) -> None:
        self._done = True
        self._release_call()
        hooks = self._policy.hooks
        if not hooks.call_finished:
            return
        error_type = error_message = None
        if outcome.kind is not Kind.RESPONSE:
            error_type = type(outcome.error).__name__ if outcome.error is not None else outcome.kind.name.title()
            error_message = self.describe(outcome)
        elif self._policy.breaker.is_failure(outcome):
            error_type, error_message = "HTTPStatus", self.describe(outcome)
        event = CallFinished(
            self._policy.name,
            self.method,
            self._url,
            outcome.kind,
            outcome.status,
            self._attempts,
            now - self._started,
            error_type,
            error_message,
        )
        hooks.emit(hooks.call_finished, event)

    def _release_attempt(self) -> None:
        if self._permits:
            for stage, permit in zip(self._policy.stages, self._permits, strict=False):
                stage.release(permit)
            self._permits.clear()

    def _release_call(self) -> None:
        held = self._held
        while held:
            stage, permit = held.pop()
            stage.release(permit)

    def _total_text(self) -> str:
        total = self._policy.config.timeout.total
        return f"{total:g}s" if total is not None else "none"


_REJECTION_TYPES = {
    "closed": "RegistryClosedError",
    "circuit_open": "CircuitOpenError",
    "bulkhead_full": "BulkheadFullError",
    "rate_limited": "RateLimitedError",
    "deadline_exceeded": "DeadlineExceededError",
}


def _longer_total(total: float, asked: tuple[float | None, ...]) -> float | None:
    # A caller who asks one call for a longer phase than the deadline allows gets a deadline that long; a phase
    # without a limit (httpx's timeout=None) means no deadline for that call.
    longest = total
    for phase in asked:
        if phase is None:
            return None
        longest = max(longest, phase)
    return longest
