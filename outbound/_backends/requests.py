"""requests backend: ``ServiceSession`` (a real ``requests.Session``) and ``OutboundAdapter``, which runs the policy.

The adapter calls ``HTTPAdapter.send`` for each attempt, so ``responses`` (which patches that method) still
intercepts every call. requests offers no pool timeout: with ``pool_block=True`` it never passes one to urllib3 and
a call waits forever for a free connection, so the adapter's pools take the attempt's pool timeout from a context
variable and urllib3 raises ``EmptyPoolError`` when it expires. The same context variable hands the connection an
attempt takes to the deadline watchdog (``_deadline.py``).
"""

from __future__ import annotations

import functools
import http.cookiejar
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import requests
import requests.adapters
import requests.auth
from urllib3 import HTTPConnectionPool, PoolManager
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
)
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeoutError
from urllib3.util import Timeout as Urllib3Timeout
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from .._breaker import CLOSED
from .._call import Call
from .._config import CREDENTIAL_HEADERS, ServiceConfig
from .._deadline import format_budget
from .._driver import drive
from .._egress import body_too_large
from .._errors import OutboundError, RegistryClosedError
from .._logging import redact_text
from .._outcome import Kind, Outcome, Rejection, response_outcome
from .._policy import Policy
from . import _errors
from ._attempt import ATTEMPT, SendRefused, begin, gated_after, pass_gates, refused_outcome
from ._deadline import DEADLINE_MESSAGE, WATCHDOG
from ._environment import Environment
from ._keys import stamp_key
from ._origins import credentials_follow, url_origin

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection

    from .._egress import Egress

# A URL with a scheme (RFC 3986 section 3.1); "login?next=https://x" is still relative.
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


# The caller's `retries=` for the call running in this thread/context, with the adapter it is for (set around the
# call by ServiceSession.request: requests passes nothing but its own arguments down to the adapter). A call to
# another service made meanwhile (from an auth flow or a hook) is not that call: it keeps its own settings.
_retries: ContextVar[tuple[object, bool | int] | None] = ContextVar("outbound_retries", default=None)


class _ManagedPoolMixin:
    """A urllib3 pool's waits bounded by ``timeout.pool``, and its connections renewed past ``max_connection_age``."""

    max_connection_age: float | None = None  # set on each service's pool classes (see _managed_pool_class)

    def _get_conn(self, timeout: float | None = None) -> BaseHTTPConnection:
        get_conn = super()._get_conn  # type: ignore[misc]  # the pool class comes second in the subclasses' MRO
        attempt = ATTEMPT.get()
        conn: BaseHTTPConnection = get_conn(timeout if timeout is not None or attempt is None else attempt.pool_wait)
        if self.max_connection_age is not None:
            _renew_if_old(conn, self.max_connection_age)  # checked when taken, not also when returned: once a call
        if attempt is not None:
            if attempt.watch is not None:
                attempt.watch.conn = conn  # the socket the watchdog shuts down if the deadline strikes
            if attempt.call is not None:
                try:
                    pass_gates(attempt)  # the connection is in hand and nothing is written yet
                except BaseException:
                    # urlopen never saw it: it puts its slot back in the pool (as None), and a keep-alive socket
                    # must not wait for the garbage collector.
                    conn.close()
                    raise
        return conn


def _renew_if_old(conn: Any, max_age: float) -> None:
    # urllib3 keeps a connection object and reconnects it when its socket is gone: closing an old one's socket makes
    # its next request open a new connection (to whatever the name resolves to now). The age runs from the checkout
    # that found it without a socket, just before it connected.
    now = time.monotonic()
    if getattr(conn, "sock", None) is None:
        conn._outbound_born = now
    elif now - conn.__dict__.setdefault("_outbound_born", now) >= max_age:
        conn.close()
        conn._outbound_born = now


@functools.cache
def _managed_pool_class(pool_class: type[HTTPConnectionPool], max_age: float | None) -> type[HTTPConnectionPool]:
    if issubclass(pool_class, _ManagedPoolMixin):
        return pool_class  # a manager whose pools are ours already (a cached proxy manager)
    return type(pool_class.__name__, (_ManagedPoolMixin, pool_class), {"max_connection_age": max_age})


def _manage_pools(manager: PoolManager, max_age: float | None) -> None:
    # Extend the manager's own pool classes rather than replace them: a SOCKS proxy manager's pools take options
    # that plain HTTP pools do not.
    manager.pool_classes_by_scheme = {
        scheme: _managed_pool_class(pool_class, max_age)
        for scheme, pool_class in manager.pool_classes_by_scheme.items()
    }


class _EgressConnectionMixin:
    """A urllib3 connection that resolves its host once, checks every address against the service's egress rules
    and connects to a checked address (``_egress.py``); ``host`` stays the TLS server name and the ``Host``."""

    egress: Egress  # set on each service's connection classes (see _guard_pools)
    _dns_host: str

    def _new_conn(self) -> Any:
        new_conn = super()._new_conn  # type: ignore[misc]  # the connection class comes second in the MRO
        host = self._dns_host
        try:
            answers = self.egress.resolve(host, self.port)  # type: ignore[attr-defined]
        except socket.gaierror as error:
            raise NameResolutionError(host, self, error) from error  # type: ignore[arg-type]
        failure: Exception | None = None
        for answer in answers:
            self._dns_host = answer[4][0]  # the checked address: urllib3 resolves nothing more
            try:
                return new_conn()
            except (NewConnectionError, ConnectTimeoutError) as error:
                failure = error
            finally:
                self._dns_host = host
        assert failure is not None
        raise failure


def _guarded_pool_class(pool_class: type[HTTPConnectionPool], egress: Egress) -> type[HTTPConnectionPool]:
    connection_class = pool_class.ConnectionCls
    guarded = type(connection_class.__name__, (_EgressConnectionMixin, connection_class), {"egress": egress})
    return type(pool_class.__name__, (pool_class,), {"ConnectionCls": guarded})


def _guard_pools(manager: PoolManager, egress: Egress) -> None:
    # The direct pools only: through a proxy, the proxy resolves the names (docs/egress.md). The classes are made
    # per manager (not cached module-wide): they hold the service's rules, and go with its adapter.
    manager.pool_classes_by_scheme = {
        scheme: _guarded_pool_class(pool_class, egress) for scheme, pool_class in manager.pool_classes_by_scheme.items()
    }


def _retries_for(adapter: object) -> bool | int | None:
    override = _retries.get()
    return override[1] if override is not None and override[0] is adapter else None


def _replayable(body: object) -> bool:
    # A generator or file body is consumed by the first attempt; only retry bodies we can send again.
    return body is None or isinstance(body, bytes | str)


# What `responses` says when a call matches no registered mock: the mock's verdict, not the upstream's.
_RESPONSES_REFUSAL = "Connection refused by Responses"


def _classify(error: Exception) -> Kind:
    if isinstance(error, EmptyPoolError):
        return Kind.POOL_TIMEOUT
    if isinstance(error, requests.ConnectTimeout):
        return Kind.CONNECT_TIMEOUT
    if isinstance(error, requests.ReadTimeout):
        return Kind.READ_TIMEOUT
    if isinstance(error, requests.exceptions.SSLError | requests.exceptions.ProxyError):
        return Kind.OTHER_ERROR
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return Kind.READ_ERROR
    if isinstance(error, requests.ConnectionError):
        reason = error.args[0] if error.args else None
        if isinstance(reason, str) and reason.startswith(_RESPONSES_REFUSAL):
            return Kind.MOCK_REFUSED
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        if isinstance(reason, Urllib3ReadTimeoutError):
            return Kind.READ_TIMEOUT  # a read timeout while the body streams in
        if isinstance(reason, NewConnectionError | ConnectTimeoutError):
            return Kind.CONNECT_ERROR
        if isinstance(reason, ProtocolError | OSError):
            return Kind.READ_ERROR
        return Kind.CONNECT_ERROR
    return Kind.OTHER_ERROR


_TIMEOUTS = frozenset({Kind.CONNECT_TIMEOUT, Kind.READ_TIMEOUT, Kind.POOL_TIMEOUT})
# A URL or path and what follows its "?" or "#", in free text.
_QUERY_IN_TEXT = re.compile(r"((?:[A-Za-z][A-Za-z0-9+.-]*://|/)[^\s?#'\"<>]*)[?#][^\s'\"<>)]*")


def _redacted_args(error: Exception | None) -> tuple[object, ...] | None:
    """``error.args`` in their native types, without a query string or credentials: requests puts urllib3's
    ``MaxRetryError`` first, which holds the path and query the request went to, and ``repr(error)`` — what a log or
    an error tracker shows — prints it. The message outbound writes is redacted already; these must be too."""
    if error is None:
        return None
    return tuple(_redacted(arg) for arg in error.args)


def _redacted(arg: object) -> object:
    if isinstance(arg, MaxRetryError):
        return MaxRetryError(arg.pool, _QUERY_IN_TEXT.sub(r"\1", arg.url or ""), arg.reason)
    if isinstance(arg, str):
        return redact_text(_QUERY_IN_TEXT.sub(r"\1", arg))
    return arg


def _native(outcome: Outcome) -> type[Exception] | None:
    """The requests class an error is raised as, where it is not the class of the exception that ended the attempt.

    urllib3's EmptyPoolError is not a requests exception: a pool timeout is requests' ConnectionError. A deadline
    that cut the connection surfaces as whatever the broken read raised: it is requests' ReadTimeout.
    """
    if outcome.kind is Kind.POOL_TIMEOUT:
        return requests.ConnectionError
    if outcome.deadline and outcome.kind is Kind.READ_TIMEOUT:
        return requests.ReadTimeout
    return None


def _split_timeout(timeout: Any, config: ServiceConfig) -> tuple[float | None, float | None]:
    # Validated here, before the call is admitted, so a bad argument never holds a breaker slot.
    if timeout is None:  # what Session.request passes when the caller gave none: the service's settings
        return config.timeout.connect, config.timeout.read
    if isinstance(timeout, Urllib3Timeout):
        # Its properties raise or return a placeholder until a timer starts: read what the caller set.
        connect = config.timeout.connect if timeout._connect is _DEFAULT_TIMEOUT else timeout._connect
        read = config.timeout.read if timeout._read is _DEFAULT_TIMEOUT else timeout._read
        total = timeout.total if isinstance(timeout.total, int | float) else None
        if total is not None:
            connect = total if connect is None else min(connect, total)
            read = total if read is None else min(read, total)
        return _seconds(connect, timeout), _seconds(read, timeout)
    if isinstance(timeout, tuple) and len(timeout) == 2:
        return _seconds(timeout[0], timeout), _seconds(timeout[1], timeout)
    return _seconds(timeout, timeout), _seconds(timeout, timeout)


def _seconds(value: object, original: object) -> float | None:
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    raise ValueError(f"timeout must be a number, a (connect, read) tuple or a urllib3 Timeout, got {original!r}")


class SendArgs(NamedTuple):
    """What ``HTTPAdapter.send`` is given besides the request, as the caller gave it. The managed adapters and their
    subclasses (the SDK layer's, the cache's) work on it in ``managed_send``, so requests' signature is written once,
    in ``OutboundAdapter.send``."""

    stream: bool
    timeout: Any
    verify: bool | str
    cert: Any
    proxies: Mapping[str, str] | None


class _Send(NamedTuple):
    """One ``send()``'s arguments, carried through the attempts of its call."""

    request: requests.PreparedRequest
    stream: bool
    connect: float | None
    read: float | None
    timeout: Urllib3Timeout  # of connect and read, for every attempt the deadline does not cut shorter
    verify: bool | str
    cert: Any
    proxies: Mapping[str, str] | None
    deadline_header: str | None


# The exception class each refusal also is, for code that catches requests' own.
_NATIVE_REJECTIONS: Mapping[str, type[Exception]] = {
    "circuit_open": requests.ConnectionError,
    "bulkhead_full": requests.ConnectionError,
    "rate_limited": requests.ConnectionError,
    "deadline_exceeded": requests.Timeout,
    "egress_denied": requests.ConnectionError,
    "concurrency_limited": requests.ConnectionError,
    "throttled": requests.ConnectionError,
}


class ResponseTooLarge(requests.exceptions.RequestException):
    """The response body is over the service's ``egress.max_response_bytes`` (raised as an ``outbound.CallError``)."""

    outbound_detail = True  # its message goes into the CallError's


class OutboundAdapter(requests.adapters.HTTPAdapter):
    """An ``HTTPAdapter`` whose ``send`` runs the service's policy around each attempt."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._config = policy.config
        # One pool per host; a service normally talks to one host, redirects may add a few. Blocking pools bound
        # the connections; the wait is bounded by timeout.pool (see _ManagedPoolMixin).
        self._pool_sizes = (max(4, len(policy.config.endpoints) + 2), policy.config.pool.max_connections)
        # The service's own timeouts, validated once rather than on every call (urllib3 clones it per request).
        timeouts = policy.config.timeout
        self._configured_timeout = Urllib3Timeout(connect=timeouts.connect, read=timeouts.read)
        context = policy.config.ssl_context
        self._ssl_context: ssl.SSLContext | None = context() if callable(context) else context
        self.egress: Egress | None = None
        self._max_body: int | None = None
        if policy.config.egress is not None:
            from .._egress import Egress

            self.egress = Egress(policy.config.egress)
            self._max_body = policy.config.egress.max_response_bytes
        super().__init__(
            pool_connections=self._pool_sizes[0], pool_maxsize=self._pool_sizes[1], max_retries=0, pool_block=True
        )

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        _manage_pools(self.poolmanager, self._config.pool.max_connection_age)
        if self.egress is not None:
            _guard_pools(self.poolmanager, self.egress)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        manager = cast(PoolManager, super().proxy_manager_for(proxy, **proxy_kwargs))
        _manage_pools(manager, self._config.pool.max_connection_age)  # wraps once: the manager is cached per proxy
        return manager

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> Any:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        endpoints = self._policy.endpoints
        name = endpoints.tls_name(host_params.get("host")) if endpoints is not None else None
        if name is not None and host_params.get("scheme") == "https":
            # A discovered address: the certificate is checked against the DNS name, which is also the SNI.
            named: dict[str, Any] = {"server_hostname": name, "assert_hostname": name}
            if self._ssl_context is not None:
                return host_params, {"ssl_context": self._ssl_context, **named}
            return host_params, {**pool_kwargs, **named}
        if self._ssl_context is not None:
            # The service's context decides verification and client certificates. requests' own keys would make
            # urllib3 load the default CA bundle into it (its documented way to use a custom context).
            return host_params, {"ssl_context": self._ssl_context}
        return host_params, pool_kwargs

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        return self.managed_send(request, SendArgs(stream, timeout, verify, cert, proxies))

    def managed_send(self, request: requests.PreparedRequest, args: SendArgs) -> requests.Response:
        """``send`` with its arguments in one record: what a subclass overrides."""
        stream, timeout, verify, cert, proxies = args
        connect, read = _split_timeout(timeout, self._config)
        method = request.method or "GET"
        call = self._policy.start(
            method,
            request.url or "",
            replayable=_replayable(request.body),
            asked=(connect, read) if timeout is not None else (),
            retries=_retries_for(self),
        )
        if method in self._policy.keyed_methods:  # one key for every attempt of this call
            stamp_key(request, request.headers, self._policy.key_header)
        configured = self._configured_timeout
        if (connect, read) == (configured.connect_timeout, configured.read_timeout):
            timeouts = configured
        else:
            timeouts = Urllib3Timeout(connect=connect, read=read)
        send = _Send(request, stream, connect, read, timeouts, verify, cert, proxies, self._config.deadline_header)
        return drive(call, self, send)

    def get_connection_with_tls_context(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        if self._policy.closed:
            # An attempt admitted just before close() must not open a pool (and a socket) after it.
            raise RegistryClosedError(f"the outbound registry was closed; service {self._config.name!r} is unusable")
        pool = super().get_connection_with_tls_context(request, *args, **kwargs)
        if self._policy.chaos is not None:  # the fault layer, below the policy (``_chaos.py``)
            from ._chaos import ChaosPool

            return ChaosPool(pool, self._policy.chaos)
        return pool

    # -- the Exchange the driver runs -----------------------------------------------------------------------------

    def attempt(self, call: Call, send: _Send) -> tuple[requests.Response | None, Outcome]:
        """One attempt: the response (``None`` if it failed) and its classified outcome."""
        deadline = call.deadline
        timeout: Any = send.timeout  # a urllib3 Timeout, because either limit may be None (disabled in the settings)
        pool = self._config.timeout.pool
        watch = None
        if deadline is not None:
            connect, read, _, pool, _ = deadline.cut(send.connect, send.read, None, pool)
            if connect != send.connect or read != send.read:
                timeout = Urllib3Timeout(connect=connect, read=read)  # cut to what is left: a new one
            watch = WATCHDOG.watch(deadline.real_at)
        token = begin(call, pool_wait=pool, watch=watch)
        response: requests.Response | None = None
        endpoints = self._policy.endpoints
        if endpoints is not None:  # several endpoints: this attempt goes to the one it was admitted to
            endpoint = call.permits[self._policy.endpoint_index]
            send.request.url = endpoints.url_for(endpoint, send.request.url or "")
            if endpoint.name is not None:  # an address of a DNS name: the name is the Host (and the TLS name)
                send.request.headers["Host"] = endpoints.host_header
        if send.deadline_header is not None and deadline is not None:
            # The time left now, for this attempt.
            send.request.headers[send.deadline_header] = format_budget(send.deadline_header, deadline.left())
        try:
            response = super().send(
                send.request,
                stream=send.stream,
                timeout=timeout,
                verify=send.verify,
                cert=send.cert,
                proxies=send.proxies,
            )
            if not send.stream:
                # Inside the policy: a failure mid-body is classified, counted, retried.
                self._read_body(response, self._max_body)
            elif self._max_body is not None:
                _refuse_announced(response, self._max_body)
            if watch is not None and watch.fired:
                # The watchdog cut the connection: what was read may be incomplete.
                response.close()
                return None, self._deadline_outcome(send.request)
            refused = gated_after(ATTEMPT.get())  # type: ignore[arg-type]  # a mock answered (responses)
            if refused is not None:
                response.close()
                return None, refused
            status = response.status_code
            # Only where the policy honours it: most responses need no header lookup.
            retry_after = response.headers.get("Retry-After") if status in self._policy.retry_after_statuses else None
            return response, response_outcome(status, retry_after)
        except Exception as error:  # noqa: BLE001 (every failed attempt is classified; unknown ones are OTHER)
            if response is not None:  # the headers came, the body broke: this attempt has no usable response
                response.close()
            if isinstance(error, SendRefused):
                return None, refused_outcome(error)
            if self._policy.closed:
                return None, Outcome(Kind.CLOSED, error=error)  # our own shutdown, not the upstream's failure
            if watch is not None and watch.fired:
                return None, self._deadline_outcome(send.request)
            kind = _classify(error)
            passed = kind in _TIMEOUTS and deadline is not None and deadline.passed()
            return None, Outcome(kind, error=error, deadline=passed)
        finally:
            ATTEMPT.reset(token)
            if watch is not None:
                WATCHDOG.forget(watch)

    @staticmethod
    def _read_body(response: requests.Response, limit: int | None) -> None:
        try:
            if limit is None:
                response.content  # noqa: B018 (the property read is the point)
            else:
                _read_at_most(response, limit)
        except requests.exceptions.ContentDecodingError:
            if not response.is_redirect:
                raise
            # requests never decodes a redirect's body (it follows the Location); neither does the attempt. urllib3
            # has already dropped the connection the broken body came on.
            response._content = b""
            response._content_consumed = True  # type: ignore[attr-defined]

    @staticmethod
    def _deadline_outcome(request: requests.PreparedRequest) -> Outcome:
        error = requests.ReadTimeout(DEADLINE_MESSAGE, request=request)
        return Outcome(Kind.READ_TIMEOUT, error=error, deadline=True)

    def discard(self, response: requests.Response) -> None:
        response.close()  # give the connection back before waiting

    def deliver(self, call: Call, send: _Send, response: requests.Response) -> requests.Response:
        if send.stream:
            # The body is read by the caller, later: its errors keep outbound's identity too.
            response.__class__ = _ManagedResponse
            response._outbound_call = call  # type: ignore[attr-defined]
            response._outbound_limit = self._max_body  # type: ignore[attr-defined]
        return response

    def rejected(self, call: Call, send: _Send, rejection: Rejection) -> Exception:
        attributes: dict[str, object] = {"request": send.request, "response": None}
        return _errors.rejected(call, self._config.name, rejection, _NATIVE_REJECTIONS, attributes)

    def failed(self, call: Call, send: _Send, outcome: Outcome) -> Exception:
        attributes: dict[str, object] = {"request": send.request, "response": None}
        return _errors.failed(call, outcome, _native(outcome), attributes, _redacted_args(outcome.error))

    def pool_numbers(self) -> tuple[int, int]:
        """``(in_use, idle)`` connections across this adapter's pools.

        urllib3 pools keep a ``LifoQueue`` pre-filled with ``None`` placeholders: idle connections are the non-None
        entries, and connections in use are the queue's size minus its length. ``manager.pools.keys()`` is a locked
        snapshot; iterating the container itself raises ``NotImplementedError``.
        """
        in_use = idle = 0
        for manager in self._managers():
            for key in manager.pools.keys():  # noqa: SIM118 (iterating the container itself raises)
                pool = manager.pools.get(key)
                queue = getattr(pool, "pool", None)
                if queue is None:
                    continue
                in_use += queue.maxsize - queue.qsize()
                waiting = list(queue.queue)  # a copy: the deque may change under us
                idle += len(waiting) - waiting.count(None)
        return in_use, idle

    def close(self) -> None:
        """Close every pooled socket (``PoolManager.clear()`` alone leaves them open under urllib3 2.x)."""
        for manager in self._managers():
            for key in manager.pools.keys():  # noqa: SIM118 (iterating the container itself raises)
                pool = manager.pools.get(key)
                if pool is not None:
                    pool.close()
        super().close()

    def drop_after_fork(self) -> None:
        """In a forked child: close this process's copies of the inherited sockets and start new pools.

        Closing a descriptor in the child sends nothing on the wire (the parent still holds it); nothing here
        calls ``shutdown()``, which would break the parent's connections. The pools' locks may have been held
        by a parent thread at fork time, so the queues are read without them and the managers are replaced.
        """
        for manager in self._managers():
            for pool in list(manager.pools._container.values()):
                queue = getattr(pool, "pool", None)
                for conn in list(queue.queue) if queue is not None else ():
                    if conn is not None:
                        conn.close()
        self.proxy_manager = {}
        self.init_poolmanager(*self._pool_sizes, block=True)

    def _managers(self) -> list[PoolManager]:
        return [self.poolmanager, *self.proxy_manager.values()]


def _refuse_announced(response: requests.Response, limit: int) -> None:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        response.close()
        raise ResponseTooLarge(body_too_large(limit), response=response)


def _read_at_most(response: requests.Response, limit: int) -> None:
    # The body, up to ``limit`` bytes: a larger one is refused as soon as it is known to be (a Content-Length that
    # says so, or the first chunk past the limit), and its connection closed rather than read to its end.
    _refuse_announced(response, limit)
    chunks: list[bytes] = []
    read = 0
    # Through iter_content, as response.content reads: requests' own errors for a body that breaks.
    for chunk in response.iter_content(65536):
        read += len(chunk)
        if read > limit:
            response.close()
            raise ResponseTooLarge(body_too_large(limit), response=response)
        chunks.append(chunk)
    response._content = b"".join(chunks)
    response._content_consumed = True  # type: ignore[attr-defined]


class _ManagedResponse(requests.Response):
    """A streamed response (``stream=True``) whose body errors are outbound's, as the httpx clients' are."""

    _outbound_call: Call
    _outbound_limit: int | None = None  # egress.max_response_bytes

    def iter_content(self, chunk_size: int | None = 1, decode_unicode: bool = False) -> Iterator[Any]:
        return self._managed(super().iter_content(chunk_size, decode_unicode))

    def _limited(self, chunks: Iterator[Any], limit: int) -> Iterator[Any]:
        read = 0
        for chunk in chunks:
            read += len(chunk)
            if read > limit:
                self.close()
                raise ResponseTooLarge(body_too_large(limit), response=self)
            yield chunk

    def _managed(self, chunks: Iterator[Any]) -> Iterator[Any]:
        try:
            if self._outbound_limit is None:
                yield from chunks
            else:
                yield from self._limited(chunks, self._outbound_limit)
        except requests.RequestException as error:
            outcome = Outcome(_classify(error), error=error)
            attributes: dict[str, object] = {"request": self.request, "response": self}
            raise _errors.failed(self._outbound_call, outcome, None, attributes, _redacted_args(error)) from error


class _NoCredentials(requests.auth.AuthBase):
    """The netrc file has nothing for this origin: a call's auth that adds nothing (and that requests, seeing an
    auth given, does not look on disk again for)."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


_NO_CREDENTIALS = _NoCredentials()


class _BaseURLAuth(requests.auth.HTTPBasicAuth):
    """Basic credentials from ``base_url``'s userinfo, sent only to the base URL's origin (an absolute URL to another
    host, called through the same session, must not carry them, as it would with a session-wide ``auth``)."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        super().__init__(username, password)
        self._origin = url_origin(base_url)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if url_origin(request.url) == self._origin:
            return cast(requests.PreparedRequest, super().__call__(request))  # type: ignore[no-untyped-call]
        return request


class _NoStoredCookies(http.cookiejar.DefaultCookiePolicy):
    """A cookie policy that never stores cookies from responses (shared by the httpx backend)."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


NO_STORED_COOKIES = _NoStoredCookies()


def _captures_http(prefix: str) -> bool:
    # requests picks the longest mounted prefix that a URL starts with (case-insensitively).
    lowered = prefix.lower()
    return any(scheme.startswith(lowered) or lowered.startswith(scheme) for scheme in ("http://", "https://"))


def _plain(kwargs: dict[str, Any]) -> bool:
    # What session.get(url) and session.head(url) pass and nothing else: such a call's prepared request is known.
    return kwargs.get("params") is None and kwargs.keys() <= {"params", "allow_redirects"}


class ServiceSession(requests.Session):
    """A ``requests.Session`` bound to one service: relative URLs join ``base_url``; calls run the policy.

    Use it exactly like any session. Per-request ``timeout=`` overrides the service's connect/read timeouts (still
    cut to ``timeout.total``); ``timeout=None`` means the service's settings.
    """

    adapter_class: type[OutboundAdapter] = OutboundAdapter  # the SDK layer's subclass for an `sdk` service

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        config = policy.config
        self.service_name = config.name
        self.base_url = config.base_url
        self._policy = policy
        self._closed = False
        self.headers.update(config.headers)
        # One session serves every request of the process: cookies from one caller's response must not go out
        # with another caller's request. Cookies set explicitly (or passed per call) are still sent.
        self.cookies.set_policy(NO_STORED_COOKIES)
        self.verify = config.verify
        self.cert = config.cert
        self.trust_env = config.trust_env
        if config.auth is not None:
            # From base_url's userinfo, which the settings parser took out of the URL: sent to that origin only.
            self.auth = _BaseURLAuth(config.base_url, *config.auth)
        self._proxy = config.proxy
        self._env: Environment | None = None
        if config.proxy is not None:
            self.proxies = {"http": config.proxy, "https": config.proxy}
        # Headers that never cross to another origin on a redirect (see rebuild_auth).
        self._credential_headers = CREDENTIAL_HEADERS | config.sensitive_headers
        # A fresh cache hit of a plain get(url), answered before requests prepares anything (_cache/_requests.py).
        self._cache_hit: Callable[[str | bytes, str | bytes], requests.Response | None] | None = None
        if policy.cache is None:
            self.adapter = self.adapter_class(policy)
        else:
            from .._cache._requests import cached_adapter_class, fast_hit  # only for a service with a cache/fallback

            self.adapter = cached_adapter_class(self.adapter_class)(policy, policy.cache)
            if policy.cache.storage is not None and config.egress is None:  # egress checks every Session.send
                self._cache_hit = fast_hit(self, policy.cache)
        self._egress = self.adapter.egress
        if config.egress is not None:
            self.max_redirects = config.egress.max_redirects
            # Every request and redirect hop goes through Session.send: checked there, only for this service.
            self.send = self._checked_send  # type: ignore[method-assign]
        # Every scheme goes through the managed adapter, including absolute URLs and redirects.
        self.mount("http://", self.adapter)
        self.mount("https://", self.adapter)

    def mount(self, prefix: str | bytes, adapter: requests.adapters.BaseAdapter) -> None:
        """Refuses any adapter but outbound's for ``http://`` and ``https://`` URLs: mounted on this shared session it
        would replace the service's policy (breaker, retries, timeouts, stats) for every caller in the process,
        silently. Configure retries with the service's ``retry`` settings instead (hvac's and others' documented
        ``HTTPAdapter(max_retries=...)`` recipe). Other schemes (a test's ``mock://``) mount as on any session."""
        if (
            getattr(self, "adapter", None) is not None
            and not isinstance(adapter, OutboundAdapter)
            and _captures_http(prefix.decode() if isinstance(prefix, bytes) else prefix)
        ):
            raise OutboundError(
                f"session {self.service_name!r} is shared by the whole process and managed by outbound: mounting "
                f"{type(adapter).__name__} on {prefix!r} would remove its breaker, retries and timeouts for every "
                f"caller. Set retries in OUTBOUND['services'][{self.service_name!r}]['retry'] instead, or use a "
                "requests.Session of your own"
            )
        super().mount(prefix, adapter)

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, retries: bool | int | None = None, **kwargs: Any
    ) -> requests.Response:
        """``Session.request``, plus ``retries=``: this call's own retry policy (``False`` or ``0``: none; ``True``:
        the service's ``retry.total``; a number: at most that many), for any method. ``session.post(...,
        retries=True)`` vouches that the POST is safe to repeat."""
        if self._closed:
            raise RegistryClosedError(f"the outbound registry was closed; session {self.service_name!r} is unusable")
        if self._cache_hit is not None and not args and retries is None and _plain(kwargs):
            answer = self._cache_hit(method, url)
            if answer is not None:
                return answer
        # Fail an open breaker before requests prepares anything: the gate is then a few microseconds. (The state
        # is read first so the common path builds nothing.)
        if self._policy.breaker.state != CLOSED and self._policy.cache is None:  # the cache may answer it
            rejection = self._policy.early_rejection(method if isinstance(method, str) else method.decode())
            if rejection is not None:
                attributes: dict[str, object] = {"request": None, "response": None}
                raise _errors.rejected(None, self.service_name, rejection, _NATIVE_REJECTIONS, attributes)
        url = self.join(url)
        if self.trust_env and len(args) < 6 and kwargs.get("auth") is None and self.auth is None:
            # requests would look for ~/.netrc on disk for this request: the answer for the origin is kept instead
            # (see _environment.py). Given as the call's auth, which requests then uses without looking.
            kwargs["auth"] = self._environment().netrc_auth(url) or _NO_CREDENTIALS
        if retries is None:
            return super().request(method, url, *args, **kwargs)
        token = _retries.set((self.adapter, retries))
        try:
            return super().request(method, url, *args, **kwargs)
        finally:
            _retries.reset(token)

    def join(self, url: str | bytes) -> str:
        """Resolve ``url`` against ``base_url`` as httpx does: relative paths (with or without a leading ``/``)
        go below the base path; absolute URLs pass through."""
        text = url.decode() if isinstance(url, bytes) else url
        if _ABSOLUTE.match(text):
            return text
        return self.base_url + text.lstrip("/")

    def _checked_send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """``Session.send`` for a service with ``egress``: the rules checked on every request and redirect hop."""
        assert self._egress is not None
        rejection = self._egress.check_url(request.url or "")
        if rejection is not None:
            self._policy.rejected(request.method or "GET", rejection)
            attributes: dict[str, object] = {"request": request, "response": None}
            raise _errors.rejected(None, self.service_name, rejection, _NATIVE_REJECTIONS, attributes)
        return super().send(request, **kwargs)

    def close(self) -> None:
        """Does nothing: the registry owns this session and closes it (``registry.close()``); a ``with`` block
        around a shared session must not break it for the rest of the process."""

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        # requests' merge, with the environment read once per origin (_environment.py) rather than per request.
        # requests lets environment proxies (HTTP_PROXY...) override the session's own (psf/requests#2018), and
        # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override the session's `verify` (psf/requests#3829). The service's
        # `proxy` and a `verify` it sets (false, or a CA bundle) are settings for this service and win, as they do
        # for httpx; per-call proxies= and verify= still win over both.
        asked = dict(proxies) if proxies else {}
        merged = {**self.proxies, **asked} if self.proxies else dict(asked)
        if self.trust_env:
            if "no_proxy" in asked:  # the call's own no_proxy: requests' lookup for this call alone
                found = requests.utils.get_environ_proxies(url, no_proxy=asked["no_proxy"])
            else:
                found = self._environment().proxies(url)
            for scheme, proxy in found.items():
                if scheme not in asked:
                    merged[scheme] = proxy
            ca_bundle = self._environment().ca_bundle
            if ca_bundle and (verify is True or (verify is None and self.verify is True)):
                verify = ca_bundle
        if self._proxy is not None:
            for scheme in ("http", "https"):
                if scheme not in asked:
                    merged[scheme] = self._proxy
        return {
            "proxies": {scheme: proxy for scheme, proxy in merged.items() if proxy is not None},
            "stream": self.stream if stream is None else stream,
            "verify": self.verify if verify is None else verify,
            "cert": self.cert if cert is None else cert,
        }

    def _environment(self) -> Environment:
        """The environment as requests would read it, kept per origin; read when the session first needs it."""
        if self._env is None:
            self._env = Environment()
        return self._env

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        """On a redirect to another origin (scheme, host or port), send no credentials the caller meant for this one
        (the same host upgraded from http to https on the default ports keeps them, as requests and httpx do).

        requests itself strips ``Authorization`` on a host change and re-derives ``Proxy-Authorization`` from the
        proxy's URL on every hop; cookies it would send anywhere when they carry no domain (those passed as
        ``cookies=`` or set on the session by hand). Here ``Cookie`` is rebuilt from the cookies the new origin set
        itself, and ``Authorization`` and every header in ``sensitive_headers`` are removed.
        """
        if not credentials_follow(url_origin(response.request.url), url_origin(prepared_request.url)):
            headers = prepared_request.headers
            for name in [name for name in headers if name.lower() in self._credential_headers]:
                del headers[name]
            jar = getattr(prepared_request, "_cookies", None)
            if jar is not None:
                own = requests.cookies.RequestsCookieJar()
                for cookie in jar:
                    if cookie.domain:  # set by a response, for its own domain: the jar's policy matches it
                        own.set_cookie(cookie)
                header = requests.cookies.get_cookie_header(own, prepared_request)  # type: ignore[no-untyped-call]
                if header:
                    headers["Cookie"] = header
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]  # netrc, if trust_env

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            f"the managed session of service {self.service_name!r} cannot be pickled: it belongs to this process's "
            "outbound registry; in another process, build a registry from the same settings and call "
            "registry.session(name) there"
        )

    # -- what the Service needs ---------------------------------------------------------------------------------

    def pool_numbers(self) -> tuple[int, int, int]:
        """``(in_use, idle, waiting)`` connections across the session's pools."""
        in_use, idle = self.adapter.pool_numbers()
        waiting = 0
        if in_use >= self._policy.config.pool.max_connections:
            # urllib3 does not count its waiters; calls in flight beyond the busy connections are waiting.
            waiting = max(0, self._policy.stats.in_flight - in_use)
        return in_use, idle, waiting

    def drop_after_fork(self) -> None:
        self.adapter.drop_after_fork()

    def shutdown(self) -> None:
        """Close every pooled socket for good (the registry's close); later calls raise ``RegistryClosedError``."""
        self._closed = True
        super().close()
