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
``record(permit, outcome, seconds)`` and ``release(permit)``; the call stages (a bulkhead slot) are admitted once
for the whole call and released when it ends, the others (a pause, a rate limit, the breaker) for every attempt. The
retry budget is not a gate — it never refuses a first attempt — so the retry decision consults it directly.
"""

from __future__ import annotations

import random as _random
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from . import _deadline
from ._breaker import CLOSED, HALF_OPEN, Breaker
from ._bulkhead import Bulkhead
from ._config import MAX_RETRIES, DeadlineConfig, ServiceConfig, StateConfig
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
from ._pause import PAUSE_TOLERANCE, Pause
from ._retry import RETRY_AFTER_STATUSES, WAITS, RetryBudget, backoff_delay, parse_retry_after
from ._stats import AttemptLatencies, Stats

if TYPE_CHECKING:
    from ._ratelimit import RateLimit


class Stage(Protocol):
    """One admission gate of the policy: the bulkhead (per call); a pause, the rate limit and the breaker (per
    attempt)."""

    def admit(self, call: Any) -> Any:
        """A permit (any object, handed back to ``record`` / ``release``), a ``Rejection`` or a ``Wait``."""

    def record(self, permit: Any, outcome: Outcome, seconds: float) -> None:
        """The attempt ``permit`` admitted ended with ``outcome`` after ``seconds`` (per-attempt stages only)."""

    def release(self, permit: Any) -> None:
        """Give back what ``permit`` holds without a verdict."""

    def reset_after_fork(self) -> None:
        """In a forked child: new locks, and nothing held by the parent's threads."""


class AttemptTimeouts(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: as immutable, and built on every attempt at half the cost.
    connect: float | None
    read: float | None
    write: float | None
    pool: float | None
    left: float | None = None  # seconds left of the call's deadline (None: no deadline)


_CLOSED = Rejection("closed", 0.0, "the outbound registry was closed")
_NO_VERDICT = Outcome(Kind.CANCELLED)  # what the stages are told of an attempt that says nothing about the upstream
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
        state: StateConfig | None = None,
        min_time: float = DeadlineConfig().min_time,
    ) -> None:
        self.config = config
        self.min_time = min_time  # deadline.min_time: less left of a scope's deadline than this, and a call is refused
        self.name = config.name
        self.clock = clock
        self.random = random
        self.stats = Stats()
        # The statistics and the call log of a call's start and end are fed directly by the call (see _ended): no
        # event is built for them; their other events come through the hooks.
        self.hooks = Hooks((self.stats, LOG_OBSERVER, *observers))
        self.breaker = Breaker(config.name, config.breaker, clock=clock, notify=self._transition)
        self.budget = RetryBudget(config.retry.budget, clock=clock) if config.retry.budget else None
        keys = config.retry.idempotency_key
        # Methods whose calls carry an idempotency key (the backends add it, in this header: they own the headers).
        self.keyed_methods: frozenset[str] = keys.methods if keys is not None else frozenset()
        self.key_header = keys.header if keys is not None else ""
        # A method with an idempotency key is as safe to repeat as GET: the upstream deduplicates by the key.
        self.retried_methods = config.retry.allowed_methods | self.keyed_methods
        self.bulkhead = Bulkhead(config.bulkhead) if config.bulkhead is not None else None
        self.pause = (
            Pause(config.pause, cap=config.retry.retry_after_max, clock=clock) if config.pause is not None else None
        )
        self.rate_limit = _rate_limit(config, state)
        # The responses whose Retry-After is read: those a retry honours, and those that pause the service.
        self.retry_after_statuses = RETRY_AFTER_STATUSES | (config.pause.statuses if config.pause else frozenset())
        hedge = config.hedge
        self.hedge_latencies = AttemptLatencies() if hedge is not None and hedge.delay == "p95" else None
        # A pause refuses before a permit is spent; the rate limit before the breaker takes a half-open trial slot
        # that a refused attempt would then hold in vain.
        stages: list[Stage] = [stage for stage in (self.pause, self.rate_limit) if stage is not None]
        self.stages: tuple[Stage, ...] = (*stages, self.breaker)
        self.call_stages: tuple[Stage, ...] = (self.bulkhead,) if self.bulkhead is not None else ()
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
        retries: bool | int | None = None,
    ) -> Call:
        """Begin one logical call.

        ``url`` is a string or anything whose ``str()`` is the URL (httpx's ``URL``): it is formatted only when a
        message needs it. ``asked`` are the per-phase timeouts the caller set for this one call (empty when it set
        none): a caller who asks for a longer phase than ``timeout.total`` gets a deadline that long, and one who
        asks for no limit (httpx's ``timeout=None``) gets no deadline.

        ``retries`` is the caller's override for this one call (``None``: the settings): ``False`` or ``0``, no
        retry; ``True``, the service's ``retry.total``; a number, that many at most. Turning retries on vouches that
        the call is safe to repeat, so they then apply to any method.
        """
        return Call(self, method.upper(), url, replayable, asked, retries)

    def add_observer(self, observer: Observer) -> None:
        """Deliver this service's events to ``observer`` too."""
        self.hooks.add(observer)

    def early_rejection(self, method: str) -> Rejection | None:
        """The breaker's refusal, checked before a client builds the request (a rejected call then costs a few
        microseconds); ``None`` when it would admit. The transport still gates every attempt."""
        refusal = self.breaker.refusal()
        if refusal is not None:
            self._rejected(method.upper(), refusal)  # as every other event spells it
        return refusal

    def close(self) -> None:
        """Refuse every new attempt from now on and wake calls waiting to retry."""
        self.closed = True
        self.closing.set()

    def reset(self) -> None:
        """Close the breaker, clear its counts, the retry budget, a pause, the rate limit's permits and the stats."""
        self.breaker.reset()
        if self.budget is not None:
            self.budget.clear()
        if self.pause is not None:
            self.pause.reset()
        if self.rate_limit is not None:
            self.rate_limit.reset()
        self.stats.clear()

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's other threads, their locks, calls and trial slots do not exist here."""
        self.stats.reset_after_fork()
        for stage in (*self.stages, *self.call_stages):
            stage.reset_after_fork()
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


def _rate_limit(config: ServiceConfig, state: StateConfig | None) -> RateLimit | None:
    if config.rate_limit is None:
        return None
    from ._ratelimit import RateLimit  # the `limits` extra: imported only by services that set a rate limit

    return RateLimit(config.name, config.rate_limit, state=state)


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
        "_hedged",
        "_hedges",
        "_hedges_left",
        "_held",
        "_idempotent",
        "_max_retries",
        "_permits",
        "_policy",
        "_replayable",
        "_scoped",
        "_started",
        "_url",
        "_waiting",
        "deadline",
        "method",
    )

    def __init__(
        self,
        policy: Policy,
        method: str,
        url: object,
        replayable: bool,
        asked: tuple[float | None, ...],
        retries: bool | int | None = None,
    ) -> None:
        self._policy = policy
        self.method = method
        self._url = url
        self._replayable = replayable
        retry = policy.config.retry
        self._max_retries = retry.total
        self._idempotent = method in policy.retried_methods
        if retries is not None:
            self._max_retries = _retry_override(retries, retry.total)
            self._idempotent = self._max_retries > 0
        hedge = policy.config.hedge
        self._hedges_left = 0
        self._hedged = 0  # hedges sent: extra attempts that do not use up retry.total
        if hedge is not None and method in hedge.methods and replayable and (retries is None or self._max_retries):
            self._hedges_left = hedge.max  # a caller who turned retries off gets no extra attempt either
        self._hedges = _NO_HEDGES  # replaced by a list of its own when the call sends a hedge
        self._started = self._attempt_started = policy.clock()
        total = policy.config.timeout.total
        if asked and total is not None:
            total = _longer_total(total, asked)
        self.deadline = self._started + total if total is not None else None
        # An `outbound.deadline` scope (an inbound request's budget) cuts the deadline shorter. It is measured on the
        # real clock; only the time left crosses over, as the policy's clock may be a test's fake one.
        scope_ends = _deadline.current_deadline()
        self._scoped = False
        if scope_ends is not None:
            scope_left = scope_ends - time.monotonic()
            if self.deadline is None or self._started + scope_left < self.deadline:
                self.deadline = self._started + scope_left
                self._scoped = True
        self._attempts = 0
        self._permits: list[Any] = []
        self._held: list[tuple[Stage, Any]] = []
        self._waiting: dict[Stage, _Waiting] | None = None  # the stages this call waits for, when it waits
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
        if (self._scoped or self._attempts) and self._started_too_late():
            return self._refused(self._too_late())  # (a first attempt without a scope starts with its full total)
        if policy.call_stages and not self._attempts:
            for stage in policy.call_stages[len(self._held) :]:
                permit = stage.admit(self)
                if type(permit) in _REFUSALS:
                    return permit if type(permit) is Wait else self._refused(permit)
                self._held.append((stage, permit))
        if policy.breaker.state != CLOSED:
            # An open breaker refuses before the other stages spend anything (a rate-limit permit, a wait).
            refusal = policy.breaker.refusal()
            if refusal is not None:
                return self._refused(refusal)
        permits = self._permits
        for stage in policy.stages:
            permit = stage.admit(self)
            if type(permit) in _REFUSALS:
                self._release_attempt()
                return permit if type(permit) is Wait else self._refused(permit)
            permits.append(permit)
        waited = self._waiting is not None
        if waited:
            self._waiting = None  # admitted by every stage: a retry that must wait again gets its full max_wait
        self._attempts += 1
        if self._attempts == 1:
            policy.stats.started()
            if policy.hooks.call_started:
                policy.hooks.emit(policy.hooks.call_started, CallStarted(policy.name, self.method))
            if policy.budget is not None:
                policy.budget.record_request()
            # A first attempt admitted at once starts when the call did: one clock read less on every call.
            self._attempt_started = policy.clock() if waited else self._started
        else:
            self._attempt_started = policy.clock()
        return None

    # -- hedging (the async driver) -----------------------------------------------------------------------------

    def hedge_delay(self) -> float | None:
        """Seconds to wait for an attempt's answer before hedging it with another, or ``None`` when this call sends
        no hedge (none configured for its method, none left, or a ``"p95"`` delay without enough calls to know)."""
        if not self._hedges_left:
            return None
        delay = self._policy.config.hedge.delay  # type: ignore[union-attr]  # set whenever hedges are left
        if delay == "p95":
            return self._policy.hedge_latencies.p95()  # type: ignore[union-attr]  # kept for a "p95" delay
        return delay

    def hedge(self, waited: float) -> Hedge | None:
        """Admit one more attempt alongside the one that has not answered in ``waited`` seconds, or ``None``: no
        hedge left, or a stage or the retry budget says no (a hedge never goes to an open breaker and never waits)."""
        policy = self._policy
        if not self._hedges_left or self._done or policy.closed:
            return None
        permits: list[Any] = []
        for stage in policy.stages:
            permit = stage.admit(self)
            if type(permit) in _REFUSALS:
                self.stop_waiting(stage)  # a hedge does not wait for a permit or a pause
                self._release(permits)
                return None
            permits.append(permit)
        if policy.budget is not None and not policy.budget.try_spend():
            self._release(permits)
            self._deny("budget")
            return None
        self._hedges_left -= 1
        self._hedged += 1
        self._attempts += 1
        hedge = Hedge(permits, policy.clock())
        if self._hedges is _NO_HEDGES:
            self._hedges = []
        self._hedges.append(hedge)
        hooks = policy.hooks
        if hooks.retry_scheduled:
            url = redact_url(self.url)
            description = f"{self.method} {url}: no answer within {waited:.3f}s, hedged"
            event = RetryScheduled(policy.name, self.method, url, self._attempts, "hedge", 0.0, description)
            hooks.emit(hooks.retry_scheduled, event)
        return hedge

    def adopt(self, hedge: Hedge) -> None:
        """``hedge`` answered first: its attempt becomes the call's (the one it raced is given up without a verdict),
        and ``record`` judges its outcome."""
        self._hedges.remove(hedge)
        self._release_attempt()
        self._permits = hedge.permits
        self._attempt_started = hedge.started

    def drop(self, hedge: Hedge) -> None:
        """``hedge`` lost the race (or the call was interrupted): give back what it holds, without a verdict."""
        if hedge in self._hedges:
            self._hedges.remove(hedge)
            self._release(hedge.permits)

    @property
    def sends_deadline(self) -> bool:
        """Whether the service sends a ``deadline_header``."""
        return self._policy.config.deadline_header is not None

    def deadline_header(self) -> tuple[str, str] | None:
        """``(name, value)`` of the ``deadline_header`` to send with this attempt: the time left of the call's
        deadline, rounded down; ``None`` when the service sends none or the call has no deadline."""
        name = self._policy.config.deadline_header
        if name is None or self.deadline is None:
            return None
        return name, _deadline.format_budget(name, self.deadline - self._policy.clock())

    def time_left(self) -> float | None:
        """Seconds until the call's deadline (0.0 once past it), or ``None`` without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self._policy.clock())

    def deadline_passed(self) -> bool:
        """Whether the deadline has struck (a millisecond early counts: the read cut to it ends right at it)."""
        return self.deadline is not None and self._policy.clock() >= self.deadline - 0.001

    # -- waiting for a stage (a full bulkhead, a rate limit's next permit, a pause) --------------------------------

    def wait_left(self, stage: Stage, max_wait: float) -> float:
        """Seconds this call may still wait for ``stage``: ``max_wait`` from when it first waited for it, never past
        the call's deadline. The first ask starts the clock; 0.0 or less means "no more waiting"."""
        entry = self._waiting_entry(stage)
        now = self._policy.clock()
        left = entry.since + max_wait - now
        if self.deadline is not None:
            # The attempt after the wait must still have deadline.min_time: a wait that leaves less is refused now.
            left = min(left, self.deadline - now - self._policy.min_time)
        return left

    def wake_event(self, stage: Stage) -> threading.Event | None:
        """The event ``stage`` wakes this call with, or ``None`` when it does not wait for ``stage`` with one."""
        entry = self._waiting.get(stage) if self._waiting is not None else None
        return entry.wake if entry is not None else None

    def set_wake_event(self, stage: Stage, wake: threading.Event) -> None:
        """This call waits for ``stage`` until ``wake`` is set."""
        self._waiting_entry(stage).wake = wake

    def stop_waiting(self, stage: Stage) -> None:
        """The call no longer waits for ``stage`` (admitted, or refused)."""
        if self._waiting is not None:
            self._waiting.pop(stage, None)

    def _waiting_entry(self, stage: Stage) -> _Waiting:
        if self._waiting is None:
            self._waiting = {}
        entry = self._waiting.get(stage)
        if entry is None:
            entry = self._waiting[stage] = _Waiting(self._policy.clock())
        return entry

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
            left,
        )

    def record(self, outcome: Outcome) -> Decision:
        """Record one attempt's outcome with the stages and observers, and decide whether to retry."""
        policy = self._policy
        now = policy.clock()
        seconds = now - self._attempt_started
        # A timeout at an `outbound.deadline` scope's end is the caller's budget running out (an inbound request may
        # ask for 20 ms), not the upstream failing: the stages get no verdict on it.
        judged = _NO_VERDICT if outcome.deadline and self._scoped else outcome
        for stage, permit in zip(policy.stages, self._permits, strict=True):
            stage.record(permit, judged, seconds)
        self._permits.clear()
        if policy.hedge_latencies is not None and outcome.kind is Kind.RESPONSE:
            policy.hedge_latencies.add(seconds)  # the live p95 a "p95" hedge delay waits: answered attempts only
        hooks = policy.hooks
        if hooks.attempt_finished:
            error = type(outcome.error).__name__ if outcome.error is not None else None
            failure = judged is outcome and policy.breaker.is_failure(outcome)
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
        for hedge in list(self._hedges):
            self.drop(hedge)
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
        if outcome.deadline and self._scoped and self.deadline is not None:
            message += f" (the {self.deadline - self._started:.3g}s left of the outbound.deadline scope)"
        elif outcome.deadline:
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
        if self._attempts - self._hedged > self._max_retries or not self._replayable:
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
        if self.deadline is not None and now + delay >= self.deadline - policy.min_time:
            return self._deny("deadline")  # a retry that could not start with min_time left would be refused anyway
        pause = policy.pause
        if pause is not None and pause.until:
            paused_for = pause.paused_for()
            if paused_for is not None and paused_for > delay + pause.config.max_wait + PAUSE_TOLERANCE:
                return self._deny("paused")  # the retry would be refused by the pause: answer with what we have
        if policy.budget is not None and not policy.budget.try_spend():
            return self._deny("budget")
        return Decision(retry=True, delay=delay if WAITS.enabled else 0.0)

    def _deny(self, reason: str) -> Decision:
        hooks = self._policy.hooks
        if hooks.retry_denied:
            hooks.emit(hooks.retry_denied, RetryDenied(self._policy.name, self.method, reason))
        return DONE

    # -- endings --------------------------------------------------------------------------------------------------

    def _started_too_late(self) -> bool:
        return self.deadline is not None and self.deadline - self._policy.clock() < self._policy.min_time

    def _too_late(self) -> Rejection:
        left = max(0.0, (self.deadline or 0.0) - self._policy.clock())
        detail = f"{left * 1000:.1f} ms left of the deadline, less than deadline.min_time ({self._policy.min_time:g}s)"
        return Rejection("deadline_exceeded", 0.0, detail)

    def _refused(self, rejection: Rejection) -> Rejection:
        policy = self._policy
        policy._rejected(self.method, rejection)
        if self._attempts and not self._done:  # a retry refused (the breaker opened meanwhile): the call ends here
            self._finish_rejected(rejection)
        self._release_call()
        return rejection

    def _finish_rejected(self, rejection: Rejection) -> None:
        message = f"{self.method} {redact_url(self.url)} refused before a retry: {rejection.reason}"
        # A retry refused because the registry closed is our own shutdown: quiet, like an attempt it cut short.
        kind = Kind.CLOSED if rejection.reason == "closed" else Kind.OTHER_ERROR
        error_type = _REJECTION_TYPES.get(rejection.reason, "RejectedError")
        self._ended(kind, None, self._policy.clock(), error_type, message)

    def _finish(self, outcome: Outcome, now: float) -> None:
        self._release_call()
        error_type = error_message = None
        if outcome.kind is not Kind.RESPONSE:
            error_type = type(outcome.error).__name__ if outcome.error is not None else outcome.kind.name.title()
            error_message = self.describe(outcome)
        elif self._policy.breaker.is_failure(outcome):
            error_type, error_message = "HTTPStatus", self.describe(outcome)
        self._ended(outcome.kind, outcome.status, now, error_type, error_message)

    def _ended(self, kind: Kind, status: int | None, now: float, error_type: str | None, message: str | None) -> None:
        # The statistics and the call log are fed directly; the event is built only when someone else listens, or
        # the log will write it (a success's record is DEBUG: usually off).
        self._done = True
        policy = self._policy
        seconds = now - self._started
        policy.stats.finished(kind, seconds, error_type, message)
        hooks = policy.hooks
        level = LOG_OBSERVER.call_level(kind, error_type)
        if hooks.call_finished or level is not None:
            event = CallFinished(
                policy.name, self.method, self._url, kind, status, self._attempts, seconds, error_type, message
            )
            if level is not None:
                LOG_OBSERVER.log_call(event, level)
            if hooks.call_finished:
                hooks.emit(hooks.call_finished, event)

    def _release_attempt(self) -> None:
        if self._permits:
            self._release(self._permits)
            self._permits.clear()

    def _release(self, permits: list[Any]) -> None:
        # Permits are in the order of the stages that gave them (a refusal stops the list short).
        for stage, permit in zip(self._policy.stages, permits, strict=False):
            stage.release(permit)

    def _release_call(self) -> None:
        held = self._held
        while held:
            stage, permit = held.pop()
            stage.release(permit)
        if self._waiting:  # refused or interrupted while queued: leave the queues
            for stage in list(self._waiting):
                forget = getattr(stage, "forget", None)
                if forget is not None:
                    forget(self)
            self._waiting = None

    def _total_text(self) -> str:
        total = self._policy.config.timeout.total
        return f"{total:g}s" if total is not None else "none"


class Hedge:
    """An extra attempt of a call, racing the one that has not answered: the permits its stages gave."""

    __slots__ = ("permits", "started")

    def __init__(self, permits: list[Any], started: float) -> None:
        self.permits = permits
        self.started = started


_NO_HEDGES: list[Hedge] = []  # shared by every call without hedges, never appended to


class _Waiting:
    """When a call started waiting for one stage, and the event that stage wakes it with."""

    __slots__ = ("since", "wake")

    def __init__(self, since: float) -> None:
        self.since = since
        self.wake: threading.Event | None = None


_REJECTION_TYPES = {
    "closed": "RegistryClosedError",
    "circuit_open": "CircuitOpenError",
    "bulkhead_full": "BulkheadFullError",
    "rate_limited": "RateLimitedError",
    "deadline_exceeded": "DeadlineExceededError",
}


def _retry_override(retries: object, configured: int) -> int:
    # Checked here, where both backends pass it: a wrong type must not pass silently as "no override".
    if isinstance(retries, bool):
        return configured if retries else 0
    if isinstance(retries, int) and 0 <= retries <= MAX_RETRIES:
        return retries
    raise ValueError(f"retries must be True, False or a number of retries from 0 to {MAX_RETRIES}, got {retries!r}")


def _longer_total(total: float, asked: tuple[float | None, ...]) -> float | None:
    # A caller who asks one call for a longer phase than the deadline allows gets a deadline that long; a phase
    # without a limit (httpx's timeout=None) means no deadline for that call.
    longest = total
    for phase in asked:
        if phase is None:
            return None
        longest = max(longest, phase)
    return longest
