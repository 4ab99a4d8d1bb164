"""The total deadline inside an httpx attempt: httpcore's network streams, every read and write cut to it.

Per-phase timeouts bound each read, not the sum of reads (see ``_deadline.py``). The transport's httpcore pool reads
and writes through ``DeadlineBackend``, whose streams cut every read's and write's timeout to what is left of the
deadline (``_attempt.ATTEMPT`` holds it for the attempt), so the read that would cross it times out at the deadline,
with httpcore's own ``ReadTimeout``, which httpx maps to its own. The first write of an attempt is also where its
send gates are asked (``_attempt.py``). Written against httpcore, and loaded again for httpcore2 (``_library.py``).
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

import anyio

from ._attempt import ATTEMPT, apass_gates, cut, pass_gates
from ._library import library_of

if TYPE_CHECKING:
    from .._config import EgressConfig
    from .._egress import Egress

LIBRARY = library_of(__name__)
if TYPE_CHECKING:  # type-checked against httpcore: httpcore2 has the same API
    import httpcore
else:
    httpcore = LIBRARY.httpcore()

__all__ = [
    "AsyncDeadlineBackend",
    "AsyncDeadlineStream",
    "AsyncEgressBackend",
    "DeadlineBackend",
    "DeadlineStream",
    "EgressBackend",
    "bound_to_deadlines",
    "guard_connections",
]


def _aged(info: str, expires: float | None) -> bool:
    # httpcore asks an idle HTTP/1.1 connection whether its socket is readable before reusing it, and closes it when
    # it is (it takes that as the server's disconnect): answering yes past the connection's age retires it the next
    # time it is returned to or taken from the pool, inside httpcore's own pool logic and locks.
    return info == "is_readable" and expires is not None and time.monotonic() >= expires


def _expires(max_age: float | None) -> float | None:
    # When a connection opened now is to be retired (see ``_aged``): never without a ``max_age``.
    return None if max_age is None else time.monotonic() + max_age


class DeadlineStream(httpcore.NetworkStream):
    """An httpcore stream whose every read and write ends by the attempt's deadline, and that reads as closed by the
    server once older than ``pool.max_connection_age`` (``expires``)."""

    def __init__(self, stream: httpcore.NetworkStream, expires: float | None = None) -> None:
        self.stream = stream
        self.expires = expires

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, cut(timeout, httpcore.ReadTimeout, ATTEMPT.get()))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        attempt = ATTEMPT.get()
        if attempt is not None and attempt.call is not None:
            pass_gates(attempt)  # the attempt's first write: the connection is in hand, nothing is sent yet
        self.stream.write(buffer, cut(timeout, httpcore.WriteTimeout, attempt))

    def close(self) -> None:
        self.stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        tls = self.stream.start_tls(ssl_context, server_hostname, cut(timeout, httpcore.ConnectTimeout, ATTEMPT.get()))
        return DeadlineStream(tls, self.expires)

    def get_extra_info(self, info: str) -> Any:
        return True if _aged(info, self.expires) else self.stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """Wraps httpcore's network backend: every stream it opens is a ``DeadlineStream``."""

    def __init__(self, backend: httpcore.NetworkBackend, max_age: float | None = None) -> None:
        self.backend = backend
        self.max_age = max_age

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> DeadlineStream:
        timeout = cut(timeout, httpcore.ConnectTimeout, ATTEMPT.get())
        stream = self.backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return DeadlineStream(stream, _expires(self.max_age))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> DeadlineStream:
        timeout = cut(timeout, httpcore.ConnectTimeout, ATTEMPT.get())
        return DeadlineStream(self.backend.connect_unix_socket(path, timeout, socket_options), _expires(self.max_age))

    def sleep(self, seconds: float) -> None:
        self.backend.sleep(seconds)


class AsyncDeadlineStream(httpcore.AsyncNetworkStream):
    """``DeadlineStream`` for asyncio and trio (httpcore picks the library through anyio)."""

    def __init__(self, stream: httpcore.AsyncNetworkStream, expires: float | None = None) -> None:
        self.stream = stream
        self.expires = expires

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self.stream.read(max_bytes, cut(timeout, httpcore.ReadTimeout, ATTEMPT.get()))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        attempt = ATTEMPT.get()
        if attempt is not None and attempt.call is not None:
            await apass_gates(attempt)
        await self.stream.write(buffer, cut(timeout, httpcore.WriteTimeout, attempt))

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        tls = await self.stream.start_tls(
            ssl_context, server_hostname, cut(timeout, httpcore.ConnectTimeout, ATTEMPT.get())
        )
        return AsyncDeadlineStream(tls, self.expires)

    def get_extra_info(self, info: str) -> Any:
        return True if _aged(info, self.expires) else self.stream.get_extra_info(info)


class AsyncDeadlineBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, backend: httpcore.AsyncNetworkBackend, max_age: float | None = None) -> None:
        self.backend = backend
        self.max_age = max_age

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> AsyncDeadlineStream:
        timeout = cut(timeout, httpcore.ConnectTimeout, ATTEMPT.get())
        stream = await self.backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return AsyncDeadlineStream(stream, _expires(self.max_age))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> AsyncDeadlineStream:
        timeout = cut(timeout, httpcore.ConnectTimeout, ATTEMPT.get())
        stream = await self.backend.connect_unix_socket(path, timeout, socket_options)
        return AsyncDeadlineStream(stream, _expires(self.max_age))

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


def bound_to_deadlines(transport: Any, *, max_age: float | None = None) -> None:
    """Make an httpx transport's pool read and write through the deadline backend, and retire its HTTP/1.1
    connections older than ``max_age`` seconds.

    httpx builds its httpcore pool without a way to pass a network backend; every connection is made later with
    the pool's ``_network_backend`` (httpcore 1.x), so replacing it before the first request is enough. An HTTP/2
    connection is not retired by age: httpcore asks it nothing before reusing it.
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if pool is None or backend is None or isinstance(backend, DeadlineBackend | AsyncDeadlineBackend):
        return  # not an httpcore pool (a test's transport), or bound already
    is_async = isinstance(backend, httpcore.AsyncNetworkBackend)
    pool._network_backend = AsyncDeadlineBackend(backend, max_age) if is_async else DeadlineBackend(backend, max_age)


class EgressBackend(httpcore.NetworkBackend):
    """Wraps httpcore's network backend for a service with ``egress``: a host is resolved once, every address is
    checked (``_egress.py``) and the connection is made to a checked address. httpcore starts TLS with the origin's
    host name (or the ``sni_hostname`` extension), so the certificate is still checked against the name."""

    def __init__(self, backend: httpcore.NetworkBackend, egress: Egress) -> None:
        self.backend = backend
        self.egress = egress

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            answers = self.egress.resolve(host, port)
        except socket.gaierror as error:
            raise httpcore.ConnectError(str(error)) from error
        failure: Exception | None = None
        for answer in answers:
            try:
                return self.backend.connect_tcp(answer[4][0], port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        return self.backend.connect_unix_socket(path, timeout, socket_options)

    def sleep(self, seconds: float) -> None:
        self.backend.sleep(seconds)


class AsyncEgressBackend(httpcore.AsyncNetworkBackend):
    """``EgressBackend`` for asyncio and trio: the name is resolved in a worker thread (anyio's ``getaddrinfo``)."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, egress: Egress) -> None:
        self.backend = backend
        self.egress = egress

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                answers = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError as error:
            raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from error
        except socket.gaierror as error:
            raise httpcore.ConnectError(str(error)) from error
        checked = self.egress.addresses(host, answers)
        failure: Exception | None = None
        for answer in checked:
            try:
                return await self.backend.connect_tcp(answer[4][0], port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        return await self.backend.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


def guard_connections(transport: Any, config: EgressConfig) -> None:
    """Make an httpx transport's pool connect through the egress backend (before ``bound_to_deadlines``, which
    wraps it in turn). A transport that is not an httpcore pool (aiohttp's) checks addresses itself."""
    from .._egress import Egress

    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if pool is None or backend is None:
        return
    egress = Egress(config)
    is_async = isinstance(backend, httpcore.AsyncNetworkBackend)
    pool._network_backend = AsyncEgressBackend(backend, egress) if is_async else EgressBackend(backend, egress)
