"""One logical call across its attempts, sans-IO: admit -> attempt outcome -> decision (retry after d / done).

It never sends, sleeps or awaits, and knows nothing of requests or httpx; it only decides, and tells observers what
happened. ``_driver.drive`` / ``adrive`` run it the same way for every backend::

    call = policy.start(method, url, replayable=...)
    while True:
        refusal = call.admit()              # None, a Rejection (raise) or a Wait (wait, then admit again)
        limits = call.attempt_timeouts(...) # the caller's or configured timeouts, cut to the deadline
        outcome = <one attempt, classified> # the send gates are asked as it is written (call.at_send)
        decision = call.record(outcome)     # stages record it; retry after decision.delay, or stop
        ...
        call.abandon()                      # on any interruption: frees what the call holds, ends it

A call keeps only the loop's own state — its attempts, its permits, its deadline — and walks its service's
pipeline (``Policy``: the stage tuples ``_pipeline.py`` composed, the retry rule, the observers). Each stage owns its
own state (``_stage.py``), hedging is ``_hedge.py``'s plan, the retry rule ``_retry.py``'s, and every call ends once,
in ``_end``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, NamedTuple

from ._breaker import CLOSED
from ._deadline import call_deadline
from ._errors import REJECTED_ERRORS, redact_url
from ._events import AttemptFinished, AttemptSending, CallFinished, CallStarted, RetryDenied, RetryScheduled
from ._hedge import Hedge, HedgePlan
from ._logging import LOG_OBSERVER
from ._outcome import DONE, CallOutcome, Decision, Kind, Outcome, Reason, Rejection, Wait
from ._retry import retries_for, retry_reason
from ._stage import Stage, Waits

if TYPE_CHECKING:
    from ._policy import Policy


class AttemptTimeouts(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: as immutable, and built on every attempt at half the cost.
    connect: float | None
    read: float | None
    write: float | None
    pool: float | None
    left: float | None = None  # seconds left of the call's deadline (None: no deadline)


_CLOSED = Rejection(Reason.CLOSED, 0.0, "the outbound registry was closed")
_NO_VERDICT = Outcome(Kind.CANCELLED)  # what the stages are told of an attempt that says nothing about the upstream
_REFUSALS = (Rejection, Wait)


class Call:
    """The state of one logical call across its attempts. Used by one thread or task at a time."""

    # One is built per call: slots make that cheaper and smaller.
    __slots__ = (
        "_attempt_started",
        "_attempts",
        "_done",
        "_hedges",
        "_held",
        "_idempotent",
        "_max_retries",
        "_permits",
        "_policy",
        "_replayable",
        "_url",
        "_waits",
        "deadline",
        "method",
        "started",
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
        config = policy.config
        self._max_retries = config.retry.total
        self._idempotent = method in policy.retried_methods
        if retries is not None:
            self._max_retries = retries_for(retries, config.retry.total)
            self._idempotent = self._max_retries > 0
        hedge = config.hedge
        self._hedges: HedgePlan | None = None
        if hedge is not None and method in hedge.methods and replayable and (retries is None or self._max_retries):
            self._hedges = HedgePlan(hedge, policy.latencies)  # a caller who turned retries off gets no hedge either
        self.started = self._attempt_started = now = policy.clock()  # on the policy's clock
        # timeout.total, or longer for a caller who asked one call for a longer phase; a scope may cut it shorter.
        self.deadline = call_deadline(policy.clock, now, config.timeout.total, policy.real_clock, asked)
        self._attempts = 0
        self._permits: list[Any] = []
        self._held: list[tuple[Stage, Any]] = []
        self._waits: Waits | None = None
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
    def total(self) -> float | None:
        """The service's ``timeout.total``."""
        return self._policy.config.timeout.total

    @property
    def closing(self) -> threading.Event:
        """Set when the registry closes: a thread waiting to retry wakes on it."""
        return self._policy.closing

    @property
    def waits(self) -> Waits:
        """This call's waits for its stages (``_stage.Waits``), made when a stage first asks."""
        if self._waits is None:
            deadline = self.deadline
            self._waits = Waits(self._policy.clock, deadline.at if deadline else None, self._policy.min_time)
        return self._waits

    @property
    def gated(self) -> bool:
        """Whether the service's pipeline has send gates to ask as an attempt is written."""
        return bool(self._policy.send_gates)

    @property
    def permits(self) -> list[Any]:
        """The permits the attempt stages gave the attempt admitted last (what ``at_send`` is asked with)."""
        return self._permits

    def admit(self) -> Rejection | Wait | None:
        """Let one attempt through (``None``), refuse it (``Rejection``: the call ends) or ask the caller to wait
        and ask again (``Wait``)."""
        policy = self._policy
        if policy.closed:
            return self._refused(_CLOSED)
        deadline = self.deadline
        if deadline is not None and (deadline.scoped or self._attempts):
            # (a first attempt without a scope starts with its full total)
            refusal = deadline.refusal(policy.min_time)
            if refusal is not None:
                return self._refused(refusal)
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
        answer = self._walk(self._permits)
        if type(answer) is Rejection:
            return self._refused(answer)
        if answer is not None:
            return answer  # a Wait
        waited = self._waits is not None
        if waited:
            self._waits = None  # admitted by every stage: a retry that must wait again gets its full max_wait
        self._attempts += 1
        if self._attempts == 1:
            policy.stats.started()
            if policy.hooks.call_started:
                policy.hooks.emit(policy.hooks.call_started, CallStarted(policy.name, self.method))
            if policy.budget is not None:
                policy.budget.record_request()
            # A first attempt admitted at once starts when the call did: one clock read less on every call.
            self._attempt_started = policy.clock() if waited else self.started
        else:
            self._attempt_started = policy.clock()
        return None

    def at_send(self, permits: list[Any]) -> Rejection | Wait | None:
        """Ask the send gates about the attempt admitted with ``permits``, its connection in hand and nothing
        written yet: ``None`` (send), a ``Wait`` (ask again after it) or a ``Rejection`` (send nothing)."""
        policy = self._policy
        for index, gate in policy.send_gates:
            answer = gate.at_send(self, permits[index])
            if answer is not None:
                return answer
        if policy.hooks.attempt_sending:
            event = AttemptSending(policy.name, self.method, self._attempts)
            policy.hooks.emit(policy.hooks.attempt_sending, event)
        return None

    def attempt_timeouts(
        self, connect: float | None, read: float | None, write: float | None, pool: float | None
    ) -> AttemptTimeouts:
        """The caller's (or configured) timeouts, each cut to what is left of the call's deadline."""
        if self.deadline is None:
            return AttemptTimeouts(connect, read, write, pool)
        return AttemptTimeouts(*self.deadline.cut(connect, read, write, pool))

    # -- hedging (the async driver; the plan is _hedge.py's) -----------------------------------------------------

    def hedge_delay(self) -> float | None:
        """Seconds to wait for an attempt's answer before hedging it, or ``None`` when this call sends no hedge."""
        return self._hedges.delay() if self._hedges is not None else None

    def hedge(self, waited: float) -> Hedge | None:
        """Admit one more attempt alongside the one that has not answered in ``waited`` seconds, or ``None``: no
        hedge left, or a stage or the retry budget says no (a hedge never goes to an open breaker, never waits)."""
        policy, plan = self._policy, self._hedges
        if plan is None or not plan.left or self._done or policy.closed:
            return None
        permits: list[Any] = []
        answer = self._walk(permits)
        if answer is not None:
            if self._waits is not None:
                self._waits = None  # a hedge does not wait for a permit or a pause
            return None
        if policy.budget is not None and not policy.budget.try_spend():
            self._release(permits)
            self._deny("budget")
            return None
        self._attempts += 1
        hedge = plan.add(permits, policy.clock())
        if policy.hooks.retry_scheduled:
            url = redact_url(self.url)
            description = f"{self.method} {url}: no answer within {waited:.3f}s, hedged"
            event = RetryScheduled(policy.name, self.method, url, self._attempts, "hedge", 0.0, description)
            policy.hooks.emit(policy.hooks.retry_scheduled, event)
        return hedge

    def adopt(self, hedge: Hedge) -> None:
        """``hedge`` answered first: its attempt becomes the call's (the one it raced is given up without a
        verdict), and ``record`` judges its outcome."""
        assert self._hedges is not None
        self._hedges.remove(hedge)
        self._release(self._permits)
        self._permits = hedge.permits
        self._attempt_started = hedge.started

    def drop(self, hedge: Hedge) -> None:
        """``hedge`` lost the race (or the call was interrupted): give back what it holds, without a verdict."""
        if self._hedges is not None and self._hedges.remove(hedge):
            self._release(hedge.permits)

    # -- outcomes ------------------------------------------------------------------------------------------------

    def record(self, outcome: Outcome) -> Decision:
        """Record one attempt's outcome with the stages and observers, and decide whether to retry."""
        policy = self._policy
        now = policy.clock()
        seconds = now - self._attempt_started
        # A timeout at an `outbound.deadline` scope's end is the caller's budget running out (an inbound request may
        # ask for 20 ms), not the upstream failing: the stages get no verdict on it.
        scoped = outcome.deadline and self.deadline is not None and self.deadline.scoped
        judged = _NO_VERDICT if scoped else outcome
        for stage, permit in zip(policy.stages, self._permits, strict=True):
            stage.record(permit, judged, seconds)
        self._permits.clear()
        hooks = policy.hooks
        failure = judged is outcome and policy.breaker.is_failure(outcome)
        if hooks.attempt_finished:
            error = type(outcome.error).__name__ if outcome.error is not None else None
            finished = AttemptFinished(
                policy.name, self.method, self._attempts, outcome.kind, outcome.status, seconds, error, failure
            )
            hooks.emit(hooks.attempt_finished, finished)
        if outcome.refusal is not None:  # refused by a send gate: nothing was sent, so it was no attempt
            self._attempts -= 1
            self._refused(outcome.refusal, at_send=True)
            return DONE
        decision = self._decide(outcome, now)
        if decision.retry:
            if hooks.retry_scheduled:
                scheduled = RetryScheduled(
                    policy.name,
                    self.method,
                    redact_url(self.url),
                    self._attempts,
                    retry_reason(outcome),
                    decision.delay,
                    self.describe(outcome),
                )
                hooks.emit(hooks.retry_scheduled, scheduled)
            return decision
        self._release_call()
        error_type = message = None
        if outcome.kind is not Kind.RESPONSE:
            error_type = type(outcome.error).__name__ if outcome.error is not None else outcome.kind.name.title()
            message = self.describe(outcome)
        elif failure:
            error_type, message = "HTTPStatus", self.describe(outcome)
        self._end(outcome.kind, outcome.status, now, error_type, message)
        return decision

    def abandon(self) -> None:
        """The call was interrupted (``KeyboardInterrupt``, task cancellation, an error of our own): give back what
        it holds without a verdict and end it. Does nothing once the call has ended, so a driver may call it on
        every exit path."""
        if self._hedges is not None:
            for hedge in list(self._hedges.in_flight):
                self.drop(hedge)
        self._release(self._permits)
        self._permits.clear()
        if self._attempts and not self._done:
            self._end(Kind.CANCELLED, None, self._policy.clock(), None, None)
        self._release_call()

    def describe(self, outcome: Outcome) -> str:
        """``"GET https://host/path -> HTTP 503"`` or ``"read timeout on GET https://host/path (ReadTimeout)"``."""
        target = f"{self.method} {redact_url(self.url)}"
        if outcome.kind is Kind.RESPONSE:
            return f"{target} -> HTTP {outcome.status}"
        cause = type(outcome.error).__name__ if outcome.error is not None else ""
        what = "deadline expired" if outcome.deadline else outcome.kind.value
        return f"{what} on {target} ({cause})" if cause else f"{what} on {target}"

    # -- the walk, decisions and endings: every call ends once, in _end --------------------------------------------

    def _walk(self, permits: list[Any]) -> Rejection | Wait | None:
        """Ask each attempt stage in turn, collecting the permits they give; on a refusal, give back those."""
        for stage in self._policy.stages:
            permit = stage.admit(self)
            if type(permit) in _REFUSALS:
                self._release(permits)
                permits.clear()
                return permit  # type: ignore[no-any-return]
            permits.append(permit)
        return None

    def _decide(self, outcome: Outcome, now: float) -> Decision:
        hedged = self._hedges.sent if self._hedges is not None else 0  # hedges do not use up retry.total
        if self._attempts - hedged > self._max_retries or not self._replayable:
            return DONE
        decision = self._policy.retry.decide(outcome, self._attempts, self._idempotent, self.deadline, now)
        return self._deny(decision) if isinstance(decision, str) else decision

    def _deny(self, reason: str) -> Decision:
        hooks = self._policy.hooks
        if hooks.retry_denied:
            hooks.emit(hooks.retry_denied, RetryDenied(self._policy.name, self.method, reason))
        return DONE

    def _refused(self, rejection: Rejection, *, at_send: bool = False) -> Rejection:
        self._policy.rejected(self.method, rejection)
        if at_send and not self._attempts:
            # Its only attempt was refused as it was about to be written: nothing reached the upstream, so it is a
            # refusal like one at admission, not an error; it was admitted, so it ends as a call.
            self._end(Kind.REFUSED, None, self._policy.clock(), None, None)
        elif self._attempts and not self._done:  # a retry refused (the breaker opened meanwhile): the call ends
            # A refusal because the registry closed is our own shutdown: quiet, like an attempt it cut short.
            kind = Kind.CLOSED if rejection.reason is Reason.CLOSED else Kind.REFUSED
            message = f"{self.method} {redact_url(self.url)} refused before a retry: {rejection.reason}"
            self._end(kind, None, self._policy.clock(), REJECTED_ERRORS[rejection.reason].__name__, message)
        self._release_call()
        return rejection

    def _end(self, kind: Kind, status: int | None, now: float, error_type: str | None, message: str | None) -> None:
        # The statistics and the call log are fed directly; the event is built only when someone else listens, or
        # the log will write it (a success's record is DEBUG: usually off).
        self._done = True
        policy = self._policy
        seconds = now - self.started
        policy.stats.finished(kind, seconds, error_type, message)
        hooks = policy.hooks
        level = LOG_OBSERVER.call_level(kind, error_type)
        if hooks.call_finished or level is not None:
            outcome = CallOutcome.of(kind, error_type)
            event = CallFinished(
                policy.name, self.method, self._url, kind, status, self._attempts, seconds, error_type, message, outcome
            )
            if level is not None:
                LOG_OBSERVER.log_call(event, level)
            if hooks.call_finished:
                hooks.emit(hooks.call_finished, event)

    def _release(self, permits: list[Any]) -> None:
        # Permits are in the order of the stages that gave them (a refusal stops the list short).
        for stage, permit in zip(self._policy.stages, permits, strict=False):
            stage.release(permit)

    def _release_call(self) -> None:
        held = self._held
        while held:
            stage, permit = held.pop()
            stage.release(permit)
        waits = self._waits
        if waits:  # refused or interrupted while queued: leave the queues
            for waited in waits.stages():
                forget = getattr(waited, "forget", None)
                if forget is not None:
                    forget(self)
            self._waits = None
