"""The one boundary where the policy's verdicts become exceptions, shared by every backend.

The policy speaks in ``Outcome``s and ``Rejection``s; each backend names the native exception class its errors
also are (httpx maps httpcore's exceptions the same way, in one table, in ``_transports/default.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

from .._call import Call
from .._chaos import INJECTED_TEXT
from .._errors import (
    REJECTED_ERRORS,
    CallError,
    ConnectError,
    ConnectTimeoutError,
    PoolTimeoutError,
    ReadError,
    ReadTimeoutError,
    RegistryClosedError,
    RejectedError,
    WriteTimeoutError,
    backend_error,
)
from .._logging import redact_text
from .._outcome import Kind, Outcome, Reason, Rejection

# The outbound class each failed attempt is raised as (combined with the backend's own exception class).
FAILED: Mapping[Kind, type[CallError]] = {
    Kind.CONNECT_ERROR: ConnectError,
    Kind.CONNECT_TIMEOUT: ConnectTimeoutError,
    Kind.READ_TIMEOUT: ReadTimeoutError,
    Kind.WRITE_TIMEOUT: WriteTimeoutError,
    Kind.READ_ERROR: ReadError,
    Kind.POOL_TIMEOUT: PoolTimeoutError,
    Kind.OTHER_ERROR: CallError,
    Kind.MOCK_REFUSED: CallError,
}


def rejected(
    call: Call | None,
    service: str,
    rejection: Rejection,
    native: Mapping[str, type[Exception]],
    attributes: dict[str, object],
) -> Exception:
    """The exception for a refused call: outbound's ``RejectedError`` subclass and the backend's ``native`` class
    for that reason (``RegistryClosedError`` when the registry was closed)."""
    reason = rejection.reason
    if reason is Reason.CLOSED:
        return RegistryClosedError(f"the outbound registry was closed; service {service!r} is unusable")
    message = f"{service}: {reason.text} ({rejection.detail}); nothing was sent"
    if call is not None and call.attempts:
        message = f"{service}: {reason.text} ({rejection.detail}) after {call.attempts} attempts"
    cls: type[RejectedError] = REJECTED_ERRORS[reason]  # type: ignore[assignment]  # every reason but CLOSED
    error = backend_error(cls, native[reason], message, service=service, attributes=attributes)
    error.retry_in = rejection.retry_in  # type: ignore[attr-defined]
    return error


def failed(
    call: Call,
    outcome: Outcome,
    native: type[Exception] | None,
    attributes: dict[str, object],
    args: tuple[object, ...] | None = None,
) -> Exception:
    """The exception for a failed final attempt: outbound's class for its kind and the backend exception's class
    (``native`` when the backend's own class should be a different one), message redacted, native ``args`` kept
    (``args``: the backend's redacted copy of them)."""
    original = outcome.error
    assert original is not None
    if outcome.kind is Kind.CLOSED:
        return RegistryClosedError(f"the outbound registry was closed while calling service {call.service!r}")
    message = error_message(call, outcome)
    if outcome.kind is Kind.MOCK_REFUSED or getattr(original, "outbound_detail", False):
        # The mock's verdict, or the limit a body broke (egress.max_response_bytes): the useful part of the message.
        message += f": {redact_text(str(original))}"
    merged = dict(attributes)
    merged.update((key, value) for key, value in vars(original).items() if key in attributes)
    return backend_error(
        FAILED[outcome.kind],
        native if native is not None else type(original),
        message,
        service=call.service,
        attributes=merged,
        args=original.args if args is None else args,
    )


def error_message(call: Call, outcome: Outcome) -> str:
    """The message of the error a failed final attempt raises (no credentials, no query string)."""
    message = f"{call.service}: {call.describe(outcome)}"
    deadline = call.deadline
    if outcome.deadline and deadline is not None and deadline.scoped:
        message += f" (the {deadline.at - call.started:.3g}s left of the outbound.deadline scope)"
    elif outcome.deadline:
        total = call.total
        message += f" (timeout.total of {f'{total:g}s' if total is not None else 'none'} for the whole call)"
    if call.attempts > 1:
        message += f" (after {call.attempts} attempts)"
    if call._policy.chaos is not None and INJECTED_TEXT in str(outcome.error):  # a service without chaos never looks
        message += f" ({INJECTED_TEXT})"
    return message
