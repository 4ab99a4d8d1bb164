"""What the Prometheus and OpenTelemetry observers share: the buckets, the label values and how a call is classed."""

from __future__ import annotations

from .._events import CallFinished
from .._outcome import CallOutcome

# OpenTelemetry's boundaries for http.client.request.duration (seconds), so outbound's histogram lines up with the
# instrumentations' per-attempt one.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

# How a call ended, as the metrics label it: _outcome.CallOutcome's values.
SUCCESS, FAILURE, ERROR, REJECTED, CANCELLED = (outcome.value for outcome in CallOutcome)
OUTCOMES = (SUCCESS, FAILURE, ERROR, REJECTED, CANCELLED)

# The methods OpenTelemetry's HTTP conventions name; any other becomes "_OTHER", so a caller's typo (or a hostile
# method) cannot create label values without bound.
_KNOWN_METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
_METHODS = {method: method for method in _KNOWN_METHODS} | {method.lower(): method for method in _KNOWN_METHODS}
OTHER_METHOD = "_OTHER"


def method_label(method: str) -> str:
    """``method`` upper-case, or ``"_OTHER"`` for a method outside the HTTP conventions' list."""
    return _METHODS.get(method) or _METHODS.get(method.upper(), OTHER_METHOD)


def status_label(status: int | None) -> str:
    """The final status code as text; empty when no response arrived (Prometheus treats that as no label)."""
    return "" if status is None else str(status)


def call_outcome(event: CallFinished) -> str:
    """How a call that sent at least one attempt ended (one of ``OUTCOMES``)."""
    return event.outcome.value
