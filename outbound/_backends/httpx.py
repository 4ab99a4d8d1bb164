"""httpx backend: ``ServiceClient`` / ``ServiceAsyncClient`` and the transports that run the policy.

The transports wrap ``httpx.HTTPTransport`` / ``AsyncHTTPTransport`` (so ``respx``, which patches httpcore, still
intercepts) and run each request through the shared attempt driver; httpx's own pool raises ``PoolTimeout`` after
``timeout.pool``. A client given ``transport=`` ignores its own ``limits``, ``http2`` and ``verify``, so all of
those are set on the wrapped transport.
"""

from __future__ import annotations

import functools
import http.cookiejar
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx

from .._breaker import CLOSED
from .._config import ServiceConfig
from .._driver import adrive, drive
from .._errors import RegistryClosedError
from .._outcome import Kind, Outcome, Rejection, response_outcome
from .._policy import Call, Policy
from .._retry import RETRY_AFTER_STATUSES
from . import _errors
from .requests import NO_STORED_COOKIES

_KINDS: tuple[tuple[type[Exception], Kind], ...] = (
    # Order matters: subclasses before their bases.
    (httpx.PoolTimeout, Kind.POOL_TIMEOUT),
    (httpx.ConnectTimeout, Kind.CONNECT_TIMEOUT),
    (httpx.ReadTimeout, Kind.READ_TIMEOUT),
    (httpx.WriteTimeout, Kind.WRITE_TIMEOUT),
    (httpx.ConnectError, Kind.CONNECT_ERROR),
    (httpx.ReadError, Kind.READ_ERROR),
    (httpx.WriteError, Kind.READ_ERROR),
    (httpx.RemoteProtocolError, Kind.READ_ERROR),
)


def _classify(error: Exception) -> Kind:
    for cls, kind in _KINDS:
        if isinstance(error, cls):
            if kind is Kind.CONNECT_ERROR and _caused_by_tls(error):
                # httpx reports a failed TLS handshake as ConnectError; retrying a bad certificate cannot help,
                # and it says nothing about the upstream's load: treated as requests' SSLError is.
                return Kind.OTHER_ERROR
            return kind
    return Kind.OTHER_ERROR


def _caused_by_tls(error: BaseException) -> bool:
    cause = error.__cause__ or error.__context__
    for _ in range(5):  # httpx error <- httpcore error <- ssl.SSLError; bounded, chains can be cyclic
        if cause is None:
            return False
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


@functools.lru_cache(maxsize=32)
def ssl_context(verify: bool | str, cert: str | tuple[str, str] | None, http2: bool) -> ssl.SSLContext:
    """One SSL context per (verify, cert, http2), shared by every client that needs it.

    Building one loads the CA bundle (~20 ms); Flask async views and ``async_to_sync`` bridges make a new client per
    event loop, so without sharing every such request would pay that again. A context is safe to share between
    threads and survives fork (it holds no sockets). ``http2`` is part of the key because httpcore sets the ALPN
    protocols on the context for each connection: contexts are shared only where it sets the same ones.
    """
    if isinstance(verify, bool) and cert is None:
        return httpx.create_ssl_context(verify=verify)
    # httpx 0.28 deprecates verify=<path> and cert=: build the context it asks for.
    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if isinstance(cert, str):
        context.load_cert_chain(cert)
    elif cert is not None:
        context.load_cert_chain(*cert)
    return context


def transport_options(config: ServiceConfig) -> dict[str, Any]:
    """Keyword arguments for ``httpx.HTTPTransport`` / ``AsyncHTTPTransport`` from the service's settings."""
    verify = ssl_context(config.verify, config.cert, config.http2)
    pool = config.pool
    return {
        "verify": verify,
        "http2": config.http2,
        "limits": httpx.Limits(
            max_connections=pool.max_connections,
            max_keepalive_connections=pool.max_keepalive,
            keepalive_expiry=pool.keepalive_expiry,
        ),
        "proxy": config.proxy,
        "retries": 0,
    }


def client_options(config: ServiceConfig) -> dict[str, Any]:
    """Keyword arguments shared by the sync and async clients."""
    auth = httpx.BasicAuth(*config.auth) if config.auth is not None else None
    return {
        "auth": auth,  # from base_url's userinfo, which the settings parser took out of the URL
        "base_url": config.base_url,
        "headers": dict(config.headers),
        "timeout": configured_timeout(config),
        # Environment proxies would be mounted as separate, unmanaged transports; the service's `proxy` applies.
        "trust_env": False,
        # One client serves every request: never store one caller's response cookies for the next (see requests).
        "cookies": http.cookiejar.CookieJar(policy=NO_STORED_COOKIES),
    }


# The caller's timeouts, kept aside: httpx gives a redirect the same extensions, whose "timeout" we have cut.
_CONFIGURED_TIMEOUT = "outbound.timeout"

# The exception class each refusal also is, for code that catches httpx's own.
_NATIVE_REJECTIONS: Mapping[str, type[Exception]] = {
    "circuit_open": httpx.TransportError,
    "bulkhead_full": httpx.TransportError,
    "rate_limited": httpx.TransportError,
    "deadline_exceeded": httpx.TimeoutException,
}


def configured_timeout(config: ServiceConfig) -> httpx.Timeout:
    """The service's timeouts as the client's default ``httpx.Timeout``."""
    timeout = config.timeout
    return httpx.Timeout(connect=timeout.connect, read=timeout.read, write=timeout.write, pool=timeout.pool)


def _start(policy: Policy, request: httpx.Request, configured: dict[str, float | None]) -> Call:
    # httpx puts the client's timeouts or the call's own in the request's extensions: different ones were asked for.
    asked: tuple[float | None, ...] = ()
    timeout = request.extensions.get(_CONFIGURED_TIMEOUT) or request.extensions.get("timeout")
    if timeout is not None and timeout != configured:
        asked = (timeout.get("connect"), timeout.get("read"), timeout.get("write"))
    return policy.start(
        request.method, request.url, replayable=isinstance(request.stream, httpx.ByteStream), asked=asked
    )


def _cut_timeouts(call: Call, request: httpx.Request) -> None:
    extensions = request.extensions
    configured = extensions.get(_CONFIGURED_TIMEOUT)
    if configured is None:
        configured = extensions[_CONFIGURED_TIMEOUT] = extensions.get("timeout", {})
    limits = call.attempt_timeouts(
        configured.get("connect"), configured.get("read"), configured.get("write"), configured.get("pool")
    )
    request.extensions["timeout"] = {
        "connect": limits.connect,
        "read": limits.read,
        "write": limits.write,
        "pool": limits.pool,
    }


# Set by ServiceClient.send: the caller does not stream, so the transport may read the body itself, inside the
# policy, where a failure mid-body is classified, counted and retried (httpx reads it after the transport returns).
PRELOAD = "outbound.preload"


def _response_outcome(response: httpx.Response) -> Outcome:
    status = response.status_code
    # Header lookups in httpx are a scan of every header: read Retry-After only where the policy honours it.
    retry_after = response.headers.get("retry-after") if status in RETRY_AFTER_STATUSES else None
    return response_outcome(status, retry_after)


def pool_numbers(transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport) -> tuple[int, int, int]:
    """``(in_use, idle, waiting)`` from httpcore's pool. Its attributes are private: read them defensively."""
    pool = getattr(transport, "_pool", None)
    connections = list(getattr(pool, "connections", ()))
    idle = sum(1 for conn in connections if conn.is_idle())
    waiting = sum(1 for request in list(getattr(pool, "_requests", ())) if getattr(request, "connection", 1) is None)
    return len(connections) - idle, idle, waiting


def _close_inherited_sockets(transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport) -> None:
    # After fork: close this process's descriptors only. No protocol-level close (an HTTP/2 GOAWAY would end
    # the parent's connection too).
    for conn in list(getattr(getattr(transport, "_pool", None), "_connections", ())):
        stream = getattr(getattr(conn, "_connection", None), "_network_stream", None)
        sock = getattr(stream, "_sock", None) or getattr(getattr(stream, "_stream", None), "_sock", None)
        if sock is not None:
            sock.close()


class _ManagedByteStream(httpx.SyncByteStream):
    """Gives errors raised while the caller reads the body outbound's identity too."""

    def __init__(self, stream: httpx.SyncByteStream, call: Call) -> None:
        self._stream = stream
        self._call = call

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except httpx.TransportError as error:
            raise _failed(self._call, None, Outcome(_classify(error), error=error)) from error  # type: ignore[arg-type]

    def close(self) -> None:
        self._stream.close()


class _ManagedAsyncByteStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, call: Call) -> None:
        self._stream = stream
        self._call = call

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except httpx.TransportError as error:
            raise _failed(self._call, None, Outcome(_classify(error), error=error)) from error  # type: ignore[arg-type]

    async def aclose(self) -> None:
        await self._stream.aclose()


def _rejected(call: Call, request: httpx.Request, rejection: Rejection) -> Exception:
    return _errors.rejected(call, call.service, rejection, _NATIVE_REJECTIONS, {"_request": request})


def _failed(call: Call, request: httpx.Request, outcome: Outcome) -> Exception:
    return _errors.failed(call, outcome, None, {"_request": request})


class OutboundTransport(httpx.BaseTransport):
    """Wraps ``httpx.HTTPTransport``; runs the service's policy around each attempt."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._configured = configured_timeout(policy.config).as_dict()
        self.inner = httpx.HTTPTransport(**transport_options(policy.config))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return drive(_start(self._policy, request, self._configured), self, request)

    # -- the Exchange the driver runs -----------------------------------------------------------------------------

    def attempt(self, call: Call, request: httpx.Request) -> tuple[httpx.Response | None, Outcome]:
        """One attempt: the response (``None`` if it failed) and its classified outcome."""
        _cut_timeouts(call, request)
        try:
            response = self.inner.handle_request(request)
            if request.extensions.get(PRELOAD):
                stream = response.stream
                try:
                    body = b"".join(stream)  # type: ignore[arg-type]
                finally:
                    stream.close()  # type: ignore[union-attr]
                # The raw (still encoded) body, so the client decodes it exactly once, as it would have.
                response.stream = httpx.ByteStream(body)
            return response, _response_outcome(response)
        except Exception as error:  # noqa: BLE001 (every failed attempt is classified; unknown ones are OTHER)
            return None, Outcome(_classify(error), error=error)  # a body that broke was closed above

    def discard(self, response: httpx.Response) -> None:
        response.close()

    def deliver(self, call: Call, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if not request.extensions.get(PRELOAD):  # a body in memory cannot fail while it is read
            response.stream = _ManagedByteStream(response.stream, call)  # type: ignore[arg-type]
        return response

    rejected = staticmethod(_rejected)
    failed = staticmethod(_failed)

    def close(self) -> None:
        self.inner.close()

    def drop_after_fork(self) -> None:
        _close_inherited_sockets(self.inner)
        self.inner = httpx.HTTPTransport(**transport_options(self._policy.config))


class AsyncOutboundTransport(httpx.AsyncBaseTransport):
    """Wraps ``httpx.AsyncHTTPTransport``; runs the service's policy around each attempt."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._configured = configured_timeout(policy.config).as_dict()
        self.inner = httpx.AsyncHTTPTransport(**transport_options(policy.config))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await adrive(_start(self._policy, request, self._configured), self, request)

    async def attempt(self, call: Call, request: httpx.Request) -> tuple[httpx.Response | None, Outcome]:
        _cut_timeouts(call, request)
        try:
            response = await self.inner.handle_async_request(request)
            if request.extensions.get(PRELOAD):
                stream = response.stream
                try:
                    body = b"".join([chunk async for chunk in stream])  # type: ignore[union-attr]
                finally:
                    await stream.aclose()  # type: ignore[union-attr]
                response.stream = httpx.ByteStream(body)  # raw, as in the sync transport
            return response, _response_outcome(response)
        except Exception as error:  # noqa: BLE001 (every failed attempt is classified; unknown ones are OTHER)
            return None, Outcome(_classify(error), error=error)

    async def discard(self, response: httpx.Response) -> None:
        await response.aclose()

    def deliver(self, call: Call, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if not request.extensions.get(PRELOAD):
            response.stream = _ManagedAsyncByteStream(response.stream, call)  # type: ignore[arg-type]
        return response

    rejected = staticmethod(_rejected)
    failed = staticmethod(_failed)

    async def aclose(self) -> None:
        await self.inner.aclose()


# The arguments of ``request()`` that ``build_request()`` also takes.
_BUILD_ARGUMENTS = frozenset(
    {"content", "data", "files", "json", "params", "headers", "cookies", "timeout", "extensions"}
)


class UnbuiltRequestTransportError(httpx.TransportError):
    """The httpx side of a ``CircuitOpenError`` raised by ``request()`` before httpx built the request.

    Building it (URL parsing, header and cookie merging) costs several times more than refusing the call, so
    ``.request`` is built from the call's arguments only when someone reads it.
    """

    _request_args: tuple[httpx.Client | httpx.AsyncClient, str, httpx.URL | str, dict[str, Any]] | None = None

    @property
    def request(self) -> httpx.Request:
        if self._request is None and self._request_args is not None:
            client, method, url, kwargs = self._request_args
            arguments = {key: value for key, value in kwargs.items() if key in _BUILD_ARGUMENTS}
            self._request = client.build_request(method, url, **arguments)
        return super().request

    @request.setter
    def request(self, request: httpx.Request) -> None:
        self._request = request


def _reject_before_building(
    client: ServiceClient | ServiceAsyncClient, method: str, url: httpx.URL | str, kwargs: dict[str, Any]
) -> None:
    # Called while the breaker is not closed. A closed client is left to send(), which says so; an open breaker is
    # refused here, before httpx's build_request() (the transport still gates requests built by hand and streams).
    if not client.is_closed:
        rejection = client._policy.early_rejection(method)
        if rejection is not None:
            attributes: dict[str, object] = {"_request": None, "_request_args": (client, method, url, kwargs)}
            native = dict.fromkeys(_NATIVE_REJECTIONS, UnbuiltRequestTransportError)
            raise _errors.rejected(None, client.service_name, rejection, native, attributes)


_USER_CLOSE_NOTE = (
    "The registry owns this client: close() / a `with` block leave it open, so other code of the process that "
    "uses it keeps working; registry.close() closes it."
)


class ServiceClient(httpx.Client):
    """An ``httpx.Client`` bound to one service (``base_url``, headers, timeouts); calls run the policy.

    The registry owns it: ``close()`` and ``with client:`` do not close it (other code of the process shares it);
    ``registry.close()`` does.
    """

    def __init__(self, policy: Policy) -> None:
        self.service_name = policy.config.name
        self._policy = policy
        self.outbound_transport = OutboundTransport(policy)
        super().__init__(transport=self.outbound_transport, **client_options(policy.config))

    def request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
        if self._policy.breaker.state != CLOSED:
            _reject_before_building(self, method, url, kwargs)
        return super().request(method, url, **kwargs)

    def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        if self.is_closed:
            raise RegistryClosedError(f"the outbound registry was closed; client {self.service_name!r} is unusable")
        # No breaker gate here: the request is already built, and the transport gates every attempt.
        request.extensions[PRELOAD] = not stream
        return super().send(request, stream=stream, **kwargs)

    def close(self) -> None:
        """Does nothing: the registry owns this client and closes it (``registry.close()``)."""

    def __enter__(self) -> ServiceClient:
        return self  # httpx allows one `with` per client; a shared client may be entered any number of times

    def __exit__(self, *exc_info: object) -> None:
        pass

    # -- what the Service needs ---------------------------------------------------------------------------------

    def pool_numbers(self) -> tuple[int, int, int]:
        """``(in_use, idle, waiting)`` connections of this client's pool."""
        return pool_numbers(self.outbound_transport.inner)

    def drop_after_fork(self) -> None:
        self.outbound_transport.drop_after_fork()

    def shutdown(self) -> None:
        """Close the client and its pooled sockets for good (the registry's close)."""
        super().close()


class ServiceAsyncClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` bound to one service and one event loop; calls run the policy.

    The registry owns it: ``aclose()`` and ``async with client:`` do not close it; the registry closes it when its
    event loop ends or the registry closes.
    """

    def __init__(self, policy: Policy) -> None:
        self.service_name = policy.config.name
        self._policy = policy
        self.outbound_transport = AsyncOutboundTransport(policy)
        super().__init__(transport=self.outbound_transport, **client_options(policy.config))

    async def request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
        if self._policy.breaker.state != CLOSED:
            _reject_before_building(self, method, url, kwargs)
        return await super().request(method, url, **kwargs)

    async def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        if self.is_closed:
            raise RegistryClosedError(f"the outbound registry was closed; client {self.service_name!r} is unusable")
        request.extensions[PRELOAD] = not stream
        return await super().send(request, stream=stream, **kwargs)

    async def aclose(self) -> None:
        """Does nothing: the registry owns this client and closes it with its event loop or ``registry.close()``."""

    async def __aenter__(self) -> ServiceAsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    def pool_numbers(self) -> tuple[int, int, int]:
        """``(in_use, idle, waiting)`` connections of this client's pool."""
        return pool_numbers(self.outbound_transport.inner)

    async def shutdown(self) -> None:
        """Close the client and its pooled sockets for good, on its own event loop."""
        await super().aclose()
