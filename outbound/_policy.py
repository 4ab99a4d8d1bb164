"""The resilience pipeline, sans-IO: admit -> attempt outcome -> decision (retry after d / done).

It never sends, sleeps or awaits; it only decides. The requests adapter and the httpx sync and async transports
drive it the same way (DESIGN.md):

    call = policy.start(method, url, replayable=..., circuit_open_class=..., pool_timeout_class=...,
                        error_attributes=...)
    while True:
        call.admit()                        # raises CircuitOpenError (backend-flavoured) when rejected
        try:
            limits = call.attempt_timeouts(...)  # per-attempt timeouts cut to the remaining total deadline
            outcome = <one attempt, classified>
            decision = call.record(outcome)
            if not decision.retry: return response / raise call.error_for(outcome)
            sleep(decision.delay)
        except BaseException:
            call.abandon()                  # frees a trial slot and ends the call unless it already ended
            raise
"""

from __future__ import annotations

import enum
import logging
import random as _random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from ._breaker import OPEN, Admission, Breaker
from ._config import ServiceConfig
from ._errors import (
    CallError,
    CircuitOpenError,
    ConnectError,
    ConnectTimeoutError,
    PoolTimeoutError,
    ReadError,
    ReadTimeoutError,
    WriteTimeoutError,
    backend_error,
    redact_url,
)
from ._retry import RETRY_AFTER_STATUSES, RetryBudget, backoff_delay, parse_retry_after
from ._stats import Stats

logger = logging.getLogger("outbound.retry")  # public name, as outbound.breaker


class Kind(enum.Enum):
    """What one attempt came to."""

    RESPONSE = "response"
    CONNECT_ERROR = "connect error"
    CONNECT_TIMEOUT = "connect timeout"
    READ_TIMEOUT = "read timeout"
    WRITE_TIMEOUT = "write timeout"
    READ_ERROR = "read error"
    POOL_TIMEOUT = "pool timeout"
    OTHER_ERROR = "error"  # TLS, proxy, invalid request...: not the upstream's availability, never retried


# The outbound class each failed attempt is raised as (combined with the backend's own exception class).
ERROR_CLASSES: Mapping[Kind, type[CallError]] = {
    Kind.CONNECT_ERROR: ConnectError,
    Kind.CONNECT_TIMEOUT: ConnectTimeoutError,
    Kind.READ_TIMEOUT: ReadTimeoutError,
    Kind.WRITE_TIMEOUT: WriteTimeoutError,
    Kind.READ_ERROR: ReadError,
    Kind.POOL_TIMEOUT: PoolTimeoutError,
    Kind.OTHER_ERROR: CallError,
}
_NOTHING_SENT = frozenset({Kind.CONNECT_ERROR, Kind.CONNECT_TIMEOUT})
_NO_VERDICT = frozenset({Kind.POOL_TIMEOUT, Kind.OTHER_ERROR})  # says nothing about the upstream's health
_UPSTREAM_FAILURES = frozenset(
    {Kind.CONNECT_ERROR, Kind.CONNECT_TIMEOUT, Kind.READ_TIMEOUT, Kind.WRITE_TIMEOUT, Kind.READ_ERROR}
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result. ``error`` is the backend's exception, ``status``/``retry_after`` the response's."""

    kind: Kind
    status: int | None = None
    retry_after: str | None = None
    error: Exception | None = None


_RESPONSES: dict[int, Outcome] = {}


def response_outcome(status: int, retry_after: str | None = None) -> Outcome:
    """The outcome of an attempt that got a response.

    Outcomes are immutable, so one per status is shared when there is no ``Retry-After``: a frozen dataclass costs
    about a microsecond to build, a noticeable share of what a successful call's bookkeeping costs.
    """
    if retry_after is not None:
        return Outcome(Kind.RESPONSE, status=status, retry_after=retry_after)
    outcome = _RESPONSES.get(status)
    if outcome is None:  # at most one per status code a server can send
        outcome = _RESPONSES.setdefault(status, Outcome(Kind.RESPONSE, status=status))
    return outcome


@dataclass(frozen=True, slots=True)
class Decision:
    retry: bool
    delay: float = 0.0


DONE = Decision(retry=False)


class AttemptTimeouts(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: as immutable, and built on every attempt at half the cost.
    connect: float | None
    read: float | None
    write: float | None
    pool: float | None


class Policy:
    """One service's breaker, retry budget and stats, and the rules that combine them."""

    def __init__(
        self,
        config: ServiceConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.config = config
        self.clock = clock
        self.random = random
        self.breaker = Breaker(config.name, config.breaker, clock=clock)
        self.budget = RetryBudget(config.retry.budget, clock=clock) if config.retry.budget else None
        self.stats = Stats()

    def start(
        self,
        method: str,
        url: object,
        *,
        replayable: bool,
        circuit_open_class: type[Exception],
        pool_timeout_class: type[Exception],
        error_attributes: dict[str, object],
    ) -> Call:
        """Begin one logical call.

        ``url`` is a string or anything whose ``str()`` is the URL (httpx's ``URL``): it is formatted only when a
        message needs it. ``*_class`` are the backend's exception classes the outbound errors extend;
        ``error_attributes`` are set on every error raised (``request``/``response`` for requests, ``_request`` for
        httpx).
        """
        return Call(self, method.upper(), url, replayable, circuit_open_class, pool_timeout_class, error_attributes)

    def reject_if_open(self, circuit_open_class: type[Exception], error_attributes: dict[str, object]) -> None:
        """Raise ``CircuitOpenError`` when the breaker is open, before any per-request work is done.

        A cheap early gate for the session/client layer; the transport still gates every attempt.
        """
        if self.breaker.state == OPEN:
            retry_in = self.breaker.retry_in()
            if retry_in is not None:
                self.stats.rejected()
                raise _circuit_open(self.config.name, retry_in, circuit_open_class, error_attributes)

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's other threads, their locks, calls and trial slots do not exist here."""
        self.breaker.reset_after_fork()
        self.stats.reset_after_fork()
        if self.budget is not None:
            self.budget.reset_lock()


def _circuit_open(
    service: str, retry_in: float, backend_cls: type[Exception], attributes: dict[str, object]
) -> CallError:
    when = f"next trial in {retry_in:.1f}s" if retry_in > 0 else "a trial call is in flight"
    message = f"{service}: circuit breaker is open ({when}); nothing was sent"
    error = backend_error(CircuitOpenError, backend_cls, message, service=service, attributes=attributes)
    error.retry_in = retry_in  # type: ignore[attr-defined]
    return error


class Call:
    """The state of one logical call across its attempts. Used by one thread or task at a time."""

    # One is built per call: slots make that cheaper and smaller.
    __slots__ = (
        "_admission",
        "_attempts",
        "_circuit_open_class",
        "_counted",
        "_deadline",
        "_done",
        "_error_attributes",
        "_policy",
        "_pool_timeout_class",
        "_replayable",
        "_started",
        "_url",
        "method",
    )

    def __init__(
        self,
        policy: Policy,
        method: str,
        url: object,
        replayable: bool,
        circuit_open_class: type[Exception],
        pool_timeout_class: type[Exception],
        error_attributes: dict[str, object],
    ) -> None:
        self._policy = policy
        self._error_attributes = error_attributes
        self.method = method
        self._url = url
        self._replayable = replayable
        self._circuit_open_class = circuit_open_class
        self._pool_timeout_class = pool_timeout_class
        self._started = policy.clock()
        total = policy.config.timeout.total
        self._deadline = self._started + total if total is not None else None
        self._admission: Admission | None = None
        self._attempts = 0
        self._counted = False
        self._done = False

    @property
    def url(self) -> str:
        return str(self._url)

    def admit(self) -> None:
        """Let one attempt through, or raise the backend-flavoured ``CircuitOpenError``."""
        policy = self._policy
        admission = policy.breaker.admit()
        if not admission.admitted:
            if self._counted:  # a retry refused by a breaker that opened meanwhile: the call still ends here
                self._finish(("CircuitOpenError", "circuit breaker opened"))
            policy.stats.rejected()
            raise _circuit_open(
                policy.config.name, admission.retry_in, self._circuit_open_class, self._error_attributes
            )
        self._admission = admission
        self._attempts += 1
        if not self._counted:
            self._counted = True
            policy.stats.call_started()
            if policy.budget is not None:
                policy.budget.record_request()

    def attempt_timeouts(
        self,
        connect: float | None,
        read: float | None,
        write: float | None,
        pool: float | None,
    ) -> AttemptTimeouts:
        """The caller's (or configured) timeouts, each cut to what is left of ``timeout.total``."""
        if self._deadline is None:
            return AttemptTimeouts(connect, read, write, pool)
        left = max(0.001, self._deadline - self._policy.clock())
        # Spelled out rather than a generator over the four: this runs on every attempt.
        return AttemptTimeouts(
            left if connect is None else min(connect, left),
            left if read is None else min(read, left),
            left if write is None else min(write, left),
            left if pool is None else min(pool, left),
        )

    def record(self, outcome: Outcome) -> Decision:
        """Record one attempt's outcome with the breaker and stats, and decide whether to retry."""
        policy = self._policy
        admission = self._admission
        assert admission is not None, "record() without admit()"
        self._admission = None
        failed = self._is_failure(outcome)
        if failed:
            policy.breaker.record_failure(admission)
        elif outcome.kind in _NO_VERDICT:
            policy.breaker.release(admission)
        else:
            policy.breaker.record_success(admission)

        decision = self._decide(outcome)
        if decision.retry:
            policy.stats.retried()
            logger.debug(
                "%s: retrying %s %s after %s (retry %d, in %.3fs)",
                policy.config.name,
                self.method,
                redact_url(self.url),
                self._describe(outcome),
                self._attempts,
                decision.delay,
            )
            return decision
        error = None
        if failed or outcome.kind is not Kind.RESPONSE:  # described only when kept: a success costs no formatting
            error = (type(outcome.error).__name__ if outcome.error else "HTTPStatus", self._describe(outcome))
        self._finish(error, outcome.kind is Kind.POOL_TIMEOUT)
        return decision

    def abandon(self) -> None:
        """The call was interrupted (``KeyboardInterrupt``, task cancellation, an error of our own): give back its
        trial slot without a verdict and end it. Does nothing once the call has ended, so backends may call it on
        every exit path."""
        if self._admission is not None:
            self._policy.breaker.release(self._admission)
            self._admission = None
        if self._counted and not self._done:
            self._finish(None)

    def error_for(self, outcome: Outcome) -> CallError:
        """The exception to raise for a failed final attempt: outbound's class and the backend's, message redacted."""
        original = outcome.error
        assert original is not None
        backend_cls: type[Exception] = type(original)
        if outcome.kind is Kind.POOL_TIMEOUT:
            backend_cls = (
                self._pool_timeout_class if not isinstance(original, self._pool_timeout_class) else backend_cls
            )
        message = f"{self._policy.config.name}: {self._describe(outcome)}"
        if self._attempts > 1:
            message += f" (after {self._attempts} attempts)"
        attributes = dict(self._error_attributes)
        attributes.update((key, value) for key, value in vars(original).items() if key in attributes)
        return backend_error(
            ERROR_CLASSES[outcome.kind], backend_cls, message, service=self._policy.config.name, attributes=attributes
        )

    def _is_failure(self, outcome: Outcome) -> bool:
        if outcome.kind is Kind.RESPONSE:
            return outcome.status in self._policy.config.breaker.failure_statuses
        return outcome.kind in _UPSTREAM_FAILURES

    def _decide(self, outcome: Outcome) -> Decision:
        policy = self._policy
        retry = policy.config.retry
        if self._attempts > retry.total or not self._replayable:
            return DONE
        if outcome.kind is Kind.RESPONSE:
            if outcome.status not in retry.status_forcelist or self.method not in retry.allowed_methods:
                return DONE
        elif outcome.kind not in _NOTHING_SENT and (
            outcome.kind not in _UPSTREAM_FAILURES or self.method not in retry.allowed_methods
        ):
            return DONE
        if policy.breaker.state == OPEN:
            return DONE  # the breaker tripped: stop hammering, report what we have

        delay = backoff_delay(retry, self._attempts, policy.random)
        if outcome.kind is Kind.RESPONSE and retry.respect_retry_after and outcome.status in RETRY_AFTER_STATUSES:
            asked = parse_retry_after(outcome.retry_after)
            if asked is not None:
                if asked > retry.retry_after_max:
                    return DONE  # the upstream asks for longer than we may hold a worker: answer now
                delay = asked
        if self._deadline is not None and policy.clock() + delay >= self._deadline:
            return DONE
        if policy.budget is not None and not policy.budget.try_spend():
            return DONE
        return Decision(retry=True, delay=delay)

    def _describe(self, outcome: Outcome) -> str:
        target = f"{self.method} {redact_url(self.url)}"
        if outcome.kind is Kind.RESPONSE:
            return f"{target} -> HTTP {outcome.status}"
        cause = type(outcome.error).__name__ if outcome.error else ""
        return f"{outcome.kind.value} on {target} ({cause})"

    def _finish(self, error: tuple[str, str] | None, pool_timeout: bool = False) -> None:
        self._done = True
        self._policy.stats.call_finished(self._policy.clock() - self._started, error, pool_timeout=pool_timeout)
