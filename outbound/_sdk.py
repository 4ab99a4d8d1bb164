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
    PoolTimeoutError                        503     pool_timeout          InternalServerError / APIError

with ``x-should-retry: false``, ``stripe-should-retry: false``, ``Retry-After`` when the refusal knows when it ends,
and a JSON body in the shape the SDKs read their messages from (``{"error": {"type", "code", "message"}}``) plus
an ``outbound`` object (``service``, ``reason``, ``retry_in``). The error itself rides along on the response
(``response.extensions["outbound.error"]`` for httpx, ``response.outbound_error`` for requests);
``outbound.sdk_error(exc)`` finds it from the SDK's exception.

``final_responses``: a response with a status in ``retry.status_forcelist`` that outbound already retried (more than
one attempt) is marked the same way, so the SDK does not retry what outbound gave up on: one SDK call reaches the
upstream at most ``retry.total + 1`` times. A transport failure the call raises is one outbound gave up on too (its
retries spent or denied, or not retryable: a read timeout of a POST may have been acted on), so it is answered the
same way, with ``x-outbound-failure`` naming it instead of ``x-outbound-refusal``:

    ConnectError 502 connect_error, ConnectTimeoutError 504 connect_timeout, ReadTimeoutError 504 read_timeout,
    WriteTimeoutError 504 write_timeout, ReadError 502 read_error

A request that is itself an SDK's retry (``x-stainless-retry-count`` above 0) which outbound retried too is logged
on ``outbound.call`` at INFO: both layers retried.

``expected``: statuses that are a path's answer (Vault answers ``/sys/health`` with 429 when standby and 503 when
sealed, on purpose): on that path they are neither breaker failures nor retried, and their ``Retry-After`` pauses
nothing; with ``final_responses`` they are marked so the SDK does not retry them either. An ``outbound.expect``
scope (``_expect.py``) does the same for the calls made inside it, and sets their retries.

``timeout_max``: a per-call timeout the SDK asks for (stripe's 80 s, hvac's 30 s, openai's ``timeout=``) replaces the
service's read and extends its total, as any caller's does; this caps it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from urllib.parse import urlsplit

from . import _errors as errors
from ._config import SdkConfig, ServiceConfig
from ._expect import Expectation
from ._outcome import Kind, Outcome
from ._retry import retries_for

__all__ = [
    "ANSWERABLE",
    "ANSWERED",
    "EXTENSION",
    "FAILURES",
    "Answer",
    "answer",
    "answers",
    "both_retried",
    "cap",
    "expected_paths",
    "expects",
    "judged",
    "retries_of",
    "sdk_error",
]

call_logger = logging.getLogger("outbound.call")

# The errors a service with ``sdk.answer_refusals`` answers instead of raising.
ANSWERED: tuple[type[Exception], ...] = (
    errors.RejectedError,
    errors.PoolTimeoutError,
    errors.RegistryClosedError,
    errors.EventLoopMismatchError,
)
# The failures a service with ``sdk.final_responses`` answers: outbound gave up on them (retries spent or denied).
FAILURES: tuple[type[Exception], ...] = (errors.TransportFailure,)
# Every error the client layer may answer (``answers`` says whether this service does).
ANSWERABLE: tuple[type[Exception], ...] = ANSWERED + FAILURES
# Where an httpx response carries the error it answers.
EXTENSION = "outbound.error"
# The header naming the refusal (or the transport failure); the SDKs' exceptions keep the response's headers.
REFUSAL_HEADER = "x-outbound-refusal"
FAILURE_HEADER = "x-outbound-failure"
# Response headers the SDKs read before retrying: openai and anthropic (Stainless), stripe.
DO_NOT_RETRY: Mapping[str, str] = {"x-should-retry": "false", "stripe-should-retry": "false"}
# The SDK retry count Stainless SDKs (openai, anthropic) send with every attempt.
SDK_RETRY_HEADER = "x-stainless-retry-count"

# Most specific first.
_STATUSES: tuple[tuple[type[Exception], int, str], ...] = (
    (errors.CircuitOpenError, 503, "circuit_open"),
    (errors.BulkheadFullError, 503, "bulkhead_full"),
    (errors.RateLimitedError, 429, "rate_limited"),
    (errors.ConcurrencyLimitedError, 503, "concurrency_limited"),
    (errors.ThrottledError, 503, "throttled"),
    (errors.DeadlineExceededError, 504, "deadline_exceeded"),
    (errors.RejectedError, 503, "rejected"),
    (errors.RegistryClosedError, 503, "registry_closed"),
    (errors.EventLoopMismatchError, 500, "event_loop_mismatch"),
    (errors.PoolTimeoutError, 503, "pool_timeout"),
    (errors.ConnectTimeoutError, 504, "connect_timeout"),
    (errors.ConnectError, 502, "connect_error"),
    (errors.ReadTimeoutError, 504, "read_timeout"),
    (errors.WriteTimeoutError, 504, "write_timeout"),
    (errors.ReadError, 502, "read_error"),
    (errors.TransportFailure, 502, "transport_failure"),
)


class Answer:
    """The response a refusal becomes: ``status``, ``headers``, ``body`` (JSON bytes)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def answers(error: Exception, config: SdkConfig, retries: int) -> bool:
    """Whether a service with these settings answers ``error`` (one of ``ANSWERABLE``) rather than raising it.

    ``retries`` are outbound's for the call (``retries_of``): a failure of a call outbound was not to retry at all
    is raised, so the SDK's retries are the one layer."""
    if isinstance(error, FAILURES):
        return config.final_responses and retries > 0
    return config.answer_refusals


def retries_of(config: ServiceConfig, scope: Expectation | None) -> int:
    """Outbound's retries for a call: an ``outbound.expect`` scope's, or the service's ``retry.total``."""
    total = config.retry.total
    if scope is None or scope.retries is None:
        return total
    return retries_for(scope.retries, total)


def answer(error: Exception, service: str) -> Answer:
    """The response that answers ``error`` (one of ``ANSWERABLE``) for ``service``."""
    status, reason = 503, "rejected"
    for cls, found_status, found_reason in _STATUSES:
        if isinstance(error, cls):
            status, reason = found_status, found_reason
            break
    retry_in = _retry_in(getattr(error, "retry_in", 0.0))
    failure = isinstance(error, FAILURES)
    if failure:
        kind, header, message = "outbound_failure", FAILURE_HEADER, f"outbound gave up on the call ({reason}): {error}"
    else:
        kind, header, message = "outbound_refusal", REFUSAL_HEADER, f"outbound refused the call ({reason}): {error}"
    body = {
        "type": "error",
        "error": {"type": kind, "code": reason, "message": message},
        "outbound": {"service": service, "reason": reason, "retry_in": retry_in},
    }
    headers = {"content-type": "application/json", header: reason, **DO_NOT_RETRY}
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


def expects(expected: Expected, scope: Expectation | None, path: str, status: int | None) -> bool:
    """Whether ``status`` is an answer of ``path`` (``sdk.expected``) or of the call (an ``outbound.expect`` scope)."""
    if scope is not None and status in scope.statuses:
        return True
    for prefix, statuses in expected:
        if path.startswith(prefix):
            return status in statuses
    return False


def judged(expected: Expected, scope: Expectation | None, path: str, outcome: Outcome) -> Outcome:
    """``outcome`` marked ``expected`` when its status is an answer (``expects``)."""
    if outcome.kind is not Kind.RESPONSE or not expects(expected, scope, path, outcome.status):
        return outcome
    # Without Retry-After: an expected answer does not pause the service either.
    return Outcome(Kind.RESPONSE, status=outcome.status, expected=True)


def sdk_error(error: BaseException) -> errors.OutboundError | None:
    """The outbound error behind an SDK's exception, or ``None``.

    Looks at the answer's response (``exc.response``, as openai and anthropic keep it) and along the exception's
    ``__cause__`` / ``__context__`` chain (an SDK that wrapped outbound's exception). stripe keeps only the status,
    headers and body: there, ``exc.headers["x-outbound-refusal"]`` and ``exc.json_body["outbound"]`` say it.
    """
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 10:  # chains can be cyclic: bounded
        if isinstance(current, errors.OutboundError):
            return current
        response = getattr(current, "response", None)
        found = getattr(response, "outbound_error", None)
        if found is None:
            extensions = getattr(response, "extensions", None)
            found = extensions.get(EXTENSION) if isinstance(extensions, Mapping) else None
        if isinstance(found, errors.OutboundError):
            return found
        current = current.__cause__ or current.__context__
        seen += 1
    return None
