"""httpx backend: ``ServiceClient`` / ``ServiceAsyncClient`` and the transports that run the policy.

The transports wrap ``httpx.HTTPTransport`` / ``AsyncHTTPTransport`` (so ``respx``, which patches httpcore, still
intercepts) and run each request through the shared attempt driver; httpx's own pool raises ``PoolTimeout`` after
``timeout.pool``, and its reads and writes are cut to the call's deadline (``_httpcore.py``). A client given
``transport=`` ignores its own ``limits``, ``http2`` and ``verify``, so all of those are set on the wrapped
transport; environment proxies (``trust_env``) get managed transports of their own, mounted as httpx would mount
its unmanaged ones.

The same code serves httpx2 (``client: "httpx2"``): this module is loaded again as ``outbound._backends.httpx2``,
where ``httpx`` and ``httpcore`` are httpx2 and httpcore2 (``_library.py``).
"""

from __future__ import annotations

import functools
import http.cookiejar
import importlib
import re
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._breaker import CLOSED
from .._call import Call
from .._config import CREDENTIAL_HEADERS, ServiceConfig
from .._deadline import format_budget
from .._driver import adrive, drive
from .._egress import body_too_large
from .._endpoints import route_httpx
from .._errors import EventLoopMismatchError, RegistryClosedError
from .._hedge import Hedge
from .._loops import current_loop
from .._outcome import Kind, Outcome, Rejection, response_outcome
from .._policy import Policy
from . import _errors
from ._attempt import ATTEMPT, SendRefused, agated_after, begin, gated_after, refused_outcome
from ._keys import stamp_key
from ._library import library_of
from ._origins import Origin, credentials_follow, origin
from .requests import NO_STORED_COOKIES

LIBRARY = library_of(__name__)
if TYPE_CHECKING:  # type-checked against httpx: httpx2 has the same API
    import httpx

    from .._egress import Egress
    from ._client_work import SharedClientWork
    from ._httpcore import bound_to_deadlines, guard_connections
else:
    httpx = LIBRARY.httpx()
    SharedClientWork = LIBRARY.backend("_client_work").SharedClientWork
    bound_to_deadlines = LIBRARY.backend("_httpcore").bound_to_deadlines
    guard_connections = LIBRARY.backend("_httpcore").guard_connections

# A transport for a service, or a callable making one (per client: each event loop gets its own async client).
InnerTransport = httpx.BaseTransport | httpx.AsyncBaseTransport | Callable[[], Any]

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
    if type(error).__name__ == "AllMockedAssertionError":  # respx: the request matched no route
        return Kind.MOCK_REFUSED
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
def ssl_context(
    verify: bool | str, cert: str | tuple[str, str] | None, http2: bool, trust_env: bool = True
) -> ssl.SSLContext:
    """One SSL context per (verify, cert, http2, trust_env), shared by every client that needs it.

    Building one loads the CA bundle (~20 ms); Flask async views and ``async_to_sync`` bridges make a new client per
    event loop, so without sharing every such request would pay that again. A context is safe to share between
    threads and survives fork (it holds no sockets). ``http2`` is part of the key because httpcore sets the ALPN
    protocols on the context for each connection: contexts are shared only where it sets the same ones.
    """
    if isinstance(verify, bool) and cert is None:
        return httpx.create_ssl_context(verify=verify, trust_env=trust_env)  # SSL_CERT_FILE / SSL_CERT_DIR
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


def transport_options(config: ServiceConfig, proxy: str | None) -> dict[str, Any]:
    """Keyword arguments for ``httpx.HTTPTransport`` / ``AsyncHTTPTransport`` from the service's settings."""
    if config.ssl_context is not None:
        verify: ssl.SSLContext = config.ssl_context() if callable(config.ssl_context) else config.ssl_context
    else:
        verify = ssl_context(config.verify, config.cert, config.http2, config.trust_env)
    pool = config.pool
    return {
        "verify": verify,
        "http2": config.http2,
        "limits": httpx.Limits(
            max_connections=pool.max_connections,
            max_keepalive_connections=pool.max_keepalive,
            keepalive_expiry=pool.keepalive_expiry,
        ),
        "proxy": proxy,
        "retries": 0,
    }


def _origin(url: httpx.URL) -> Origin:
    return origin(url.scheme, url.host, url.port)


class _BaseURLAuth(httpx.Auth):
    """Basic credentials from ``base_url``'s userinfo, sent only to the base URL's origin.

    They were part of that URL, so they belong to it: an absolute URL to another host, called through the same
    client, must not carry them (as it would with a client-wide ``auth=``).
    """

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self._origin = _origin(httpx.URL(base_url))
        self._basic = httpx.BasicAuth(username, password)

    def auth_flow(self, request: httpx.Request) -> Any:
        if _origin(request.url) == self._origin:
            yield from self._basic.auth_flow(request)
        else:
            yield request


def client_options(config: ServiceConfig) -> dict[str, Any]:
    """Keyword arguments shared by the sync and async clients."""
    auth = _BaseURLAuth(config.base_url, *config.auth) if config.auth is not None else None
    return {
        "auth": auth,  # from base_url's userinfo, which the settings parser took out of the URL
        "base_url": config.base_url,
        "headers": dict(config.headers),
        "timeout": configured_timeout(config),
        # httpx follows none by default; the redirects a shared client follows drop credentials across origins.
        "follow_redirects": config.follow_redirects,
        # httpx reads no environment proxy for a client given a transport; the clients mount managed transports for
        # them (environment_proxies). The service's own `proxy` wins over the environment.
        "trust_env": config.trust_env,
        # One client serves every request: never store one caller's response cookies for the next (see requests).
        "cookies": http.cookiejar.CookieJar(policy=NO_STORED_COOKIES),
        **({"max_redirects": config.egress.max_redirects} if config.egress is not None else {}),
    }


# The caller's timeouts, kept aside: httpx gives a redirect the same extensions, whose "timeout" we have cut.
_CONFIGURED_TIMEOUT = "outbound.timeout"

# The exception class each refusal also is, for code that catches httpx's own.
_NATIVE_REJECTIONS: Mapping[str, type[Exception]] = {
    "circuit_open": httpx.TransportError,
    "bulkhead_full": httpx.TransportError,
    "rate_limited": httpx.TransportError,
    "deadline_exceeded": httpx.TimeoutException,
    "egress_denied": httpx.TransportError,
    "concurrency_limited": httpx.TransportError,
    "throttled": httpx.TransportError,
}


class ResponseTooLarge(httpx.TransportError):
    """The response body is over the service's ``egress.max_response_bytes`` (raised as an ``outbound.CallError``)."""

    outbound_detail = True  # its message goes into the CallError's


def _egress_of(config: ServiceConfig) -> Egress | None:
    if config.egress is None:
        return None
    from .._egress import Egress  # imported by services that set egress only

    return Egress(config.egress)


def _check_egress(policy: Policy, egress: Egress, request: httpx.Request) -> None:
    # Every request and every redirect hop (httpx sends each through the transport), before anything is sent.
    url = request.url
    rejection = egress.check(url.scheme, url.raw_host.decode("ascii", "replace"), url.port)
    if rejection is not None:
        policy.rejected(request.method, rejection)
        raise _errors.rejected(None, policy.name, rejection, _NATIVE_REJECTIONS, {"_request": request})


def _limited(chunks: Iterator[bytes], limit: int, request: httpx.Request) -> Iterator[bytes]:
    read = 0
    for chunk in chunks:
        read += len(chunk)
        if read > limit:
            raise ResponseTooLarge(body_too_large(limit), request=request)
        yield chunk


async def _alimited(chunks: AsyncIterator[bytes], limit: int, request: httpx.Request) -> AsyncIterator[bytes]:
    read = 0
    async for chunk in chunks:
        read += len(chunk)
        if read > limit:
            raise ResponseTooLarge(body_too_large(limit), request=request)
        yield chunk


def _announced_too_large(response: httpx.Response, limit: int) -> bool:
    length = response.headers.get("content-length", "")
    return length.isdigit() and int(length) > limit


def environment_proxies(config: ServiceConfig) -> dict[str, str | None]:
    """The proxies httpx would read from the environment (``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``...): mount
    pattern to proxy URL, or to ``None`` for a ``NO_PROXY`` host (the client's own transport).

    httpx reads none of them once a client is given a transport, as every managed client is: the service mounts
    managed transports for them instead.
    """
    if not config.trust_env or config.proxy is not None:
        return {}
    try:  # private, but it is what httpx's trust_env reads
        read = importlib.import_module(f"{httpx.__name__}._utils").get_environment_proxies
    except (ImportError, AttributeError):
        return {}
    return dict(read())


def _proxy_mounts(policy: Policy, given: InnerTransport | None, cls: type[Any]) -> dict[str, Any]:
    # A transport given for tests answers every call itself: environment proxies do not apply to it.
    if given is not None:
        return {}
    return {
        pattern: None if url is None else cls(policy, proxy=url)
        for pattern, url in environment_proxies(policy.config).items()
    }


def configured_timeout(config: ServiceConfig) -> httpx.Timeout:
    """The service's timeouts as the client's default ``httpx.Timeout``."""
    timeout = config.timeout
    return httpx.Timeout(connect=timeout.connect, read=timeout.read, write=timeout.write, pool=timeout.pool)


# The extension a caller sets for one call's own retry policy: ``extensions={"outbound.retries": False}``.
RETRIES = "outbound.retries"


def _start(policy: Policy, request: httpx.Request, configured: dict[str, float | None]) -> Call:
    # httpx puts the client's timeouts or the call's own in the request's extensions: different ones were asked for.
    asked: tuple[float | None, ...] = ()
    extensions = request.extensions
    timeout = extensions.get(_CONFIGURED_TIMEOUT) or extensions.get("timeout")
    if timeout is not None and timeout != configured:
        asked = (timeout.get("connect"), timeout.get("read"), timeout.get("write"))
    call = policy.start(
        request.method,
        request.url,
        replayable=isinstance(request.stream, httpx.ByteStream),
        asked=asked,
        retries=extensions.get(RETRIES),
    )
    if request.method in policy.keyed_methods:  # one key for every attempt (and hedge) of this call
        stamp_key(request, request.headers, policy.key_header)
    return call


def _cut_timeouts(call: Call, request: httpx.Request, header: str | None) -> None:
    """Set this attempt's timeouts (cut to the call's deadline) and its deadline ``header``, if the service sends
    one."""
    deadline = call.deadline
    if deadline is None:
        return  # the timeouts httpx put in the extensions stand, for every attempt
    if header is not None:
        request.headers[header] = format_budget(header, deadline.left())
    extensions = request.extensions
    configured = extensions.get(_CONFIGURED_TIMEOUT)
    if configured is None:
        configured = extensions[_CONFIGURED_TIMEOUT] = extensions.get("timeout", {})
    connect, read, write, pool, _ = deadline.cut(
        configured.get("connect"), configured.get("read"), configured.get("write"), configured.get("pool")
    )
    extensions["timeout"] = {"connect": connect, "read": read, "write": write, "pool": pool}


# Set by ServiceClient.send: the caller does not stream, so the transport may read the body itself, inside the
# policy, where a failure mid-body is classified, counted and retried (httpx reads it after the transport returns).
PRELOAD = "outbound.preload"


def _response_outcome(response: httpx.Response, policy: Policy) -> Outcome:
    status = response.status_code
    # Header lookups in httpx are a scan of every header: read Retry-After only where the policy honours it.
    retry_after = response.headers.get("retry-after") if status in policy.retry_after_statuses else None
    return response_outcome(status, retry_after)


def pool_numbers(transport: Any) -> tuple[int, int, int]:
    """``(in_use, idle, waiting)`` from httpcore's pool. Its attributes are private: read them defensively."""
    counted = getattr(transport, "pool_numbers", None)
    if counted is not None:  # a transport that counts its own pool (aiohttp's)
        return counted()  # type: ignore[no-any-return]
    pool = getattr(transport, "_pool", None)
    connections = list(getattr(pool, "connections", ()))
    idle = sum(1 for conn in connections if conn.is_idle())
    waiting = sum(1 for request in list(getattr(pool, "_requests", ())) if getattr(request, "connection", 1) is None)
    return len(connections) - idle, idle, waiting


def _close_inherited_sockets(transport: Any) -> None:
    # After fork: close this process's descriptors only. No protocol-level close (an HTTP/2 GOAWAY would end
    # the parent's connection too).
    for conn in list(getattr(getattr(transport, "_pool", None), "_connections", ())):
        stream = getattr(getattr(conn, "_connection", None), "_network_stream", None)
        stream = getattr(stream, "stream", stream)  # inside our DeadlineStream
        sock = getattr(stream, "_sock", None) or getattr(getattr(stream, "_stream", None), "_sock", None)
        if sock is not None:
            sock.close()


class _ManagedByteStream(httpx.SyncByteStream):
    """Gives errors raised while the caller reads the body outbound's identity too."""

    def __init__(self, stream: httpx.SyncByteStream, call: Call, limit: int | None = None, request: Any = None) -> None:
        self._stream = stream
        self._call = call
        self._limit = limit  # egress.max_response_bytes
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        try:
            if self._limit is None:
                yield from self._stream
            else:
                yield from _limited(iter(self._stream), self._limit, self._request)
        except httpx.TransportError as error:
            raise _failed(self._call, None, Outcome(_classify(error), error=error)) from error  # type: ignore[arg-type]

    def close(self) -> None:
        self._stream.close()


class _ManagedAsyncByteStream(httpx.AsyncByteStream):
    def __init__(
        self, stream: httpx.AsyncByteStream, call: Call, limit: int | None = None, request: Any = None
    ) -> None:
        self._stream = stream
        self._call = call
        self._limit = limit
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            chunks: AsyncIterator[bytes] = aiter(self._stream)
            if self._limit is not None:
                chunks = _alimited(chunks, self._limit, self._request)
            async for chunk in chunks:
                yield chunk
        except httpx.TransportError as error:
            raise _failed(self._call, None, Outcome(_classify(error), error=error)) from error  # type: ignore[arg-type]

    async def aclose(self) -> None:
        await self._stream.aclose()


def _rejected(call: Call, request: httpx.Request, rejection: Rejection) -> Exception:
    return _errors.rejected(call, call.service, rejection, _NATIVE_REJECTIONS, {"_request": request})


def _failed(call: Call, request: httpx.Request, outcome: Outcome) -> Exception:
    return _errors.failed(call, outcome, None, {"_request": request})


_TIMEOUTS = frozenset({Kind.CONNECT_TIMEOUT, Kind.READ_TIMEOUT, Kind.WRITE_TIMEOUT, Kind.POOL_TIMEOUT})


def _failed_attempt(call: Call, policy: Policy, error: Exception) -> Outcome:
    if isinstance(error, SendRefused):
        return refused_outcome(error)
    if policy.closed:
        return Outcome(Kind.CLOSED, error=error)  # our own shutdown closed the connection: not the upstream's failure
    kind = _classify(error)
    deadline = call.deadline
    return Outcome(kind, error=error, deadline=kind in _TIMEOUTS and deadline is not None and deadline.passed())


def _make_inner(policy: Policy, proxy: str | None, given: InnerTransport | None, cls: type[Any]) -> Any:
    config = policy.config
    if given is None and cls is httpx.AsyncHTTPTransport and config.transport == "aiohttp":
        # The optional extra's import, for the services that use it.
        inner: Any = LIBRARY.backend("aiohttp").aiohttp_transport(config, proxy)
    elif given is None:
        inner = cls(**transport_options(config, proxy))
    else:
        inner = (
            given()
            if callable(given) and not isinstance(given, httpx.BaseTransport | httpx.AsyncBaseTransport)
            else given
        )
    if config.egress is not None and proxy is None and given is None:
        guard_connections(inner, config.egress)  # with a proxy, the proxy resolves the names (docs/egress.md)
    bound_to_deadlines(inner, max_age=config.pool.max_connection_age)
    if policy.chaos is not None:  # the fault layer, below the policy (``_chaos.py``)
        from ._chaos import chaos_transport

        return chaos_transport(httpx, inner, policy.chaos)
    return inner


class _Exchange:
    """What the sync and async transports share as the driver's exchange (``_driver.Exchange``): delivering a response
    with its body under the call's errors, the call's exceptions, and the pool's numbers."""

    inner: Any
    _managed_stream: type[_ManagedByteStream | _ManagedAsyncByteStream]
    _max_body: int | None  # egress.max_response_bytes

    def deliver(self, call: Call, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if not request.extensions.get(PRELOAD):  # a body in memory cannot fail while it is read
            response.stream = self._managed_stream(response.stream, call, self._max_body, request)  # type: ignore[arg-type]
        return response

    rejected = staticmethod(_rejected)
    failed = staticmethod(_failed)

    def pool_numbers(self) -> tuple[int, int, int]:
        return pool_numbers(self.inner)


class OutboundTransport(_Exchange, httpx.BaseTransport):
    """Wraps ``httpx.HTTPTransport`` (or the transport given for tests); runs the service's policy around each
    attempt."""

    _managed_stream = _ManagedByteStream

    def __init__(self, policy: Policy, *, proxy: str | None = None, inner: InnerTransport | None = None) -> None:
        self._policy = policy
        self._proxy = proxy
        self._given = inner
        self._configured = configured_timeout(policy.config).as_dict()
        self._header = policy.config.deadline_header
        self._egress = _egress_of(policy.config)
        self._max_body = policy.config.egress.max_response_bytes if policy.config.egress is not None else None
        self.inner: httpx.BaseTransport = _make_inner(policy, proxy, inner, httpx.HTTPTransport)
        if self._egress is not None:
            self.handle_request = self._checked_handle_request  # type: ignore[method-assign]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return drive(_start(self._policy, request, self._configured), self, request)

    def _checked_handle_request(self, request: httpx.Request) -> httpx.Response:
        # A service with egress: every request and redirect hop (httpx sends each through here) is checked first.
        assert self._egress is not None
        _check_egress(self._policy, self._egress, request)
        return drive(_start(self._policy, request, self._configured), self, request)

    # -- the Exchange the driver runs -----------------------------------------------------------------------------

    def attempt(self, call: Call, request: httpx.Request) -> tuple[httpx.Response | None, Outcome]:
        """One attempt: the response (``None`` if it failed) and its classified outcome."""
        _cut_timeouts(call, request, self._header)
        if self._policy.endpoints is not None:  # several endpoints: this attempt goes to the one it was admitted to
            route_httpx(self._policy.endpoints, call.permits, self._policy.endpoint_index, request)
        token = begin(call)
        try:
            response = self.inner.handle_request(request)
            limit = self._max_body
            if limit is not None and _announced_too_large(response, limit):
                response.close()
                raise ResponseTooLarge(body_too_large(limit), request=request)
            if request.extensions.get(PRELOAD):
                stream = response.stream
                try:
                    chunks: Iterator[bytes] = iter(stream)  # type: ignore[arg-type]
                    body = b"".join(chunks if limit is None else _limited(chunks, limit, request))
                finally:
                    stream.close()  # type: ignore[union-attr]
                # The raw (still encoded) body, so the client decodes it exactly once, as it would have.
                response.stream = httpx.ByteStream(body)
            refused = gated_after(ATTEMPT.get())  # type: ignore[arg-type]  # a transport that is not the network
            if refused is not None:
                response.close()
                return None, refused
            return response, _response_outcome(response, self._policy)
        except Exception as error:  # noqa: BLE001 (every failed attempt is classified; unknown ones are OTHER)
            return None, _failed_attempt(call, self._policy, error)  # a body that broke was closed above
        finally:
            ATTEMPT.reset(token)
            if self._policy.closed:
                self.inner.close()  # an attempt that raced close() must not leave a connection in the pool

    def discard(self, response: httpx.Response) -> None:
        response.close()

    def close(self) -> None:
        self.inner.close()

    def drop_after_fork(self) -> None:
        if self._given is not None and not callable(self._given):
            return  # a transport the caller made is the caller's to look after
        _close_inherited_sockets(self.inner)
        self.inner = _make_inner(self._policy, self._proxy, self._given, httpx.HTTPTransport)


class AsyncOutboundTransport(_Exchange, httpx.AsyncBaseTransport):
    """Wraps ``httpx.AsyncHTTPTransport`` (or the transport given for tests); runs the service's policy around each
    attempt."""

    _managed_stream = _ManagedAsyncByteStream

    def __init__(self, policy: Policy, *, proxy: str | None = None, inner: InnerTransport | None = None) -> None:
        self._policy = policy
        self._configured = configured_timeout(policy.config).as_dict()
        self._header = policy.config.deadline_header
        self._egress = _egress_of(policy.config)
        self._max_body = policy.config.egress.max_response_bytes if policy.config.egress is not None else None
        self.inner: httpx.AsyncBaseTransport = _make_inner(policy, proxy, inner, httpx.AsyncHTTPTransport)
        if self._egress is not None:
            self.handle_async_request = self._checked_handle_async_request  # type: ignore[method-assign]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await adrive(_start(self._policy, request, self._configured), self, request)

    async def _checked_handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert self._egress is not None
        _check_egress(self._policy, self._egress, request)
        return await adrive(_start(self._policy, request, self._configured), self, request)

    async def attempt(
        self, call: Call, request: httpx.Request, hedge: Hedge | None = None
    ) -> tuple[httpx.Response | None, Outcome]:
        _cut_timeouts(call, request, self._header)
        if self._policy.endpoints is not None:  # several endpoints: this attempt (or hedge) goes to its own
            permits = hedge.permits if hedge is not None else call.permits
            route_httpx(self._policy.endpoints, permits, self._policy.endpoint_index, request)
        token = begin(call, hedge.permits if hedge is not None else None)
        try:
            response = await self.inner.handle_async_request(request)
            limit = self._max_body
            if limit is not None and _announced_too_large(response, limit):
                await response.aclose()
                raise ResponseTooLarge(body_too_large(limit), request=request)
            if request.extensions.get(PRELOAD):
                stream = response.stream
                try:
                    chunks: AsyncIterator[bytes] = aiter(stream)  # type: ignore[arg-type]
                    if limit is not None:
                        chunks = _alimited(chunks, limit, request)
                    body = b"".join([chunk async for chunk in chunks])
                finally:
                    await stream.aclose()  # type: ignore[union-attr]
                response.stream = httpx.ByteStream(body)  # raw, as in the sync transport
            refused = await agated_after(ATTEMPT.get())  # type: ignore[arg-type]
            if refused is not None:
                await response.aclose()
                return None, refused
            return response, _response_outcome(response, self._policy)
        except Exception as error:  # noqa: BLE001 (every failed attempt is classified; unknown ones are OTHER)
            return None, _failed_attempt(call, self._policy, error)
        finally:
            ATTEMPT.reset(token)
            if self._policy.closed:
                await self.inner.aclose()

    def copy(self, request: httpx.Request) -> httpx.Request:
        # Its own headers and extensions (each attempt sets its timeouts and deadline header there); the body is a
        # ByteStream (only replayable calls are hedged), which any number of attempts can read.
        return httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            stream=request.stream,
            extensions=dict(request.extensions),
        )

    async def discard(self, response: httpx.Response) -> None:
        await response.aclose()

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


# Cookies that responses set during one call's redirects, kept for that call only (the shared client stores none).
_CALL_COOKIES = "outbound.call_cookies"
# What a cookie's name and value may hold to be sent back: printable ASCII (RFC 6265's cookie-octets, leniently).
_SENDABLE_COOKIE = re.compile(r"[\x20-\x7e]*")


def _drop_unsendable(jar: http.cookiejar.CookieJar) -> None:
    # httpx writes the next hop's Cookie header as ASCII: a Set-Cookie with any other character (an upstream's "²")
    # would fail the whole call with a UnicodeEncodeError inside httpx (as it does with a plain client). Such a cookie
    # is malformed; it is ignored, as a browser ignores it.
    for cookie in list(jar):
        if not (_SENDABLE_COOKIE.fullmatch(cookie.name) and _SENDABLE_COOKIE.fullmatch(cookie.value or "")):
            jar.clear(cookie.domain, cookie.path, cookie.name)


class _ManagedRedirects:
    """What a shared client does on redirects that a private one need not.

    - Cookies set by a redirect response follow the rest of that call (a login flow: ``POST /login`` -> 303 +
      ``Set-Cookie`` -> ``GET /``), though the client itself stores none.
    - On a hop to another origin (scheme, host or port; the same host upgraded from http to https on the default
      ports keeps them, as requests and httpx do), no credential the caller meant for this one goes along:
      httpx strips ``Authorization``; here ``Cookie`` keeps only the new origin's own cookies, and
      ``Proxy-Authorization`` and every header in ``sensitive_headers`` are removed too.
    """

    _credential_headers: frozenset[str]

    def _build_redirect_request(self, request: httpx.Request, response: httpx.Response) -> httpx.Request:
        redirect: httpx.Request = super()._build_redirect_request(request, response)  # type: ignore[misc]
        jar = request.extensions.get(_CALL_COOKIES)
        if jar is None:
            jar = request.extensions[_CALL_COOKIES] = http.cookiejar.CookieJar()
        call_cookies = httpx.Cookies(jar)
        call_cookies.extract_cookies(response)
        _drop_unsendable(jar)
        headers = redirect.headers
        follow = credentials_follow(_origin(request.url), _origin(redirect.url))
        if not follow:
            for name in [name for name in headers if name.lower() in self._credential_headers]:
                del headers[name]
            # The client's own cookies go only where their domain matches (one with no domain goes nowhere).
            client_cookies = [cookie for cookie in self.cookies.jar if cookie.domain]  # type: ignore[attr-defined]
            for cookie in client_cookies:
                jar.set_cookie(cookie)
        inherited = headers.pop("Cookie", None) if follow else None
        call_cookies.set_cookie_header(redirect)
        merged = "; ".join(part for part in (inherited, headers.get("Cookie")) if part)
        if merged:
            headers["Cookie"] = merged
        return redirect


def _cached(policy: Policy, top: Any, mounts: dict[str, Any], flavour: int) -> tuple[Any, dict[str, Any]]:
    # A service with a cache or a fallback: its layer goes on top of every managed transport (``_cache/_httpx.py``).
    if policy.cache is None:
        return top, mounts
    from .._cache._httpx import transport_classes

    layer = transport_classes(httpx)[flavour]
    wrapped = {pattern: None if mount is None else layer(policy.cache, mount) for pattern, mount in mounts.items()}
    return layer(policy.cache, top), wrapped


class ServiceClient(_ManagedRedirects, SharedClientWork, httpx.Client):
    """An ``httpx.Client`` bound to one service (``base_url``, headers, timeouts); calls run the policy.

    The registry owns it: ``close()`` and ``with client:`` do not close it (other code of the process shares it);
    ``registry.close()`` does.
    """

    transport_class: type[OutboundTransport] = OutboundTransport  # the SDK layer's subclass for an `sdk` service

    def __init__(self, policy: Policy, *, transport: InnerTransport | None = None) -> None:
        config = policy.config
        self.service_name = config.name
        self._policy = policy
        self._credential_headers = CREDENTIAL_HEADERS | config.sensitive_headers
        self.outbound_transport = self.transport_class(policy, proxy=config.proxy, inner=transport)
        mounts = _proxy_mounts(policy, transport, self.transport_class)
        self._managed_mounts = [mount for mount in mounts.values() if mount is not None]
        top, mounts = _cached(policy, self.outbound_transport, mounts, 0)
        super().__init__(transport=top, mounts=mounts, **client_options(config))
        self._keep_shared_work()

    def request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
        if self._policy.breaker.state != CLOSED and self._policy.cache is None:  # the cache may answer it
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
        """``(in_use, idle, waiting)`` connections of this client's pools."""
        numbers = [t.pool_numbers() for t in (self.outbound_transport, *self._managed_mounts)]
        return sum(n[0] for n in numbers), sum(n[1] for n in numbers), sum(n[2] for n in numbers)

    def drop_after_fork(self) -> None:
        for transport in (self.outbound_transport, *self._managed_mounts):
            transport.drop_after_fork()

    def shutdown(self) -> None:
        """Close the client and its pooled sockets for good (the registry's close)."""
        super().close()


class ServiceAsyncClient(_ManagedRedirects, SharedClientWork, httpx.AsyncClient):
    """An ``httpx.AsyncClient`` bound to one service and one event loop; calls run the policy.

    The registry owns it: ``aclose()`` and ``async with client:`` do not close it; the registry closes it when its
    event loop ends or the registry closes.
    """

    transport_class: type[AsyncOutboundTransport] = AsyncOutboundTransport

    def __init__(self, policy: Policy, *, loop: object, transport: InnerTransport | None = None) -> None:
        config = policy.config
        self.service_name = config.name
        self._policy = policy
        self._loop = loop  # the asyncio loop (or trio run) this client belongs to
        self._credential_headers = CREDENTIAL_HEADERS | config.sensitive_headers
        self.outbound_transport = self.transport_class(policy, proxy=config.proxy, inner=transport)
        mounts = _proxy_mounts(policy, transport, self.transport_class)
        self._managed_mounts = [mount for mount in mounts.values() if mount is not None]
        top, mounts = _cached(policy, self.outbound_transport, mounts, 1)
        super().__init__(transport=top, mounts=mounts, **client_options(config))
        self._keep_shared_work()

    async def request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
        if self._policy.breaker.state != CLOSED and self._policy.cache is None:  # the cache may answer it
            _reject_before_building(self, method, url, kwargs)
        return await super().request(method, url, **kwargs)

    async def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        if current_loop() is not self._loop:
            # Checked first: the client of a loop that has ended is also closed, and "the registry was closed"
            # would send the caller looking in the wrong place.
            raise EventLoopMismatchError(
                f"this AsyncClient of service {self.service_name!r} belongs to the event loop that was running when "
                "async_client() returned it (that loop has ended, or it is not the one running now), and an "
                f"AsyncClient cannot move between loops: call async_client({self.service_name!r}) inside the "
                "coroutine that uses it"
            )
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
        """``(in_use, idle, waiting)`` connections of this client's pools."""
        numbers = [t.pool_numbers() for t in (self.outbound_transport, *self._managed_mounts)]
        return sum(n[0] for n in numbers), sum(n[1] for n in numbers), sum(n[2] for n in numbers)

    async def shutdown(self) -> None:
        """Close the client and its pooled sockets for good, on its own event loop."""
        await super().aclose()
