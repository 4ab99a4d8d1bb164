"""Holding the call's total deadline *inside* an attempt, however the upstream trickles.

Per-phase timeouts bound each read, not the sum of reads: an upstream that sends one byte every 0.3 s never trips a
0.5 s read timeout and can hold a caller for as long as it likes. So, while an attempt runs:

- httpx (sync, asyncio and trio): the transport's httpcore pool reads and writes through ``DeadlineBackend``, whose
  streams cut every read's and write's timeout to what is left of the deadline (``_attempt.ATTEMPT`` holds it for
  the attempt), so the read that would cross it times out at the deadline; the first write of an attempt is also
  where its send gates are asked (``_attempt.py``);
- requests: urllib3 sets one timeout on the socket per phase, so a ``Watchdog`` thread (one per process, asleep
  while no attempt runs) shuts down the socket of an attempt still running at its deadline; the blocked read then
  returns at once, the connection is discarded, and the attempt reports a deadline timeout.

Only the attempt's own reads are bounded this way: the body of a response streamed to the caller
(``stream=True``) is read after the attempt returned, under the per-read timeout alone.
"""

from __future__ import annotations

import _socket
import contextlib
import math
import socket
import threading
import time
from typing import Any

import httpcore

from .._lifecycle import Daemon, on_fork
from ._attempt import ATTEMPT, DEADLINE_MESSAGE, apass_gates, cut, pass_gates

__all__ = ["DEADLINE_MESSAGE", "WATCHDOG", "Watch", "bound_to_deadlines"]


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

    Watching costs a dict insert and removal, and wakes nothing: the thread sleeps until the earliest deadline it
    knows of and is woken only by a watch that ends sooner than that. Calls of a service start one after another with
    the same total, so their deadlines come in order and a busy process wakes it about once per deadline's length,
    not once per call (waking a thread per call costs a GIL handover on every request). A deadline that struck before
    its connection was made is looked at again every ``POLL`` seconds; with nothing to watch the thread exits after
    ``IDLE_EXIT`` seconds.
    """

    POLL = 0.02  # the most a deadline can be overrun by, beyond the read that notices the shutdown
    IDLE_EXIT = 5.0

    def __init__(self) -> None:
        self._daemon = Daemon("outbound-deadline-watchdog", self._run)
        self.reset_after_fork()
        on_fork(self, child=Watchdog.reset_after_fork)

    def reset_after_fork(self) -> None:
        # The parent's thread does not exist here, and its attempts are not ours.
        self._watches: dict[int, Watch] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._next = math.inf  # the deadline the thread sleeps until; infinity while there is none
        self._added = 0  # watches made so far: the thread scans again when one came while it scanned

    def watch(self, deadline: float) -> Watch:
        watch = Watch(deadline)
        self._watches[id(watch)] = watch
        self._added += 1
        if deadline < self._next or not self._daemon.running:
            self._kick()
        return watch

    def forget(self, watch: Watch) -> None:
        self._watches.pop(id(watch), None)

    def _kick(self) -> None:
        with self._lock:
            self._next = -math.inf  # scanning: no other watch needs to wake it
            self._wake.set()
        self._daemon.ensure()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            added = self._added
            now = time.monotonic()
            following = math.inf
            for watch in list(self._watches.values()):
                if watch.deadline <= now:
                    self._strike(watch)
                    if not watch.shut:
                        following = min(following, now + self.POLL)  # not connected yet: look again soon
                else:
                    following = min(following, watch.deadline)
            with self._lock:
                if self._added != added:
                    continue  # a watch came while this scan ran: it may end sooner than what the scan found
                self._next = following
                self._wake.clear()
            if following != math.inf:
                self._wake.wait(max(0.0, following - time.monotonic()))
            elif not self._wake.wait(self.IDLE_EXIT) and self._daemon.exit_if(self._idle):
                return  # nothing to strike for a while: the next watch starts a new thread

    def _idle(self) -> bool:
        if self._wake.is_set() or self._watches:
            return False
        self._next = math.inf
        return True

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
