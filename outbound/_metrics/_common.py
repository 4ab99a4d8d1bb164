"""What the Prometheus and OpenTelemetry observers share: the buckets, the label values and how a call is classed."""

from __future__ import annotations

from dataclasses import dataclass

from .._events import CallFinished
from .._outcome import CallOutcome


@dataclass(frozen=True, slots=True)
class Family:
    """One metric, as both exporters name it: Prometheus's name, OpenTelemetry's name and unit, and what it means."""

    prometheus: str
    otel: str
    unit: str
    description: str


REQUESTS = Family(
    "outbound_requests",
    "outbound.requests",
    "{request}",
    "Calls to upstream services by how they ended; retries inside a call are not counted again.",
)
DURATION = Family(
    "outbound_request_duration_seconds",
    "outbound.request.duration",
    "s",
    "Duration of calls that sent at least one attempt, retries and their waits included.",
)
RETRIES = Family(
    "outbound_retries", "outbound.retries", "{retry}", "Retries scheduled, by the failure that caused them."
)
SHORT_CIRCUITS = Family(
    "outbound_short_circuits",
    "outbound.short_circuits",
    "{call}",
    "Calls and retries refused because the circuit breaker was open.",
)
POOL_TIMEOUTS = Family(
    "outbound_pool_timeouts",
    "outbound.pool.timeouts",
    "{call}",
    "Calls that ended waiting for a free connection (timeout.pool).",
)
BUDGET_EXHAUSTED = Family(
    "outbound_retry_budget_exhausted",
    "outbound.retry_budget.exhausted",
    "{retry}",
    "Retries not made because the retry budget was spent.",
)
CIRCUIT_STATE = Family(
    "outbound_circuit_state",
    "outbound.circuit.state",
    "1",
    "1 for the circuit breaker's state (closed, open, half-open, isolated), 0 for the others.",
)
SERVICE_STATUS = Family(
    "outbound_service_status",
    "outbound.service.status",
    "1",
    "1 for the service's health status (ok, degraded, failing, down), 0 for the others.",
)
POOL_CONNECTIONS = Family(
    "outbound_pool_connections",
    "outbound.pool.connections",
    "{connection}",
    "Pooled connections by state: carrying a request, or idle (kept alive for the next).",
)
POOL_WAITING = Family(
    "outbound_pool_waiting", "outbound.pool.waiting", "{call}", "Calls waiting for a free connection."
)
CACHE_ANSWERS = Family(
    "outbound_cache_answers",
    "outbound.cache.answers",
    "{response}",
    "What the cache of a service with one did, by result, since the process started or the service was reset.",
)
# The cache's counts (``_cache._layer.CacheCounts``) as the result label names them.
CACHE_RESULTS = {
    "hits": "hit",
    "misses": "miss",
    "stale": "stale",
    "stale_while_revalidate": "stale_while_revalidate",
    "revalidations": "revalidation",
    "stored": "stored",
    "fallbacks": "fallback",
    "storage_errors": "storage_error",
}

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
