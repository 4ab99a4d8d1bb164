"""What the policy tells the world: immutable events, and the ``Observer`` that receives them.

Every fact about a call — it started, an attempt finished, a retry was scheduled or denied, the call was rejected or
finished, a breaker changed state — is delivered here and nowhere else. ``Stats`` (health), the loggers, Prometheus,
OpenTelemetry and the fleet publisher are all observers, so a new consumer hooks into one place.

Events are ``NamedTuple``s: as immutable as frozen dataclasses and several times cheaper to build, which matters
because two are built for every call. An event is only built when some observer overrides its method (``Hooks``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from ._errors import redact_url
from ._outcome import CallOutcome, Kind, Reason

logger = logging.getLogger("outbound.observer")


class CallStarted(NamedTuple):
    """A logical call was admitted (its first attempt is about to be sent)."""

    service: str
    method: str


class AttemptFinished(NamedTuple):
    """One attempt ended. ``seconds`` is its own duration; ``error`` the backend exception's class name."""

    service: str
    method: str
    attempt: int
    kind: Kind
    status: int | None
    seconds: float
    error: str | None
    failure: bool  # counted against the upstream by the breaker


class AttemptSending(NamedTuple):
    """An attempt's connection is in hand and its request is about to be written (every send gate let it pass).
    Delivered on the calling thread or task, inside the client library's own span, if it has one."""

    service: str
    method: str
    attempt: int


class RetryScheduled(NamedTuple):
    """The call will be retried after ``delay`` seconds. ``reason`` is low-cardinality (``"status_503"``,
    ``"connect_error"``, ``"read_timeout"``...); ``url`` is redacted."""

    service: str
    method: str
    url: str
    attempt: int
    reason: str
    delay: float
    description: str  # the failed attempt in words, for the retry log line


class RetryDenied(NamedTuple):
    """A retryable failure was not retried: ``reason`` is ``"budget"``, ``"deadline"``, ``"breaker"`` or
    ``"retry_after"`` (the upstream asked for a longer wait than allowed)."""

    service: str
    method: str
    reason: str


class CallRejected(NamedTuple):
    """A call or a retry was refused before sending (breaker open, bulkhead full, rate limited, deadline)."""

    service: str
    method: str
    reason: Reason
    retry_in: float


class CallFinished(NamedTuple):
    """A logical call ended, after ``attempts`` attempts and ``seconds`` in all.

    ``status`` is the final response's status (``None`` when it ended in an error); ``error_type`` and
    ``error_message`` describe a failure (a failure status counts: ``"HTTPStatus"``; messages are redacted).
    ``url`` is the URL without credentials, query or fragment, computed when read (redacting costs a few
    microseconds a success need not pay); ``target`` is the raw URL the call was made with and may hold secrets.
    ``outcome`` classes the ending as metrics and logs do (success, failure, error, rejected, cancelled).
    """

    service: str
    method: str
    target: object
    kind: Kind
    status: int | None
    attempts: int
    seconds: float
    error_type: str | None
    error_message: str | None
    outcome: CallOutcome = CallOutcome.SUCCESS

    @property
    def url(self) -> str:
        return redact_url(str(self.target))


class BreakerTransition(NamedTuple):
    """A breaker changed state. ``reason`` says why in words (``"5 consecutive failures"``, ``"a trial call
    failed"``, ``"isolated by an operator"``, ``"opened by another process"``)."""

    service: str
    old: str
    new: str
    reason: str
    open_seconds: float  # how long it stays open (0.0 unless it opened)


class CacheServed(NamedTuple):
    """A call that failed (an error, a refusal, or an error status) was answered by the service's cache layer
    instead: ``kind`` is ``"stale"`` (a stored response past its freshness, within ``stale-if-error``) or
    ``"fallback"`` (the service's fallback); ``error`` names what it replaced (``"ReadTimeout"``, ``"status 503"``).
    The cache sits above the policy, so the call's own ``CallFinished`` (an error) came first."""

    service: str
    method: str
    kind: str
    error: str


class Observer:
    """Receives the policy's events. Subclass it and override the methods you need.

    Methods run on the calling thread (or task), inside the call, so they must be quick and must not block; an
    exception from one is logged (logger ``outbound.observer``) and never reaches the caller.
    """

    def call_started(self, event: CallStarted) -> None:
        """A call was admitted."""

    def attempt_sending(self, event: AttemptSending) -> None:
        """An attempt is about to be written."""

    def attempt_finished(self, event: AttemptFinished) -> None:
        """An attempt ended (success or not)."""

    def retry_scheduled(self, event: RetryScheduled) -> None:
        """A retry will follow after ``event.delay``."""

    def retry_denied(self, event: RetryDenied) -> None:
        """A retryable failure was not retried."""

    def call_rejected(self, event: CallRejected) -> None:
        """A call was refused before sending."""

    def call_finished(self, event: CallFinished) -> None:
        """A call ended."""

    def breaker_transition(self, event: BreakerTransition) -> None:
        """A breaker changed state."""

    def cache_served(self, event: CacheServed) -> None:
        """The cache layer answered a failed call (a stale stored response, or the fallback)."""


EVENT_METHODS = (
    "call_started",
    "attempt_sending",
    "attempt_finished",
    "retry_scheduled",
    "retry_denied",
    "call_rejected",
    "call_finished",
    "breaker_transition",
    "cache_served",
)


class Hooks:
    """The observers' overridden methods, one tuple per event, so an event nobody listens to is never built.

    ``hooks.call_finished`` is a tuple of callables; ``if hooks.call_finished: hooks.emit(hooks.call_finished, ...)``.
    """

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self.observers: tuple[Observer, ...] = ()
        self.call_started: tuple[Callable[[Any], None], ...] = ()
        self.attempt_sending: tuple[Callable[[Any], None], ...] = ()
        self.attempt_finished: tuple[Callable[[Any], None], ...] = ()
        self.retry_scheduled: tuple[Callable[[Any], None], ...] = ()
        self.retry_denied: tuple[Callable[[Any], None], ...] = ()
        self.call_rejected: tuple[Callable[[Any], None], ...] = ()
        self.call_finished: tuple[Callable[[Any], None], ...] = ()
        self.breaker_transition: tuple[Callable[[Any], None], ...] = ()
        self.cache_served: tuple[Callable[[Any], None], ...] = ()
        for observer in observers:
            self.add(observer)

    def add(self, observer: Observer) -> None:
        """Start delivering events to ``observer`` (only those of its methods that override ``Observer``'s)."""
        self.observers = (*self.observers, observer)
        for name in EVENT_METHODS:
            if getattr(type(observer), name) is not getattr(Observer, name):
                setattr(self, name, (*getattr(self, name), getattr(observer, name)))

    @staticmethod
    def emit(hooks: tuple[Callable[[Any], None], ...], event: object) -> None:
        for hook in hooks:
            try:
                hook(event)
            except Exception:
                # An observer's bug must not fail the caller's request, nor stop the other observers.
                logger.exception("outbound observer %r failed on %s", hook, type(event).__name__)
