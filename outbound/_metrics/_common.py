"""What the Prometheus and OpenTelemetry observers share: the buckets, the label values and how a call is classed."""

from __future__ import annotations

from .._events import CallFinished
from .._outcome import Kind
from .._policy import _REJECTION_TYPES

# OpenTelemetry's boundaries for http.client.request.duration (seconds), so outbound's histogram lines up with the
# instrumentations' per-attempt one.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

SUCCESS = "success"  # a response that is not a failure status
FAILURE = "failure"  # a response with a failure status (breaker.failure_statuses)
ERROR = "error"  # no response: a connection error, a timeout, a pool timeout, a TLS error...
REJECTED = "rejected"  # refused before sending: breaker open, bulkhead full, rate limited, deadline
CANCELLED = "cancelled"  # interrupted by the caller or by the registry's close(): no verdict on anyone
OUTCOMES = (SUCCESS, FAILURE, ERROR, REJECTED, CANCELLED)

# The methods OpenTelemetry's HTTP conventions name; any other becomes "_OTHER", so a caller's typo (or a hostile
# method) cannot create label values without bound.
_KNOWN_METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
_METHODS = {method: method for method in _KNOWN_METHODS} | {method.lower(): method for method in _KNOWN_METHODS}
OTHER_METHOD = "_OTHER"

_INTERRUPTED = frozenset({Kind.CANCELLED, Kind.CLOSED})
# A call whose retry was refused ends with the refusal's error type (the policy's _finish_rejected).
_REJECTIONS = frozenset({*_REJECTION_TYPES.values(), "RejectedError"})


def method_label(method: str) -> str:
    """``method`` upper-case, or ``"_OTHER"`` for a method outside the HTTP conventions' list."""
    return _METHODS.get(method) or _METHODS.get(method.upper(), OTHER_METHOD)


def status_label(status: int | None) -> str:
    """The final status code as text; empty when no response arrived (Prometheus treats that as no label)."""
    return "" if status is None else str(status)


def call_outcome(event: CallFinished) -> str:
    """How a call that sent at least one attempt ended (one of ``OUTCOMES``)."""
    error_type = event.error_type
    if error_type is None:
        return SUCCESS
    if error_type == "HTTPStatus":
        return FAILURE
    if event.kind in _INTERRUPTED:
        return CANCELLED
    if event.kind is Kind.OTHER_ERROR and event.status is None and error_type in _REJECTIONS:
        return REJECTED
    return ERROR
