"""Span facts (``"metrics": {"otel": true}``): what outbound knows about a call, added to the current span.

outbound makes no spans of its own: the contrib instrumentations do, and what is current when an event fires
depends on where each one wraps the client.

- opentelemetry-instrumentation-requests wraps ``Session.send``, and httpx's ``instrument_client()`` wraps the
  client's transport (outbound's): one CLIENT span around the whole call, current while every attempt runs. It gets
  the call's facts as attributes — ``outbound.service``, ``outbound.attempts``, ``outbound.breaker.state`` and, when
  the call was resent, ``http.request.resend_count`` — and an event per retry.
- httpx's ``instrument()`` wraps ``HTTPTransport.handle_request``, the transport outbound sends each attempt through:
  a CLIENT span per attempt, as the semantic conventions want for resends, and each has ended before outbound learns
  its outcome. The call's events (retries, refusals, breaker transitions) then go to the span around the call, and
  attributes are set on CLIENT spans only, never on a caller's server or internal span that may hold many calls.

A call refused before sending (breaker open) sends nothing, so no instrumentation makes a span for it; the current
span gets an ``outbound.rejected`` event.

The instrumentations put the whole URL in their spans (``http.url``, or ``url.full`` under the stable conventions),
query string included: ``?token=...`` would reach every trace backend. As each attempt is about to be written, the
current CLIENT span — the instrumentation's, whichever way it wraps the client — gets the URL without its query
string, fragment or credentials, as outbound's own messages show it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry.trace import Span, SpanKind, get_current_span
from opentelemetry.util.types import AttributeValue

from .._errors import redact_url
from .._events import (
    AttemptSending,
    BreakerTransition,
    CallFinished,
    CallRejected,
    Observer,
    RetryDenied,
    RetryScheduled,
)

if TYPE_CHECKING:
    from .._registry import Registry

SERVICE = "outbound.service"
BREAKER_STATE = "outbound.breaker.state"
# Where the instrumentations put the URL: the old HTTP conventions' name, and the stable one.
URL_ATTRIBUTES = ("http.url", "url.full")
_REDACTABLE = re.compile(r"[?#@]")  # a query, a fragment or credentials: what redact_url takes out


def _is_client(span: Span) -> bool:
    # The SDK's spans know their kind; the API's interface does not promise it.
    return getattr(span, "kind", None) is SpanKind.CLIENT


class SpanObserver(Observer):
    """Adds the events of a registry's calls to the current span (see the module's docstring for which span).

    Every method returns at once when the current span is not recording (no tracing set up, or not sampled).
    """

    def __init__(self, registry: Registry) -> None:
        self._breakers = {service.name: service.policy.breaker for service in registry}

    def attempt_sending(self, event: AttemptSending) -> None:
        span = get_current_span()
        if not span.is_recording() or not _is_client(span):
            return
        attributes = getattr(span, "attributes", None) or {}  # the SDK's spans show theirs; the API promises none
        for key in URL_ATTRIBUTES:
            value = attributes.get(key)
            if isinstance(value, str) and _REDACTABLE.search(value):
                span.set_attribute(key, redact_url(value))

    def call_finished(self, event: CallFinished) -> None:
        span = get_current_span()
        if not span.is_recording() or not _is_client(span):
            return
        attributes: dict[str, AttributeValue] = {
            SERVICE: event.service,
            "outbound.attempts": event.attempts,
            BREAKER_STATE: self._breakers[event.service].effective_state(),
        }
        if event.attempts > 1:
            attributes["http.request.resend_count"] = event.attempts - 1
        span.set_attributes(attributes)

    def retry_scheduled(self, event: RetryScheduled) -> None:
        _add_event(
            "outbound.retry", event.service, {"reason": event.reason, "attempt": event.attempt, "delay": event.delay}
        )

    def retry_denied(self, event: RetryDenied) -> None:
        _add_event("outbound.retry_denied", event.service, {"denied_by": event.reason}, prefix="outbound.retry")

    def call_rejected(self, event: CallRejected) -> None:
        span = _add_event("outbound.rejected", event.service, {"reason": event.reason, "retry_in": event.retry_in})
        if span is not None and _is_client(span):  # refused inside an instrumented send: that span is this call's
            state = self._breakers[event.service].effective_state()
            span.set_attributes({SERVICE: event.service, BREAKER_STATE: state})

    def breaker_transition(self, event: BreakerTransition) -> None:
        facts = {"previous_state": event.old, "state": event.new, "reason": event.reason}
        _add_event("outbound.breaker", event.service, facts)


def _add_event(name: str, service: str, facts: Mapping[str, AttributeValue | None], *, prefix: str = "") -> Span | None:
    """Add event ``name`` to the current span when it records, each fact an attribute ``{prefix or name}.{fact}``
    (``outbound.retry.reason``; a fact that is ``None`` is left out); the span, or ``None`` when it does not record."""
    span = get_current_span()
    if not span.is_recording():
        return None
    attributes: dict[str, AttributeValue] = {SERVICE: service}
    for fact, value in facts.items():
        if value is not None:
            attributes[f"{prefix or name}.{fact}"] = value
    span.add_event(name, attributes)
    return span
