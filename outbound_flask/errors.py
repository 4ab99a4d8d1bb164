"""``Outbound(app, error_answers=True)``: a view's outbound refusal or upstream failure answered as a gateway would.

The answer is the core's (``outbound.error_answer``): 503 with ``Retry-After`` for a refusal (open breaker, bulkhead,
rate limit, the upstream's pause) or a pool timeout, 504 for a timeout or a deadline that ran out, 502 for a failed
connection, each with a small JSON body. Error handlers are registered for the three families the core answers,
so every other exception — a plain ``CallError`` (TLS, proxy) included — reaches the app's own handlers or
Flask's 500 as before. A handler the app registers for one of outbound's classes (``CircuitOpenError``, say) is
more specific and wins.
"""

from __future__ import annotations

from flask import Flask, Response

import outbound

ANSWERED = (outbound.RejectedError, outbound.PoolTimeoutError, outbound.TransportFailure)


def install(app: Flask) -> None:
    """Answer ``app``'s outbound errors (what ``Outbound(error_answers=True)`` does)."""
    for error_class in ANSWERED:
        app.register_error_handler(error_class, answer)


def answer(error: outbound.CallError) -> Response:
    """The core's answer for ``error`` as a Flask response."""
    found = outbound.error_answer(error)
    assert found is not None  # registered only for the families the core answers
    return Response(found.body, status=found.status, headers=found.headers)
