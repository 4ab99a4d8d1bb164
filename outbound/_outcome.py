"""The sans-IO vocabulary shared by the policy, its stages, the observers and the backends.

An attempt comes to an ``Outcome``; the policy answers it with a ``Decision``; a call refused before anything is
sent gets a ``Rejection`` (or a ``Wait`` when it may be admitted a little later), whose ``Reason`` is spelled once,
here, for every reader (the errors, the stats, the metrics, the call log); a call that ended is summed up by its
``CallOutcome``. None of these know about requests or httpx: each backend maps them to its exceptions at one
boundary (``_backends/_errors.py``).
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import NamedTuple


class Kind(enum.Enum):
    """What one attempt came to."""

    RESPONSE = "response"
    CONNECT_ERROR = "connect error"
    CONNECT_TIMEOUT = "connect timeout"
    READ_TIMEOUT = "read timeout"
    WRITE_TIMEOUT = "write timeout"
    READ_ERROR = "read error"
    POOL_TIMEOUT = "pool timeout"
    # TLS, proxy, an invalid request...: not the upstream's availability, never retried or counted.
    OTHER_ERROR = "error"
    # A mocking library (responses, respx) refused the request: the mock's verdict, not the upstream's.
    MOCK_REFUSED = "refused by the mock"
    # The registry was closed while the attempt ran: our own shutdown, never the upstream's failure.
    CLOSED = "closed"
    # The caller interrupted the call (KeyboardInterrupt, task cancellation): no verdict on anyone.
    CANCELLED = "cancelled"
    # A stage refused the attempt when its connection was in hand, before a byte was sent (``Outcome.refusal``).
    REFUSED = "refused"


NOTHING_SENT = frozenset({Kind.CONNECT_ERROR, Kind.CONNECT_TIMEOUT})
# Attempts that say nothing about the upstream's health: they free a half-open trial slot without a verdict.
NO_VERDICT = frozenset(
    {Kind.POOL_TIMEOUT, Kind.OTHER_ERROR, Kind.MOCK_REFUSED, Kind.CLOSED, Kind.CANCELLED, Kind.REFUSED}
)
UPSTREAM_FAILURES = frozenset(
    {Kind.CONNECT_ERROR, Kind.CONNECT_TIMEOUT, Kind.READ_TIMEOUT, Kind.WRITE_TIMEOUT, Kind.READ_ERROR}
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result. ``error`` is the backend's exception, ``status``/``retry_after`` the response's.

    ``deadline`` marks a timeout caused by the call's total deadline rather than a per-phase limit; ``refusal`` is
    the stage's answer to an attempt refused at the connection (``Kind.REFUSED``); ``expected`` marks a status that
    is this path's answer (``sdk.expected``: Vault's 429 and 503 on ``/sys/health``), neither a failure nor retried.
    """

    kind: Kind
    status: int | None = None
    retry_after: str | None = None
    error: Exception | None = None
    deadline: bool = False
    refusal: Rejection | None = None
    expected: bool = False


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


class Decision(NamedTuple):
    """Retry after ``delay`` seconds, or stop (``retry=False``) with the last outcome."""

    retry: bool
    delay: float = 0.0


DONE = Decision(retry=False)


class Reason(str, enum.Enum):
    """Why a call, or an attempt of it, was refused before anything was sent."""

    CIRCUIT_OPEN = "circuit_open"
    BULKHEAD_FULL = "bulkhead_full"
    RATE_LIMITED = "rate_limited"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    EGRESS_DENIED = "egress_denied"
    CONCURRENCY_LIMITED = "concurrency_limited"
    THROTTLED = "throttled"
    CLOSED = "closed"

    def __str__(self) -> str:
        return self.value

    @property
    def text(self) -> str:
        """The refusal in words, for messages: ``"circuit breaker is open"``."""
        return _REASON_TEXT[self]


_REASON_TEXT = {
    Reason.CIRCUIT_OPEN: "circuit breaker is open",
    Reason.BULKHEAD_FULL: "too many calls in flight (bulkhead full)",
    Reason.RATE_LIMITED: "rate limited",
    Reason.DEADLINE_EXCEEDED: "too little time left before the deadline",
    Reason.EGRESS_DENIED: "egress denied",
    Reason.CONCURRENCY_LIMITED: "the adaptive concurrency limit is reached",
    Reason.THROTTLED: "throttled while the upstream refuses most calls",
    Reason.CLOSED: "the outbound registry was closed",
}


class CallOutcome(str, enum.Enum):
    """How a logical call ended, as metrics and logs class it."""

    SUCCESS = "success"  # a response that is not a failure status
    FAILURE = "failure"  # a response with a failure status (breaker.failure_statuses)
    ERROR = "error"  # no response: a connection error, a timeout, a pool timeout, a TLS error...
    REJECTED = "rejected"  # refused before sending: breaker open, bulkhead full, rate limited, deadline
    CANCELLED = "cancelled"  # interrupted by the caller or by the registry's close(): no verdict on anyone

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, kind: Kind, error_type: str | None) -> CallOutcome:
        """How a call that ended in ``kind`` with ``error_type`` (``"HTTPStatus"``: a failure status) is classed."""
        if kind is Kind.CANCELLED or kind is Kind.CLOSED:
            return cls.CANCELLED
        if kind is Kind.REFUSED:
            return cls.REJECTED
        if error_type is None:
            return cls.SUCCESS
        return cls.FAILURE if error_type == "HTTPStatus" else cls.ERROR


class Rejection(NamedTuple):
    """A call (or a retry) refused before anything was sent.

    ``retry_in`` is the seconds until a call is likely to be admitted (0.0 when unknown or immediate);
    ``detail`` completes the error message (``"next trial in 3.0s"``).
    """

    reason: Reason
    retry_in: float
    detail: str


class Wait(NamedTuple):
    """Not yet: admit again after ``seconds`` (a rate limit's next permit, a paused upstream, a full bulkhead).

    ``wake`` is set by the stage when room frees up before then, so a waiting thread need not sleep it out.
    """

    seconds: float
    wake: threading.Event | None = None
