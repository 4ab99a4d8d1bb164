"""Error answers: the HTTP answer a web app gives its own caller when a call to an upstream fails.

The recipe the Django middleware (``outbound_django.middleware.UpstreamErrorMiddleware``) and the Flask handler
(``Outbound(app, error_answers=True)``) serve, written once. The app answers as a gateway would:

    error                                           status  error                  reason
    CircuitOpenError                                503     upstream_unavailable   circuit_open        Retry-After
    BulkheadFullError                               503     upstream_unavailable   bulkhead_full       Retry-After
    RateLimitedError (rate limit, upstream pause)   503     upstream_unavailable   rate_limited        Retry-After
    ConcurrencyLimitedError                         503     upstream_unavailable   concurrency_limited Retry-After
    ThrottledError                                  503     upstream_unavailable   throttled           Retry-After
    PoolTimeoutError                                503     upstream_unavailable   pool_timeout
    EgressDeniedError                               403     upstream_forbidden     egress_denied
    DeadlineExceededError                           504     upstream_timeout       deadline_exceeded
    ConnectTimeoutError                             504     upstream_timeout       connect_timeout
    ReadTimeoutError (the total deadline included)  504     upstream_timeout       read_timeout
    WriteTimeoutError                               504     upstream_timeout       write_timeout
    ConnectError                                    502     upstream_error         connect_error
    ReadError                                       502     upstream_error         read_error

503 says *we* cannot serve this now (the breaker, our own limits or the upstream's pause) and, when the refusal
knows when that ends, ``Retry-After`` says when to come back. An egress denial is the caller's doing, not a moment
of trouble: the URL it gave (a webhook target, an avatar) is one this app will not fetch, whenever asked (403, no
``Retry-After``). A deadline that ran out is a timeout like the others
(504), not an overload: nothing says a retry would fare better. Errors that say nothing about the upstream's
availability (a plain ``CallError``: TLS, proxy, a request no mock matched) get no answer: they are bugs or
configuration mistakes, and the framework's own 500 with a traceback serves them better.

The body is JSON with four stable keys and nothing else — no URL, message or header, which could carry
credentials or internal addresses::

    {"error": "upstream_unavailable", "service": "billing", "reason": "circuit_open", "retry_in": 3}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

from ._errors import (
    BulkheadFullError,
    CallError,
    CircuitOpenError,
    ConcurrencyLimitedError,
    ConnectError,
    ConnectTimeoutError,
    DeadlineExceededError,
    EgressDeniedError,
    PoolTimeoutError,
    RateLimitedError,
    ReadError,
    ReadTimeoutError,
    RejectedError,
    ThrottledError,
    TransportFailure,
    WriteTimeoutError,
)
from ._outcome import Kind, Reason

__all__ = ["ErrorAnswer", "error_answer"]

ErrorCode = Literal["upstream_unavailable", "upstream_timeout", "upstream_error", "upstream_forbidden"]

CONTENT_TYPE = "application/json"


def _kind(kind: Kind) -> str:
    # The failure's kind as the retry events and metrics spell it ("connect_timeout").
    return kind.value.replace(" ", "_")


# Looked up along the error's class hierarchy, most specific first, so a subclass added to one of the families
# later (a new refusal, a new transport failure) gets its family's answer rather than none.
_ANSWERS: dict[type[CallError], tuple[int, ErrorCode, str]] = {
    CircuitOpenError: (503, "upstream_unavailable", Reason.CIRCUIT_OPEN.value),
    BulkheadFullError: (503, "upstream_unavailable", Reason.BULKHEAD_FULL.value),
    RateLimitedError: (503, "upstream_unavailable", Reason.RATE_LIMITED.value),
    ConcurrencyLimitedError: (503, "upstream_unavailable", Reason.CONCURRENCY_LIMITED.value),
    ThrottledError: (503, "upstream_unavailable", Reason.THROTTLED.value),
    DeadlineExceededError: (504, "upstream_timeout", Reason.DEADLINE_EXCEEDED.value),
    EgressDeniedError: (403, "upstream_forbidden", Reason.EGRESS_DENIED.value),
    RejectedError: (503, "upstream_unavailable", "rejected"),
    PoolTimeoutError: (503, "upstream_unavailable", _kind(Kind.POOL_TIMEOUT)),
    ConnectTimeoutError: (504, "upstream_timeout", _kind(Kind.CONNECT_TIMEOUT)),
    ReadTimeoutError: (504, "upstream_timeout", _kind(Kind.READ_TIMEOUT)),
    WriteTimeoutError: (504, "upstream_timeout", _kind(Kind.WRITE_TIMEOUT)),
    ConnectError: (502, "upstream_error", _kind(Kind.CONNECT_ERROR)),
    ReadError: (502, "upstream_error", _kind(Kind.READ_ERROR)),
    TransportFailure: (502, "upstream_error", "transport_failure"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorAnswer:
    """The HTTP answer for a failed upstream call (see the module for the table).

    Attributes:
        status: 502, 503, 504, or 403 for an egress denial.
        error: ``"upstream_unavailable"`` (503), ``"upstream_timeout"`` (504), ``"upstream_error"`` (502) or
            ``"upstream_forbidden"`` (403: the service's egress rules refuse the URL).
        service: the name of the service the call was made to, as the settings spell it.
        reason: what happened: ``circuit_open``, ``bulkhead_full``, ``rate_limited``, ``pool_timeout``,
            ``deadline_exceeded``, ``egress_denied``, ``connect_timeout``, ``read_timeout``, ``write_timeout``,
            ``connect_error`` or ``read_error`` (``rejected`` or ``transport_failure`` for a kind of refusal or
            failure this version does not know).
        retry_in: whole seconds (rounded up) until a call is likely to be admitted, or ``None`` when that is
            unknown; the ``Retry-After`` header carries the same number.
    """

    status: int
    error: ErrorCode
    service: str
    reason: str
    retry_in: int | None

    def as_dict(self) -> dict[str, str | int | None]:
        """The JSON body as a dict: ``error``, ``service``, ``reason``, ``retry_in`` (``None`` when unknown)."""
        return {"error": self.error, "service": self.service, "reason": self.reason, "retry_in": self.retry_in}

    @property
    def body(self) -> bytes:
        """The JSON body, UTF-8."""
        return json.dumps(self.as_dict()).encode()

    @property
    def headers(self) -> dict[str, str]:
        """``Content-Type: application/json``, and ``Retry-After`` when ``retry_in`` is known."""
        headers = {"Content-Type": CONTENT_TYPE}
        if self.retry_in is not None:
            headers["Retry-After"] = str(self.retry_in)
        return headers


def error_answer(error: BaseException) -> ErrorAnswer | None:
    """The HTTP answer for ``error``, or ``None`` when it is not an upstream failure or refusal to answer for
    (anything but a ``RejectedError``, ``PoolTimeoutError`` or ``TransportFailure``)."""
    for cls in type(error).__mro__:
        found = _ANSWERS.get(cls)
        if found is not None:
            break
    else:
        return None
    assert isinstance(error, CallError)  # every class in _ANSWERS is one
    status, code, reason = found
    return ErrorAnswer(status=status, error=code, service=error.service, reason=reason, retry_in=_retry_in(error))


def _retry_in(error: CallError) -> int | None:
    seconds: float = getattr(error, "retry_in", 0.0)  # only refusals carry one
    # 0.0 means unknown or "now"; an isolated breaker's is infinite: neither makes a useful Retry-After.
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return math.ceil(seconds)
