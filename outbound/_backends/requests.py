"""requests backend: ``ServiceSession`` (a real ``requests.Session``) and ``OutboundAdapter``, which runs the policy.

The adapter calls ``HTTPAdapter.send`` for each attempt, so ``responses`` (which patches that method) still
intercepts every call. requests offers no pool timeout: with ``pool_block=True`` it waits forever for a free
connection (FACTS.md), so the adapter's pools take the attempt's pool timeout from a context variable and urllib3
raises ``EmptyPoolError`` when it expires.
"""

from __future__ import annotations

import functools
import http.cookiejar
import re
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

import requests
import requests.adapters
from urllib3 import HTTPConnectionPool, PoolManager
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
)
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeoutError
from urllib3.util import Timeout as Urllib3Timeout
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from .._breaker import OPEN
from .._config import ServiceConfig
from .._errors import RegistryClosedError
from .._policy import AttemptTimeouts, Kind, Outcome, Policy, response_outcome
from .._retry import RETRY_AFTER_STATUSES

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection

# A URL with a scheme (RFC 3986 section 3.1); "login?next=https://x" is still relative.
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

# The pool wait for the attempt running in this thread/context; read by the pools below.
_pool_wait: ContextVar[float | None] = ContextVar("outbound_pool_wait", default=None)


class _PoolTimeoutMixin:
    def _get_conn(self, timeout: float | None = None) -> BaseHTTPConnection:
        get_conn = super()._get_conn  # type: ignore[misc]  # the pool class comes second in the subclasses' MRO
        return cast("BaseHTTPConnection", get_conn(timeout if timeout is not None else _pool_wait.get()))


@functools.cache
def _with_pool_timeout(pool_class: type[HTTPConnectionPool]) -> type[HTTPConnectionPool]:
    return type(pool_class.__name__, (_PoolTimeoutMixin, pool_class), {})


def _bound_pool_waits(manager: PoolManager) -> None:
    # Extend the manager's own pool classes rather than replace them: a SOCKS proxy manager's pools take options
    # that plain HTTP pools do not.
    manager.pool_classes_by_scheme = {
        scheme: _with_pool_timeout(pool_class) for scheme, pool_class in manager.pool_classes_by_scheme.items()
    }


def _replayable(body: object) -> bool:
    # A generator or file body is consumed by the first attempt; only retry bodies we can send again.
    return body is None or isinstance(body, bytes | str)


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


class OutboundAdapter(requests.adapters.HTTPAdapter):
    """An ``HTTPAdapter`` whose ``send`` runs the service's policy around each attempt."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._config = policy.config
        # One pool per host; a service normally talks to one host, redirects may add a few. Blocking pools bound
        # the connections; the wait is bounded by timeout.pool (see _PoolTimeoutMixin).
        self._pool_sizes = (4, policy.config.pool.max_connections)
        super().__init__(
            pool_connections=self._pool_sizes[0], pool_maxsize=self._pool_sizes[1], max_retries=0, pool_block=True
        )

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        _bound_pool_waits(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        manager = cast(PoolManager, super().proxy_manager_for(proxy, **proxy_kwargs))
        _bound_pool_waits(manager)
        return manager

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        call = self._policy.start(
            request.method or "GET",
            request.url or "",
            replayable=_replayable(request.body),
            circuit_open_class=requests.ConnectionError,
            pool_timeout_class=requests.ConnectionError,
            error_attributes={"request": request, "response": None},
        )
        connect, read = _split_timeout(timeout, self._config)
        while True:
            call.admit()
            try:
                limits = call.attempt_timeouts(connect, read, None, self._config.timeout.pool)
                response, outcome = self._attempt(request, stream, limits, verify, cert, proxies)
                decision = call.record(outcome)
                if not decision.retry:
                    if response is None:
                        raise call.error_for(outcome) from outcome.error
                    return response
                if response is not None:
                    response.close()  # give the connection back before waiting
                time.sleep(decision.delay)
            except BaseException:
                call.abandon()  # interrupted (or our own bug): free the trial slot, end the call; no-op if it ended
                raise

    def _attempt(
        self,
        request: requests.PreparedRequest,
        stream: bool,
        limits: AttemptTimeouts,
        verify: bool | str,
        cert: Any,
        proxies: Mapping[str, str] | None,
    ) -> tuple[requests.Response | None, Outcome]:
        """One attempt: the response (``None`` if it failed) and its classified outcome."""
        token = _pool_wait.set(limits.pool)
        response: requests.Response | None = None
        try:
            # A urllib3 Timeout, because either limit may be None (disabled in the settings).
            attempt_timeout = cast(Any, Urllib3Timeout(connect=limits.connect, read=limits.read))
            response = super().send(
                request, stream=stream, timeout=attempt_timeout, verify=verify, cert=cert, proxies=proxies
            )
            if not stream:
                # Read the body inside the policy, so a failure mid-body is classified, counted and retried.
                response.content  # noqa: B018 (the property read is the point)
            status = response.status_code
            # Only where the policy honours it: most responses need no header lookup.
            retry_after = response.headers.get("Retry-After") if status in RETRY_AFTER_STATUSES else None
            return response, response_outcome(status, retry_after)
        except Exception as error:  # noqa: BLE001 (every failed attempt is classified; unknown ones are OTHER)
            if response is not None:  # the headers came, the body broke: this attempt has no usable response
                response.close()
            return None, Outcome(_classify(error), error=error)
        finally:
            _pool_wait.reset(token)

    def pool_numbers(self) -> tuple[int, int]:
        """``(in_use, idle)`` connections across this adapter's pools (FACTS.md: urllib3 introspection)."""
        in_use = idle = 0
        for manager in self._managers():
            for key in manager.pools.keys():  # noqa: SIM118 (iterating the container itself raises)
                pool = manager.pools.get(key)
                queue = getattr(pool, "pool", None)
                if queue is None:
                    continue
                in_use += queue.maxsize - queue.qsize()
                idle += sum(conn is not None for conn in list(queue.queue))
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


class _NoStoredCookies(http.cookiejar.DefaultCookiePolicy):
    """A cookie policy that never stores cookies from responses (shared by the httpx backend)."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


NO_STORED_COOKIES = _NoStoredCookies()


class ServiceSession(requests.Session):
    """A ``requests.Session`` bound to one service: relative URLs join ``base_url``; calls run the policy.

    Use it exactly like any session. Per-request ``timeout=`` overrides the service's connect/read timeouts (still
    cut to ``timeout.total``); ``timeout=None`` means the service's settings.
    """

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
        if config.proxy is not None:
            self.proxies = {"http": config.proxy, "https": config.proxy}
        self.adapter = OutboundAdapter(policy)
        # Every scheme goes through the managed adapter, including absolute URLs and redirects.
        self.mount("http://", self.adapter)
        self.mount("https://", self.adapter)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if self._closed:
            raise RegistryClosedError(f"the outbound registry was closed; session {self.service_name!r} is unusable")
        # Fail an open breaker before requests prepares anything: the gate is then a few microseconds. (Checked
        # first so the common path builds nothing.)
        if self._policy.breaker.state == OPEN:
            self._policy.reject_if_open(requests.ConnectionError, {"request": None, "response": None})
        return super().request(method, self.join(url), *args, **kwargs)

    def join(self, url: str | bytes) -> str:
        """Resolve ``url`` against ``base_url`` as httpx does: relative paths (with or without a leading ``/``)
        go below the base path; absolute URLs pass through."""
        text = url.decode() if isinstance(url, bytes) else url
        if _ABSOLUTE.match(text):
            return text
        return self.base_url + text.lstrip("/")

    def close(self) -> None:
        self._closed = True
        super().close()
