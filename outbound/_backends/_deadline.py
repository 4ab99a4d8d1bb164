"""Holding the call's total deadline *inside* an attempt, however the upstream trickles.

Per-phase timeouts bound each read, not the sum of reads: an upstream that sends one byte every 0.3 s never trips a
0.5 s read timeout and can hold a caller for as long as it likes. So, while an attempt runs:

- httpx (sync, asyncio and trio): the transport's httpcore pool reads and writes through ``DeadlineBackend``, whose
  streams cut every read's and write's timeout to what is left of the deadline (a context variable holds it for the
  attempt), so the read that would cross it times out at the deadline;
- requests: urllib3 sets one timeout on the socket per phase, so a ``Watchdog`` thread (one per process, asleep
  while no attempt runs) shuts down the socket of an attempt still running at its deadline; the blocked read then
  returns at once, the connection is discarded, and the attempt reports a deadline timeout.

Only the attempt's own reads are bounded this way: the body of a response streamed to the caller
(``stream=True``) is read after the attempt returned, under the per-read timeout alone.
"""

from __future__ import annotations

import _socket
import contextlib
import os
import socket
import threading
import time
from contextvars import ContextVar
from typing import Any

import httpcore

# Seconds (time.monotonic) when the running attempt's call must end; None outside an attempt.
ATTEMPT_DEADLINE: ContextVar[float | None] = ContextVar("outbound_attempt_deadline", default=None)
DEADLINE_MESSAGE = "the call's total deadline expired"


def _cut(timeout: float | None, error: type[Exception]) -> float | None:
    deadline = ATTEMPT_DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error(DEADLINE_MESSAGE)
    return left if timeout is None or timeout > left else timeout


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
        return self.stream.read(max_bytes, _cut(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, _cut(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        tls = self.stream.start_tls(ssl_context, server_hostname, _cut(timeout, httpcore.ConnectTimeout))
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
        timeout = _cut(timeout, httpcore.ConnectTimeout)
        stream = self.backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return DeadlineStream(stream, _expires(self.max_age))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> DeadlineStream:
        timeout = _cut(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self.backend.connect_unix_socket(path, timeout, socket_options), _expires(self.max_age))

    def sleep(self, seconds: float) -> None:
        self.backend.sleep(seconds)


class AsyncDeadlineStream(httpcore.AsyncNetworkStream):
    """``DeadlineStream`` for asyncio and trio (httpcore picks the library through anyio)."""

    def __init__(self, stream: httpcore.AsyncNetworkStream, expires: float | None = None) -> None:
        self.stream = stream
        self.expires = expires

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self.stream.read(max_bytes, _cut(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self.stream.write(buffer, _cut(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        tls = await self.stream.start_tls(ssl_context, server_hostname, _cut(timeout, httpcore.ConnectTimeout))
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
        timeout = _cut(timeout, httpcore.ConnectTimeout)
        stream = await self.backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return AsyncDeadlineStream(stream, _expires(self.max_age))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> AsyncDeadlineStream:
        timeout = _cut(timeout, httpcore.ConnectTimeout)
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


# -- requests: a watchdog ----------------------------------------------------------------------------------------


class Watch:
    """One attempt under the watchdog: its deadline, the connection it took, and whether the deadline struck."""

    __slots__ = ("conn", "deadline", "fired", "shut")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.conn: Any = None
        self.fired = False
        self.shut = False


class Watchdog:
    """One daemon thread per process that shuts down the socket of an attempt still running at its deadline.

    Watching costs a dict insert and removal (no lock: each is atomic). The thread wakes at the earliest deadline
    or every ``POLL`` seconds while attempts run, sleeps while none do, and exits after ``IDLE_EXIT`` seconds idle.
    """

    POLL = 0.02  # the most a deadline can be overrun by, beyond the read that notices the shutdown
    IDLE_EXIT = 5.0

    def __init__(self) -> None:
        self._watches: dict[int, Watch] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = True
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float) -> Watch:
        watch = Watch(deadline)
        self._watches[id(watch)] = watch
        if self._idle:
            self._kick()
        return watch

    def forget(self, watch: Watch) -> None:
        self._watches.pop(id(watch), None)

    def reset_after_fork(self) -> None:
        # The parent's thread does not exist here, and its attempts are not ours.
        self._watches = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = True
        self._thread = None

    def _kick(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._idle = False
                self._thread = threading.Thread(target=self._run, name="outbound-deadline-watchdog", daemon=True)
                self._thread.start()
            self._wake.set()

    def _run(self) -> None:
        while True:
            watches = list(self._watches.values())
            if not watches:
                self._idle = True
                if self._watches:  # one arrived while we decided to idle (see watch())
                    self._idle = False
                    continue
                woken = self._wake.wait(self.IDLE_EXIT)
                self._wake.clear()
                self._idle = False
                if not woken:
                    with self._lock:
                        if not self._watches:
                            self._idle = True
                            self._thread = None
                            return
                continue
            now = time.monotonic()
            earliest = min(watch.deadline for watch in watches)
            for watch in watches:
                if watch.deadline <= now:
                    self._strike(watch)
            self._wake.wait(min(self.POLL, max(0.0, earliest - now)) if earliest > now else self.POLL)
            self._wake.clear()

    @staticmethod
    def _strike(watch: Watch) -> None:
        watch.fired = True
        sock = getattr(watch.conn, "sock", None)
        if sock is None or watch.shut:
            return  # not connected yet (the connect timeout is cut to the deadline): look again next time
        watch.shut = True
        # The base class's shutdown, also for an SSLSocket (whose own shutdown drops its TLS object under the
        # reading thread): the blocked read returns at once; the connection is then discarded, not reused.
        with contextlib.suppress(OSError):
            _socket.socket.shutdown(sock, socket.SHUT_RDWR)


WATCHDOG = Watchdog()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WATCHDOG.reset_after_fork)
