"""The exception tree.

Every error outbound raises is an ``OutboundError``. Errors raised by a *call* through a managed client also keep
the identity of the client library the caller chose, so existing ``except`` clauses keep working: through a
``requests`` session they are also ``requests.RequestException`` subclasses, through httpx also the matching
``httpx.TransportError`` subclass (see ``backend_error``).

    OutboundError
    ├── ConfigError                 (also ValueError)   a mistake in the settings; .service, .key
    ├── ServiceLookupError          (also LookupError)  unknown service name, or the wrong client kind for it
    ├── RegistryClosedError         (also RuntimeError) the registry was closed
    ├── EventLoopMismatchError      (also RuntimeError) an AsyncClient used from another event loop
    └── CallError                                       a call through a managed client failed; .service
        ├── RejectedError                               refused before anything was sent; .retry_in
        │   ├── CircuitOpenError                        the breaker is open (or isolated, or its trial is taken)
        │   ├── BulkheadFullError                       too many calls in flight to this service
        │   ├── RateLimitedError                        the client-side rate limit, or the upstream's 429 pause
        │   ├── DeadlineExceededError                   too little of the call's deadline was left to start
        │   ├── EgressDeniedError                       the service's egress rules refuse the URL or its address
        │   ├── ConcurrencyLimitedError                 the adaptive concurrency limit is reached
        │   └── ThrottledError                          client-side throttling while the upstream refuses most calls
        ├── PoolTimeoutError                            no pooled connection freed in time (we are saturated)
        └── TransportFailure                            the upstream could not be reached or did not answer
            ├── ConnectError                            nothing was sent
            │   └── ConnectTimeoutError
            ├── ReadTimeoutError
            ├── WriteTimeoutError
            └── ReadError                               the connection broke after the request was sent

Messages never contain credentials or query strings: URLs in them go through ``redact_url``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from ._outcome import Reason

ConfigErrorCode = Literal["unknown_key", "missing", "type", "range", "url", "unsupported", "file"]


class OutboundError(Exception):
    """Base class of every error raised by outbound."""


class ConfigError(OutboundError, ValueError):
    """A mistake in the ``OUTBOUND`` settings.

    Attributes:
        service: the service the mistake is in, or ``None`` for top-level keys.
        key: the dotted key path inside the service (``"retry.total"``), or the top-level key.
        code: the kind of mistake, stable for tools (Django's system check ids are derived from it):
            ``unknown_key``, ``missing``, ``type``, ``range``, ``url``, ``unsupported`` or ``file``.
        detail: the message without the location prefix.
        errors: every mistake found in the settings (this one first); ``[self]`` for a single mistake.
    """

    CODES: tuple[ConfigErrorCode, ...] = ("unknown_key", "missing", "type", "range", "url", "unsupported", "file")

    def __init__(
        self, message: str, *, service: str | None = None, key: str | None = None, code: ConfigErrorCode = "type"
    ) -> None:
        where = ".".join(part for part in (f"services.{service}" if service else None, key) if part)
        super().__init__(f"OUTBOUND[{where}]: {message}" if where else f"OUTBOUND: {message}")
        self.service = service
        self.key = key
        self.code: ConfigErrorCode = code
        self.detail = message
        self.errors: list[ConfigError] = [self]

    @classmethod
    def combine(cls, errors: Sequence[ConfigError]) -> ConfigError:
        """One error for all ``errors``: the first one's location and code, a message listing every mistake."""
        first = errors[0]
        if len(errors) == 1:
            return first
        combined = cls(first.detail, service=first.service, key=first.key, code=first.code)
        more = len(errors) - 1
        listing = "\n".join(f"  - {error}" for error in errors[1:])
        noun = "mistake" if more == 1 else "mistakes"
        combined.args = (f"{first} (and {more} more {noun} in the OUTBOUND settings:)\n{listing}",)
        combined.errors = list(errors)
        return combined


class ServiceLookupError(OutboundError, LookupError):
    """An unknown service name, or a client accessor that does not match the service's ``client``."""

    def __str__(self) -> str:
        # LookupError subclasses like KeyError repr their argument; we want the plain message.
        return str(self.args[0]) if self.args else ""


class RegistryClosedError(OutboundError, RuntimeError):
    """The registry was closed; its clients can no longer be used."""


class EventLoopMismatchError(OutboundError, RuntimeError):
    """An ``AsyncClient`` was used from an event loop other than the one it was made for."""


class CallError(OutboundError):
    """A call through a managed client failed.

    Attributes:
        service: the name of the service the call was made to.
    """

    service: str = ""


class RejectedError(CallError):
    """The call was refused before anything was sent (Polly's ``ExecutionRejectedException``).

    Attributes:
        retry_in: seconds until a call is likely to be admitted (0.0 when unknown or immediate).
    """

    retry_in: float = 0.0


class CircuitOpenError(RejectedError):
    """The service's circuit breaker is open (or isolated, or its half-open trial slots are taken); nothing was sent.

    ``retry_in`` is the seconds until the breaker lets a trial call through (0.0 while a trial is in flight).
    """


class BulkheadFullError(RejectedError):
    """``bulkhead.max_in_flight`` calls to this service were already in flight and none ended within ``max_wait``.

    Like a pool timeout this says *this process* is saturated, not that the upstream failed.
    """


class RateLimitedError(RejectedError):
    """No permit of the service's ``rate_limit`` came within ``max_wait``, or the upstream asked for a pause (a 429
    or 503 with ``Retry-After``) that lasts longer than the call can wait. ``retry_in`` says how long."""


class DeadlineExceededError(RejectedError):
    """Less than ``deadline.min_time`` of the call's deadline (``timeout.total``, or an ``outbound.deadline``
    scope) was left: the call was not started, because it could not finish in time."""


class EgressDeniedError(RejectedError):
    """The service's ``egress`` rules refuse the call's URL (its scheme, port or host) or an address its host
    resolves to (loopback, private, link-local, metadata...); nothing was sent. The message names the rule and the
    host, never the URL's credentials, path or query."""


class ConcurrencyLimitedError(RejectedError):
    """As many calls as the service's adaptive ``concurrency`` limit allows were in flight (the limit it learned
    from the upstream's latency) and none ended within ``max_wait``; nothing was sent. A sheddable call is refused
    first (``outbound.criticality``). ``retry_in`` is the recent latency: about when a slot frees up."""


class ThrottledError(RejectedError):
    """Client-side adaptive throttling refused the call: the upstream accepted too few of the recent requests
    (``throttle.k``), so this share of first attempts is refused here rather than sent; nothing was sent."""


class PoolTimeoutError(CallError):
    """Every pooled connection stayed busy for ``timeout.pool`` seconds.

    This means *this process* is saturated, not that the upstream failed: it never counts against the breaker.
    """


class TransportFailure(CallError):
    """The upstream could not be reached or did not answer in time."""


class ConnectError(TransportFailure):
    """The connection could not be established; nothing was sent."""


class ConnectTimeoutError(ConnectError):
    """The connection was not established within ``timeout.connect``."""


class ReadTimeoutError(TransportFailure):
    """The upstream did not send data within ``timeout.read``."""


class WriteTimeoutError(TransportFailure):
    """The request could not be written within ``timeout.write``."""


class ReadError(TransportFailure):
    """The connection failed after the request was sent (reset, closed mid-response, protocol error)."""


# The error each refusal raises (``RegistryClosedError`` is no RejectedError: the registry closing is our own shutdown).
REJECTED_ERRORS: Mapping[Reason, type[OutboundError]] = {
    Reason.CIRCUIT_OPEN: CircuitOpenError,
    Reason.BULKHEAD_FULL: BulkheadFullError,
    Reason.RATE_LIMITED: RateLimitedError,
    Reason.DEADLINE_EXCEEDED: DeadlineExceededError,
    Reason.EGRESS_DENIED: EgressDeniedError,
    Reason.CONCURRENCY_LIMITED: ConcurrencyLimitedError,
    Reason.THROTTLED: ThrottledError,
    Reason.CLOSED: RegistryClosedError,
}

_dual_classes: dict[tuple[type[CallError], type[Exception]], type[CallError]] = {}


def _dual_str(error: CallError) -> str:
    # The message outbound wrote (redacted); ``args`` may be the native exception's own (see backend_error).
    return error.__dict__.get("_message") or Exception.__str__(error)


def _dual_class(outbound_cls: type[CallError], backend_cls: type[Exception]) -> type[CallError]:
    # One class per (outbound kind, backend exception) pair, made once: instances are both, so
    # ``except requests.ConnectionError`` and ``except outbound.ConnectError`` catch the same error.
    # (A race may build a pair twice; either class is correct, and the dict keeps one.)
    key = (outbound_cls, backend_cls)
    cls = _dual_classes.get(key)
    if cls is None:
        # Named after outbound's class (it says what happened); the backend class shows in the MRO. pickle cannot
        # find a class made at run time by name, so instances rebuild themselves (ProcessPoolExecutor, Celery).
        namespace = {"__module__": "outbound", "__reduce__": _reduce_dual, "__str__": _dual_str}
        cls = _dual_classes.setdefault(key, type(outbound_cls.__name__, key, namespace))
    return cls


def _reduce_dual(error: CallError) -> tuple[object, tuple[object, ...]]:
    outbound_cls, backend_cls = type(error).__bases__  # as _dual_class made it
    retry_in = getattr(error, "retry_in", 0.0)
    return _rebuild_dual, (outbound_cls, backend_cls, str(error), error.service, retry_in)


def _rebuild_dual(
    outbound_cls: type[CallError], backend_cls: type[Exception], message: str, service: str, retry_in: float
) -> CallError:
    # The request/response objects and the native arguments do not travel; the identity, message and service do.
    error = backend_error(outbound_cls, backend_cls, message, service=service)
    if retry_in:
        error.retry_in = retry_in  # type: ignore[attr-defined]
    return error


def backend_error(
    outbound_cls: type[CallError],
    backend_cls: type[Exception],
    message: str,
    *,
    service: str,
    attributes: dict[str, object] | None = None,
    args: tuple[object, ...] | None = None,
) -> CallError:
    """Build an error that is an instance of both ``outbound_cls`` and ``backend_cls``.

    ``str(error)`` is ``message``. ``args`` are the native exception's own arguments when it wraps one, so code
    that reads ``e.args[0]`` (requests puts urllib3's error there) finds what a plain client gives; otherwise the
    message. ``attributes`` (the ``request`` / ``response`` of the original requests or httpx error) are copied onto
    the new error so code that inspects ``exc.request`` keeps working. The backend class's ``__init__`` is skipped
    because requests and httpx exceptions take incompatible arguments.
    """
    cls = _dual_class(outbound_cls, backend_cls)
    error = cls.__new__(cls, message)
    Exception.__init__(error, *(args if args else (message,)))
    error.__dict__["_message"] = message
    if attributes:
        error.__dict__.update(attributes)
    error.service = service
    return error


def redact_url(url: str) -> str:
    """Return ``url`` without userinfo, query string or fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
