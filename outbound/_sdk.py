"""A service's client handed to a vendor SDK (openai, anthropic, stripe...): one retry layer, refusals that stay fast.

The SDKs retry whatever their transport raises as a connection error, with their own backoff: an open breaker's
``CircuitOpenError`` (an ``httpx.TransportError`` / ``requests.ConnectionError``) would be retried for a second or
more and then surface as ``APIConnectionError('Connection error.')``. What every one of them honours is a response
that says not to retry it: openai and anthropic read ``x-should-retry: false``, stripe ``stripe-should-retry:
false``. A service with an ``sdk`` section therefore answers, instead of raising:

    error                                   status  x-outbound-refusal    SDK error (openai / anthropic / stripe)
    CircuitOpenError                        503     circuit_open          InternalServerError / APIError
    BulkheadFullError                       503     bulkhead_full         InternalServerError / APIError
    RateLimitedError (limit or pause)       429     rate_limited          RateLimitError
    ConcurrencyLimitedError                 503     concurrency_limited   InternalServerError / APIError
    ThrottledError                          503     throttled             InternalServerError / APIError
    DeadlineExceededError                   504     deadline_exceeded     InternalServerError / APIError
    RegistryClosedError                     503     registry_closed       InternalServerError / APIError
    EventLoopMismatchError                  500     event_loop_mismatch   InternalServerError / APIError

with ``x-should-retry: false``, ``stripe-should-retry: false``, ``Retry-After`` when the refusal knows when it ends,
and a JSON body in the shape the SDKs read their messages from (``{"error": {"type", "code", "message"}}``) plus
an ``outbound`` object (``service``, ``reason``, ``retry_in``). The error itself rides along on the response
(``response.extensions["outbound.error"]`` for httpx, ``response.outbound_error`` for requests);
``outbound.sdk_error(exc)`` finds it from the SDK's exception.

``final_responses``: a response with a status in ``retry.status_forcelist`` that outbound already retried (more than
one attempt) is marked the same way, so the SDK does not retry what outbound gave up on: one SDK call reaches the
upstream at most ``retry.total + 1`` times. A request that is itself an SDK's retry (``x-stainless-retry-count``
above 0) which outbound retried too is logged on ``outbound.call`` at INFO: both layers retried.

``expected``: statuses that are a path's answer (Vault answers ``/sys/health`` with 429 when standby and 503 when
sealed, on purpose): on that path they are neither breaker failures nor retried, and their ``Retry-After`` pauses
nothing.

``timeout_max``: a per-call timeout the SDK asks for (stripe's 80 s, hvac's 30 s, openai's ``timeout=``) replaces the
service's read and extends its total, as any caller's does; this caps it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from urllib.parse import urlsplit

from ._config import SdkConfig, ServiceConfig
from ._errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConcurrencyLimitedError,
    DeadlineExceededError,
    EventLoopMismatchError,
    OutboundError,
    RateLimitedError,
    RegistryClosedError,
    RejectedError,
    ThrottledError,
)
from ._outcome import Kind, Outcome

__all__ = ["ANSWERED", "EXTENSION", "Answer", "answer", "both_retried", "cap", "expected_paths", "judged", "sdk_error"]

call_logger = logging.getLogger("outbound.call")

# The errors a service with ``sdk.answer_refusals`` answers instead of raising.
ANSWERED: tuple[type[Exception], ...] = (RejectedError, RegistryClosedError, EventLoopMismatchError)
# Where an httpx response carries the error it answers.
EXTENSION = "outbound.error"
# The header naming the refusal; the SDKs' exceptions keep the response's headers.
REFUSAL_HEADER = "x-outbound-refusal"
# Response headers the SDKs read before retrying: openai and anthropic (Stainless), stripe.
DO_NOT_RETRY: Mapping[str, str] = {"x-should-retry": "false", "stripe-should-retry": "false"}
# The SDK retry count Stainless SDKs (openai, anthropic) send with every attempt.
SDK_RETRY_HEADER = "x-stainless-retry-count"

# Most specific first.
_STATUSES: tuple[tuple[type[Exception], int, str], ...] = (
    (CircuitOpenError, 503, "circuit_open"),
    (BulkheadFullError, 503, "bulkhead_full"),
    (RateLimitedError, 429, "rate_limited"),
    (ConcurrencyLimitedError, 503, "concurrency_limited"),
    (ThrottledError, 503, "throttled"),
    (DeadlineExceededError, 504, "deadline_exceeded"),
    (RejectedError, 503, "rejected"),
    (RegistryClosedError, 503, "registry_closed"),
    (EventLoopMismatchError, 500, "event_loop_mismatch"),
)


class Answer:
    """The response a refusal becomes: ``status``, ``headers``, ``body`` (JSON bytes)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def answer(error: Exception, service: str) -> Answer:
    """The response that answers ``error`` (one of ``ANSWERED``) for ``service``."""
    status, reason = 503, "rejected"
    for cls, found_status, found_reason in _STATUSES:
        if isinstance(error, cls):
            status, reason = found_status, found_reason
            break
    retry_in = _retry_in(getattr(error, "retry_in", 0.0))
    message = f"outbound refused the call ({reason}): {error}"
    body = {
        "type": "error",
        "error": {"type": "outbound_refusal", "code": reason, "message": message},
        "outbound": {"service": service, "reason": reason, "retry_in": retry_in},
    }
    headers = {"content-type": "application/json", REFUSAL_HEADER: reason, **DO_NOT_RETRY}
    if retry_in is not None:
        headers["retry-after"] = str(retry_in)
    return Answer(status, headers, json.dumps(body).encode())


def _retry_in(seconds: float) -> int | None:
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return math.ceil(seconds)


def cap(timeout: float | None, config: SdkConfig) -> float | None:
    """A per-call timeout the caller asked for, cut to ``timeout_max`` (``None``, no limit, becomes the cap)."""
    most = config.timeout_max
    if most is None:
        return timeout
    return most if timeout is None else min(timeout, most)


def both_retried(service: str, method: str, sdk_retry: str | None, attempts: int) -> None:
    """Log, at INFO on ``outbound.call``, a call that outbound retried and that is itself an SDK's retry."""
    if attempts > 1 and sdk_retry not in (None, "0"):
        call_logger.info(
            "%s call to %r was retried by both outbound (%d attempts) and the SDK (its retry %s): give the SDK "
            "max_retries=0, or the service sdk.final_responses",
            method,
            service,
            attempts,
            sdk_retry,
        )


Expected = tuple[tuple[str, frozenset[int]], ...]


def expected_paths(config: ServiceConfig) -> Expected:
    """``sdk.expected`` as (URL path prefix, statuses), longest prefix first."""
    sdk = config.sdk
    if sdk is None or not sdk.expected:
        return ()
    base = urlsplit(config.base_url).path or "/"
    found = [(base + path, statuses) for path, statuses in sdk.expected.items()]
    return tuple(sorted(found, key=lambda item: len(item[0]), reverse=True))


def judged(expected: Expected, path: str, outcome: Outcome) -> Outcome:
    """``outcome`` marked ``expected`` when its status is the answer of the path (``sdk.expected``)."""
    if outcome.kind is not Kind.RESPONSE:
        return outcome
    for prefix, statuses in expected:
        if path.startswith(prefix):
            if outcome.status in statuses:
                # Without Retry-After: an expected answer does not pause the service either.
                return Outcome(Kind.RESPONSE, status=outcome.status, expected=True)
            return outcome
    return outcome


def sdk_error(error: BaseException) -> OutboundError | None:
    """The outbound error behind an SDK's exception, or ``None``.

    Looks at the answer's response (``exc.response``, as openai and anthropic keep it) and along the exception's
    ``__cause__`` / ``__context__`` chain (an SDK that wrapped outbound's exception). stripe keeps only the status,
    headers and body: there, ``exc.headers["x-outbound-refusal"]`` and ``exc.json_body["outbound"]`` say it.
    """
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 10:  # chains can be cyclic: bounded
        if isinstance(current, OutboundError):
            return current
        response = getattr(current, "response", None)
        found = getattr(response, "outbound_error", None)
        if found is None:
            extensions = getattr(response, "extensions", None)
            found = extensions.get(EXTENSION) if isinstance(extensions, Mapping) else None
        if isinstance(found, OutboundError):
            return found
        current = current.__cause__ or current.__context__
        seen += 1
    return None
