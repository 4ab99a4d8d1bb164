"""The exception tree.

Every error outbound raises is an ``OutboundError``. Errors raised by a *call* through a managed client also keep
the identity of the client library the caller chose, so existing ``except`` clauses keep working: through a
``requests`` session they are also ``requests.RequestException`` subclasses, through httpx also the matching
``httpx.TransportError`` subclass (see ``backend_error``).

    OutboundError
    ├── ConfigError                 (also ValueError)   a mistake in the settings; .service, .key
    ├── ServiceLookupError          (also LookupError)  unknown service name, or the wrong client kind for it
    ├── RegistryClosedError         (also RuntimeError) the registry was closed
    └── CallError                                       a call through a managed client failed; .service
        ├── CircuitOpenError                            rejected without sending; .retry_in
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

from urllib.parse import urlsplit, urlunsplit


class OutboundError(Exception):
    """Base class of every error raised by outbound."""


class ConfigError(OutboundError, ValueError):
    """A mistake in the ``OUTBOUND`` settings.

    Attributes:
        service: the service the mistake is in, or ``None`` for top-level keys.
        key: the dotted key path inside the service (``"retry.total"``), or the top-level key.
        code: the kind of mistake, stable for tools (Django's system check ids are derived from it):
            ``unknown_key``, ``missing``, ``type``, ``range``, ``url`` or ``unsupported``.
        detail: the message without the location prefix.
    """

    CODES = ("unknown_key", "missing", "type", "range", "url", "unsupported")

    def __init__(self, message: str, *, service: str | None = None, key: str | None = None, code: str = "type") -> None:
        where = ".".join(part for part in (f"services.{service}" if service else None, key) if part)
        super().__init__(f"OUTBOUND[{where}]: {message}" if where else f"OUTBOUND: {message}")
        self.service = service
        self.key = key
        self.code = code
        self.detail = message


class ServiceLookupError(OutboundError, LookupError):
    """An unknown service name, or a client accessor that does not match the service's ``client``."""

    def __str__(self) -> str:
        # LookupError subclasses like KeyError repr their argument; we want the plain message.
        return str(self.args[0]) if self.args else ""


class RegistryClosedError(OutboundError, RuntimeError):
    """The registry was closed; its clients can no longer be used."""


class CallError(OutboundError):
    """A call through a managed client failed.

    Attributes:
        service: the name of the service the call was made to.
    """

    service: str = ""


class CircuitOpenError(CallError):
    """The service's circuit breaker is open (or its half-open trial slots are taken); nothing was sent.

    Attributes:
        retry_in: seconds until the breaker lets a trial call through (0.0 while a trial is in flight).
    """

    retry_in: float = 0.0


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


_dual_classes: dict[tuple[type[CallError], type[Exception]], type[CallError]] = {}


def _dual_class(outbound_cls: type[CallError], backend_cls: type[Exception]) -> type[CallError]:
    # One class per (outbound kind, backend exception) pair, made once: instances are both, so
    # ``except requests.ConnectionError`` and ``except outbound.ConnectError`` catch the same error.
    # (A race may build a pair twice; either class is correct, and the dict keeps one.)
    key = (outbound_cls, backend_cls)
    cls = _dual_classes.get(key)
    if cls is None:
        # Named after outbound's class (it says what happened); the backend class shows in the MRO. pickle cannot
        # find a class made at run time by name, so instances rebuild themselves (ProcessPoolExecutor, Celery).
        namespace = {"__module__": "outbound", "__reduce__": _reduce_dual}
        cls = _dual_classes.setdefault(key, type(outbound_cls.__name__, key, namespace))
    return cls


def _reduce_dual(error: CallError) -> tuple[object, tuple[object, ...]]:
    outbound_cls, backend_cls = type(error).__bases__  # as _dual_class made it
    retry_in = getattr(error, "retry_in", 0.0)
    return _rebuild_dual, (outbound_cls, backend_cls, str(error), error.service, retry_in)


def _rebuild_dual(
    outbound_cls: type[CallError], backend_cls: type[Exception], message: str, service: str, retry_in: float
) -> CallError:
    # The request/response objects do not travel; the error's identity, message and service do.
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
) -> CallError:
    """Build an error that is an instance of both ``outbound_cls`` and ``backend_cls``.

    ``attributes`` (for example the ``request`` / ``response`` of the original requests or httpx error) are copied
    onto the new error so code that inspects ``exc.request`` keeps working. The backend class's ``__init__`` is
    skipped because requests and httpx exceptions take incompatible arguments; ``args`` is the message alone.
    """
    cls = _dual_class(outbound_cls, backend_cls)
    error = cls.__new__(cls, message)
    Exception.__init__(error, message)
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
