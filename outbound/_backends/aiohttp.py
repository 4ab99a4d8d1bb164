"""aiohttp as the async client's transport (``transport: "aiohttp"``, httpx services, extra ``outbound-http[aiohttp]``).

For httpx2 services this module is loaded again as ``outbound._backends.aiohttp2`` (``_library.py``), on
httpx-aiohttp's transport for httpx2 (``httpx_aiohttp.httpx2``).

The client is still a ``ServiceAsyncClient`` (an ``httpx.AsyncClient``) and the policy still runs in
``AsyncOutboundTransport``; only the transport it wraps differs: an ``httpx_aiohttp.AiohttpTransport`` whose
``aiohttp.ClientSession`` is built from the service's settings, on the client's own event loop. What this module
adds to httpx-aiohttp, and why:

- **Errors** become httpx's own classes, as httpx maps httpcore's (``_NATIVE``), so ``_classify`` and the caller's
  ``except httpx.ReadTimeout`` see the same thing on both transports. httpx-aiohttp's map is too coarse for the
  policy: a refused connection and a full pool both become ``ConnectTimeout``, an unparseable response passes
  through as aiohttp's. Messages lose query strings (aiohttp puts the whole URL in some). The one difference: a
  body the server cuts short is ``ReadError`` (httpcore: ``RemoteProtocolError``); both are a read error.
- **Timeouts**: httpx's ``connect`` bounds aiohttp's connection (name resolution included) and ``read`` each of
  its reads; ``write`` bounds each write of the request body (``_Request``: aiohttp has none), and ``pool`` the wait
  for a free connection in ``Pool``, a first-come, first-served queue in front of aiohttp's connector (whose own
  limit lets a newcomer overtake the calls waiting). ``pool.max_connection_age`` retires old connections
  (``_Connector``). aiohttp rounds timeouts of 5 s and more up to whole seconds: not these.
- **The total deadline** inside an attempt: httpcore's reads are cut to it (``_deadline.py``); aiohttp's cannot be,
  so the attempt's awaits (the request, and the body the transport reads itself) run under an asyncio timeout at
  the deadline, and a call cut there fails with ``ReadTimeout`` (``WriteTimeout`` while it was sending its body),
  "deadline expired", as httpcore's. A body streamed to the caller is read under the read timeout alone, as with
  httpcore.
- **What a shared client must not do**: the session keeps no cookies, reads no ``~/.netrc`` or environment proxies
  (the client mounts managed transports for those, as for httpcore) and does not resend a request on its own when
  a connection drops (aiohttp does so once for idempotent methods; the policy's retries are budgeted).
- **Mocks**: respx (and pytest-httpx) intercept by patching httpcore's pool or httpx's transport, neither of which
  aiohttp uses. While one of them is patched, requests go through an httpx transport of the same settings instead,
  so the mock sees them and the policy still runs around them.
- **asyncio only**: aiohttp does not run under trio; HTTP/1.1 only; no SOCKS proxies.

What of aiohttp's is not its documented API (``tests/core/test_aiohttp.py`` fails if one goes): the connector's
``_acquired`` and ``_conns`` (pool numbers), the session's ``_retry_connection`` and ``ClientRequest.write_bytes``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import io
import ipaddress
import math
import re
import socket
import sys
import time
import weakref
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import aiohttp
import yarl
from aiohttp.http_exceptions import HttpProcessingError

from .._config import ServiceConfig
from .._egress import Egress, EgressRefused
from .._errors import ConfigError, redact_url
from ._attempt import ATTEMPT, DEADLINE_MESSAGE, apass_gates
from ._library import library_of

LIBRARY = library_of(__name__)
if TYPE_CHECKING:  # type-checked against httpx: httpx2 (and httpx-aiohttp's transport for it) has the same API
    import httpcore
    import httpx
    from httpx_aiohttp import AiohttpTransport

    from ._httpcore import bound_to_deadlines
    from .httpx import PRELOAD, transport_options
    from .httpx import pool_numbers as httpcore_pool_numbers
else:
    httpx, httpcore = LIBRARY.httpx(), LIBRARY.httpcore()
    AiohttpTransport = LIBRARY.aiohttp_transport()
    bound_to_deadlines = LIBRARY.backend("_httpcore").bound_to_deadlines
    _clients = LIBRARY.backend("httpx")
    PRELOAD, transport_options, httpcore_pool_numbers = (
        _clients.PRELOAD,
        _clients.transport_options,
        _clients.pool_numbers,
    )

if sys.version_info >= (3, 11):
    from asyncio import timeout, timeout_at
else:  # aiohttp itself depends on async-timeout before Python 3.11
    from async_timeout import timeout, timeout_at  # type: ignore[import-not-found, unused-ignore]


class Pool:
    """The service's connections as a first-come, first-served queue: ``max_connections`` slots, each handed
    straight from the call that frees it to the call that waited longest.

    aiohttp's connector hands a freed connection to whichever call asks first, and under load a call that keeps
    coming back overtakes the ones waiting, whose waits then exceed ``timeout.pool``; httpcore's pool serves them
    in order. A call holds its slot until its response is closed (or its request failed); the connector, limited
    to the same number, then always has a connection for it.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in list(self._waiters) if not waiter.done())

    async def acquire(self, wait: float | None) -> None:
        """Take a slot, waiting at most ``wait`` seconds (``None``: as long as it takes).

        Raises:
            httpx.PoolTimeout: no slot freed in time.
        """
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with timeout(wait):
                await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot in the same instant: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(error, asyncio.TimeoutError):
                raise httpx.PoolTimeout("no connection of the pool freed within timeout.pool") from None
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class _Upload:
    """The running request's body: its ``timeout.write``, and whether a write is under way (the deadline cutting a
    write is a write timeout, as httpcore says)."""

    __slots__ = ("timeout", "writing")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.writing = False


# For the task aiohttp writes the request body from (it copies this context when the request starts it).
_UPLOAD: ContextVar[_Upload | None] = ContextVar("outbound_aiohttp_upload", default=None)


class WriteStalled(Exception):
    """A write of the request body took longer than ``timeout.write`` (aiohttp reports it as its cause)."""


class _BodyWriter:
    """An aiohttp stream writer each of whose writes ends within ``timeout.write``, as httpcore's do, and that
    aborts its connection when a write does not end: a closed one would wait for the peer to read what is buffered
    (forever, from a peer that stalled), holding the socket."""

    def __init__(self, writer: Any, upload: _Upload) -> None:
        object.__setattr__(self, "_writer", writer)
        object.__setattr__(self, "_upload", upload)

    async def write(self, chunk: Any, *args: Any, **kwargs: Any) -> None:
        upload = self._upload
        upload.writing = True
        transport = getattr(self._writer, "transport", None)  # taken now: aiohttp forgets it when it closes
        try:
            async with timeout(upload.timeout):
                await self._writer.write(chunk, *args, **kwargs)
            upload.writing = False
        except BaseException as error:  # the timeout, or the call cancelled mid-write (its deadline)
            if transport is not None:
                transport.abort()
            if isinstance(error, asyncio.TimeoutError):
                raise WriteStalled("a write of the request body exceeded timeout.write") from None
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._writer, name, value)


class _Request(aiohttp.ClientRequest):
    """aiohttp's request, writing its body under ``timeout.write`` (aiohttp has no write timeout of its own)."""

    async def write_bytes(self, writer: Any, *args: Any, **kwargs: Any) -> None:
        upload = _UPLOAD.get()
        guarded: Any = writer if upload is None else _BodyWriter(writer, upload)  # it passes everything else on
        await super().write_bytes(guarded, *args, **kwargs)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, retiring connections older than ``pool.max_connection_age`` when next taken, and asking
    the attempt's send gates (``_attempt.py``) once its connection is made."""

    def __init__(self, *, max_age: float | None, **options: Any) -> None:
        super().__init__(**options)
        self._max_age = max_age
        self._born: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def connect(self, req: Any, traces: Any, timeout: Any) -> aiohttp.connector.Connection:
        connection = await self._young_connection(req, traces, timeout)
        attempt = ATTEMPT.get()
        if attempt is not None and attempt.call is not None:
            try:
                await apass_gates(attempt)  # connected, and nothing written yet: the send gates' moment
            except BaseException:
                connection.release()
                raise
        return connection

    async def _young_connection(self, req: Any, traces: Any, timeout: Any) -> aiohttp.connector.Connection:
        while True:
            connection = await super().connect(req, traces, timeout)
            if self._max_age is None or connection.protocol is None:
                return connection
            now = time.monotonic()
            # A connection is first seen here right after it was made.
            if now - self._born.setdefault(connection.protocol, now) <= self._max_age:
                return connection
            connection.close()  # too old: closed, and its place taken by a new one


class _EgressResolver(aiohttp.ThreadedResolver):
    """aiohttp's resolver, every answer checked against the service's egress rules (``_egress.py``): aiohttp then
    connects to the addresses it returns, and keeps the host name for TLS. (aiohttp does not ask a resolver about a
    literal address: the transport checks those in the URL, before the call.)"""

    def __init__(self, egress: Egress) -> None:
        super().__init__()
        self._egress = egress

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> Any:
        answers = await super().resolve(host, port, family)
        for answer in answers:
            address = ipaddress.ip_address(answer["host"].split("%", 1)[0])
            rejection = self._egress.check_address(host, address)
            if rejection is not None:
                raise EgressRefused(rejection)
        if not answers:
            raise OSError(f"{host!r} resolves to no address")
        return answers


# aiohttp's exceptions as httpx's (the class httpx gives the same failure through httpcore). Order matters:
# subclasses before their bases.
_NATIVE: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    # A failed TLS handshake: httpx's ConnectError too, caused by the ssl.SSLError that _classify looks for.
    (aiohttp.ClientSSLError, httpx.ConnectError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, unreachable, DNS; the proxy's too
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),  # SocketTimeoutError: sock_read
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),  # closed before a response, as h11 says
    (aiohttp.ClientConnectionResetError, httpx.WriteError),  # the connection went while the request was sent
    (aiohttp.ClientOSError, httpx.ReadError),  # a reset or a broken pipe on an open connection
    (aiohttp.ClientPayloadError, httpx.ReadError),  # a body cut short, reset or malformed
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),  # the proxy answered CONNECT with an error
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # a response aiohttp could not parse
    (HttpProcessingError, httpx.RemoteProtocolError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (asyncio.TimeoutError, httpx.ReadTimeout),  # the deadline (aiohttp's own timeouts are matched above)
    (aiohttp.ClientError, httpx.TransportError),
)
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def native_error(error: BaseException, *, writing: bool = False) -> httpx.TransportError | None:
    """The httpx exception for an aiohttp failure (raise it ``from error``), or ``None`` for anything else.

    ``writing``: the request's body was being written (a deadline that struck then cut a write).
    """
    if isinstance(error.__cause__, WriteStalled):  # aiohttp wraps what its body writer raised
        return httpx.WriteTimeout(str(error.__cause__))
    for cls, native in _NATIVE:
        if isinstance(error, cls):
            if cls is asyncio.TimeoutError:
                return (httpx.WriteTimeout if writing else native)(DEADLINE_MESSAGE)
            # Some aiohttp messages carry the whole URL: keep the words, drop its query string and userinfo.
            return native(_URL.sub(lambda match: redact_url(match.group(0)), str(error)))
    return None


def _intercepted() -> bool:
    # respx patches httpcore's AsyncConnectionPool, pytest-httpx httpx's AsyncHTTPTransport: aiohttp uses neither.
    return not (
        httpcore.AsyncConnectionPool.handle_async_request.__module__.startswith(f"{httpcore.__name__}.")
        and httpx.AsyncHTTPTransport.handle_async_request.__module__.startswith(f"{httpx.__name__}.")
    )


def _loop_time(deadline: float) -> float:
    # An attempt's real deadline is in time.monotonic(); the loop may keep its own clock.
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


class ResponseStream(httpx.AsyncByteStream):
    """An aiohttp response's body for httpx, with aiohttp's errors as httpx's.

    Read inside an attempt (the transport reads a non-streamed body itself), each read ends by the call's deadline.
    """

    def __init__(self, response: aiohttp.ClientResponse, pool: Pool) -> None:
        self._response = response
        self._pool: Pool | None = pool

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        attempt = ATTEMPT.get()
        deadline = attempt.real_deadline if attempt is not None else None
        while True:
            try:
                if deadline is None:
                    chunk = await content.readany()
                else:
                    async with timeout_at(_loop_time(deadline)):
                        chunk = await content.readany()
            except Exception as error:
                native = native_error(error)
                if native is None:
                    raise
                raise native from error
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        # The connection goes back to aiohttp's pool when the body was read to its end, is closed otherwise; then
        # the slot goes to the next call.
        self._response.release()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.release()


class ManagedAiohttpTransport(AiohttpTransport):
    """httpx-aiohttp's transport with a session built from a service's settings (see the module's docstring).

    The session is made on first use, on the running loop: the client it serves belongs to that loop.
    """

    def __init__(self, config: ServiceConfig, proxy: str | None) -> None:
        options = transport_options(config, proxy)
        super().__init__(
            verify=options["verify"], limits=options["limits"], proxy=httpx.Proxy(proxy) if proxy else None
        )
        self.session: aiohttp.ClientSession | None = None
        self.pool = Pool(config.pool.max_connections)
        self._config = config
        self._proxy_url = proxy
        self._proxy_headers = _proxy_headers(self.proxy)
        # Constant for the transport's life (``self._proxy_url`` won't do: httpx.Proxy strips credentials from
        # ``.url``); aiohttp copies proxy_headers into a multidict of its own, so every request can share the dict.
        self._proxy_address = str(self.proxy.url) if self.proxy is not None else None
        self._proxy_header_dict = dict(self._proxy_headers)
        self._mocked: httpx.AsyncHTTPTransport | None = None

    def _session(self) -> aiohttp.ClientSession:
        pool = self._config.pool
        connector = _Connector(
            max_age=pool.max_connection_age,
            limit=pool.max_connections,
            limit_per_host=pool.max_connections,
            keepalive_timeout=pool.keepalive_expiry,
            ssl=self.ssl_context,
            timeout_ceil_threshold=math.inf,  # aiohttp rounds longer timeouts up to the next second
            **self._resolver(),
        )
        session = aiohttp.ClientSession(
            connector=connector,
            request_class=_Request,
            cookie_jar=aiohttp.DummyCookieJar(),  # one client serves every caller: never keep one's cookies
            trust_env=False,  # environment proxies are mounted by the client; ~/.netrc is not httpx's either
            auto_decompress=False,  # httpx decodes the body, exactly once
        )
        if hasattr(session, "_retry_connection"):  # private: aiohttp's silent resend on a dropped connection
            session._retry_connection = False
        return session

    def _resolver(self) -> dict[str, Any]:
        # With egress (and no proxy, which resolves names itself): every address checked, connected to as checked.
        if self._config.egress is None or self._proxy_url is not None:
            return {}
        from .._egress import Egress

        return {"resolver": _EgressResolver(Egress(self._config.egress))}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if _intercepted():
            return await self._intercepting().handle_async_request(request)
        if self.session is None:
            self.session = self._session()
        timeouts = request.extensions.get("timeout", {})
        connect, pool = timeouts.get("connect"), timeouts.get("pool")
        attempt = ATTEMPT.get()
        deadline = attempt.real_deadline if attempt is not None else None
        if deadline is not None and deadline <= time.monotonic():
            raise httpx.ConnectTimeout(DEADLINE_MESSAGE)  # as httpcore's connect, cut to no time at all
        headers = request.headers.multi_items()
        data = _body(request)
        if isinstance(data, httpx.AsyncByteStream):  # aiohttp chunks a streamed body itself, and says so
            headers = [(name, value) for name, value in headers if name.lower() != "transfer-encoding"]
        proxy: dict[str, Any] = {}
        if self.proxy is not None:
            proxy["proxy"] = self._proxy_address
            # As httpcore: the proxy's headers go on the CONNECT of a tunnel, or on a forwarded request itself.
            if request.url.scheme == "https":
                proxy["proxy_headers"] = self._proxy_header_dict
            else:
                headers = headers + self._proxy_headers
        await self.pool.acquire(pool)
        upload = _Upload(timeouts.get("write"))
        token = _UPLOAD.set(upload)
        try:
            call = self.session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),  # as httpx encoded it: aiohttp would requote it
                headers=headers,
                data=data,
                allow_redirects=False,  # httpx follows them, each hop a call of its own
                compress=False,
                timeout=aiohttp.ClientTimeout(
                    connect=connect,  # name resolution included, as httpcore's
                    sock_connect=connect,
                    sock_read=timeouts.get("read"),
                    ceil_threshold=math.inf,
                ),
                server_hostname=request.extensions.get("sni_hostname"),
                **proxy,
            )
            # A body the caller does not stream is read here, under the same deadline as the request: one timeout
            # for the whole attempt rather than one per chunk (each costs an event-loop timer).
            preload = bool(request.extensions.get(PRELOAD))
            response = None
            body = b""
            if deadline is None:
                response = await call
                if preload:
                    body = await response.read()
            else:
                async with timeout_at(_loop_time(deadline)):
                    response = await call
                    if preload:
                        body = await response.read()
        except BaseException as error:
            if response is not None:
                response.close()  # the body broke off: the connection cannot be reused
            self.pool.release()
            native = native_error(error, writing=upload.writing) if isinstance(error, Exception) else None
            if native is None:
                raise
            raise native from error
        finally:
            _UPLOAD.reset(token)
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        if preload:
            response.release()  # read to its end: the connection goes back to aiohttp's pool
            self.pool.release()
            stream: httpx.AsyncByteStream = httpx.ByteStream(body)
        else:
            stream = ResponseStream(response, self.pool)
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=stream,
            request=request,
            extensions=extensions,
        )

    def _intercepting(self) -> httpx.AsyncHTTPTransport:
        if self._mocked is None:
            self._mocked = httpx.AsyncHTTPTransport(**transport_options(self._config, self._proxy_url))
            bound_to_deadlines(self._mocked, max_age=self._config.pool.max_connection_age)
        return self._mocked

    def pool_numbers(self) -> tuple[int, int, int]:
        """``(in_use, idle, waiting)``: connections from aiohttp's connector (private attributes, read defensively),
        calls waiting for one from the queue in front of it."""
        in_use = idle = 0
        waiting = self.pool.waiting
        connector = self.session.connector if self.session is not None else None
        if connector is not None:
            in_use = len(getattr(connector, "_acquired", ()))  # includes connections being made
            idle = sum(len(conns) for conns in list(getattr(connector, "_conns", {}).values()))
        if self._mocked is not None:
            busy, free, queued = httpcore_pool_numbers(self._mocked)
            in_use, idle, waiting = in_use + busy, idle + free, waiting + queued
        return in_use, idle, waiting

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self._mocked is not None:
            await self._mocked.aclose()


# aiohttp warns about bytes bodies larger than this (a ResourceWarning: written at once) and asks for a file object.
_LARGE_BODY = 2**20


def _body(request: httpx.Request) -> bytes | io.BytesIO | httpx.AsyncByteStream | None:
    try:
        content = request.content
    except httpx.RequestNotRead:
        return request.stream  # type: ignore[return-value]
    if len(content) > _LARGE_BODY:
        return io.BytesIO(content)  # written in chunks; a retry gets a new one
    return content or None


def _proxy_headers(proxy: httpx.Proxy | None) -> list[tuple[str, str]]:
    # Credentials as a header, as httpx sends them (aiohttp deprecates its BasicAuth).
    if proxy is None:
        return []
    headers = proxy.headers.multi_items()
    if proxy.raw_auth is not None:
        credentials = base64.b64encode(b":".join(proxy.raw_auth)).decode("ascii")
        headers.append(("Proxy-Authorization", f"Basic {credentials}"))
    return headers


def aiohttp_transport(config: ServiceConfig, proxy: str | None) -> ManagedAiohttpTransport:
    """The inner transport of an async client of a ``transport: "aiohttp"`` service, on the running loop.

    Raises:
        ConfigError: under trio (aiohttp runs on asyncio only), or with a SOCKS proxy (aiohttp has no SOCKS).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigError(
            "aiohttp runs on asyncio only, and no asyncio loop is running here (trio?): use transport 'httpcore' "
            "(httpx's own, which runs on both) for a service called from trio",
            service=config.name,
            key="transport",
            code="unsupported",
        ) from None
    if proxy is not None and proxy.lower().startswith("socks"):
        raise ConfigError(
            f"aiohttp has no SOCKS support ({redact_url(proxy)}): use transport 'httpcore' for this service"
            + ("" if config.proxy else ", or trust_env: false to ignore the environment's proxy"),
            service=config.name,
            key="proxy" if config.proxy else "trust_env",
            code="unsupported",
        )
    return ManagedAiohttpTransport(config, proxy)
