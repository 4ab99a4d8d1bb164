"""The fault-injection transport layers: below the policy, above the network (see ``outbound/_chaos.py``).

- requests: the urllib3 pool the adapter sends an attempt through is handed out wrapped (``ChaosPool``): its
  ``urlopen`` raises what urllib3 raises for a refused connection, a read timeout or a reset, or answers a status
  of its own, so requests and the policy see exactly what the network would have given them.
- httpx, httpx2 and aiohttp: the managed transport's inner transport is wrapped (``chaos_transport``): it raises
  the library's ``ConnectError`` / ``ReadTimeout`` / ``ReadError`` or answers a status.

A ``latency`` or ``read_timeout`` never sleeps past the attempt's read timeout or its deadline: a latency longer
than either ends as the read timeout a slow upstream would give. A ``trickle`` lets the real answer's headers
through and spreads its body over ``seconds`` in small pieces. Nothing of an injected connect error, read timeout,
reset or status reaches the upstream; every one is marked: the errors' text says ``injected by outbound chaos``, a
status answer carries the ``x-outbound-injected`` header.
"""

from __future__ import annotations

import functools
import io
import math
import sys
import time
from collections.abc import AsyncIterator, Iterator
from http import HTTPStatus
from typing import Any

import anyio

from .._chaos import INJECTED_HEADER, INJECTED_TEXT, Chaos
from .._config import FaultConfig
from ._attempt import ATTEMPT

_PIECE = 1024  # a trickle's piece of body


def _stop_after(read_timeout: float | None) -> float:
    """The longest an injected wait may last: the read timeout, cut to the attempt's deadline."""
    limit = math.inf if read_timeout is None else read_timeout
    attempt = ATTEMPT.get()
    if attempt is not None and attempt.real_deadline is not None:
        limit = min(limit, max(0.0, attempt.real_deadline - time.monotonic()))
    return limit


def _waits(fault: FaultConfig, read_timeout: float | None) -> tuple[float, bool]:
    """``(seconds to wait, then time out)`` for a latency or read-timeout fault."""
    limit = _stop_after(read_timeout)
    if fault.kind == "read_timeout":
        return min(fault.seconds, limit), True
    return (limit, True) if fault.seconds > limit else (fault.seconds, False)


def _status_headers(fault: FaultConfig) -> list[tuple[str, str]]:
    headers = [(INJECTED_HEADER, fault.kind), ("content-length", "0")]
    if fault.retry_after is not None:
        headers.append(("retry-after", f"{fault.retry_after:g}"))
    return headers


def _pieces(body: bytes) -> list[bytes]:
    return [body[i : i + _PIECE] for i in range(0, len(body), _PIECE)] or [b""]


def _message(what: str, fault: FaultConfig) -> str:
    return f"{what} ({INJECTED_TEXT}: {fault.kind})"


# -- requests ---------------------------------------------------------------------------------------------------


class ChaosPool:
    """A urllib3 connection pool whose ``urlopen`` meets the service's faults; everything else is the pool's."""

    __slots__ = ("_chaos", "_pool")

    def __init__(self, pool: Any, chaos: Chaos) -> None:
        object.__setattr__(self, "_pool", pool)
        object.__setattr__(self, "_chaos", chaos)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._pool, name, value)  # requests' cert_verify sets the pool's TLS attributes

    def urlopen(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        fault = self._chaos.draw()
        if fault is None:
            return self._pool.urlopen(method, url, *args, **kwargs)
        from urllib3 import HTTPResponse
        from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError

        pool = self._pool
        if fault.kind == "connect_error":
            reason = NewConnectionError(pool, _message("Failed to establish a new connection: refused", fault))
            raise MaxRetryError(pool, url, reason)
        if fault.kind == "reset":
            raise ProtocolError(
                "Connection aborted.", ConnectionResetError(104, _message("Connection reset by peer", fault))
            )
        if fault.kind == "status":
            return HTTPResponse(
                body=io.BytesIO(b""),
                headers=dict(_status_headers(fault)),
                status=fault.status,
                reason=_reason(fault.status),
                preload_content=False,
                decode_content=kwargs.get("decode_content", True),
                request_method=method,
                request_url=url,
            )
        timeout = kwargs.get("timeout")
        read = getattr(timeout, "_read", timeout)
        read_timeout = read if isinstance(read, int | float) and not isinstance(read, bool) else None
        if fault.kind in ("latency", "read_timeout"):
            wait, times_out = _waits(fault, read_timeout)
            time.sleep(wait)
            if times_out:
                raise ReadTimeoutError(pool, url, _message(f"Read timed out. (read timeout={read_timeout})", fault))
            return pool.urlopen(method, url, *args, **kwargs)
        real = pool.urlopen(method, url, *args, **kwargs)  # trickle: the real headers, the body slowly
        try:
            body = real.read(decode_content=False)
        finally:
            real.release_conn()
        headers = {k: v for k, v in real.headers.items() if k.lower() != "transfer-encoding"}
        headers["content-length"] = str(len(body))
        return HTTPResponse(
            body=_SlowBody(body, fault.seconds, _stop_after(None)),
            headers=headers,
            status=real.status,
            reason=real.reason,
            preload_content=False,
            decode_content=kwargs.get("decode_content", True),
            request_method=method,
            request_url=url,
        )


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class _SlowBody(io.BytesIO):
    """A body read in pieces, ``seconds`` spread over them (a read past ``limit`` seconds raises a read timeout)."""

    def __init__(self, body: bytes, seconds: float, limit: float) -> None:
        super().__init__(body)
        self._gap = seconds / max(1, math.ceil(len(body) / _PIECE))
        self._ends = time.monotonic() + limit

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= len(self.getbuffer()):
            return b""
        if time.monotonic() + self._gap > self._ends:
            time.sleep(max(0.0, self._ends - time.monotonic()))
            raise TimeoutError(f"The read operation timed out ({INJECTED_TEXT}: trickle)")
        time.sleep(self._gap)
        return super().read(_PIECE if size is None or size < 0 else min(size, _PIECE))

    def read1(self, size: int | None = -1) -> bytes:
        return self.read(size)


# -- httpx, httpx2, aiohttp ---------------------------------------------------------------------------------------


def chaos_transport(httpx: Any, inner: Any, chaos: Chaos) -> Any:
    """``inner`` (an httpx or httpx2 transport, sync or async) wrapped in the service's fault layer."""
    sync, asynchronous = _layers(httpx)
    return asynchronous(inner, chaos) if isinstance(inner, httpx.AsyncBaseTransport) else sync(inner, chaos)


@functools.cache
def _layers(httpx: Any) -> tuple[type, type]:
    def read_timeout_of(request: Any) -> float | None:
        read = request.extensions.get("timeout", {}).get("read")
        return read if isinstance(read, int | float) else None

    def failure(fault: FaultConfig, request: Any) -> Exception:
        error: Exception
        if fault.kind == "connect_error":
            error = httpx.ConnectError(_message("[Errno 111] Connection refused", fault), request=request)
        elif fault.kind == "reset":
            error = httpx.ReadError(_message("[Errno 104] Connection reset by peer", fault), request=request)
        else:
            error = httpx.ReadTimeout(_message("timed out", fault), request=request)
        return error

    def status(fault: FaultConfig, request: Any) -> Any:
        return httpx.Response(fault.status, headers=_status_headers(fault), stream=httpx.ByteStream(b""))

    class _Slow(httpx.SyncByteStream):  # type: ignore[misc]
        def __init__(self, body: bytes, seconds: float, limit: float, request: Any) -> None:
            self._pieces = _pieces(body)
            self._gap = seconds / len(self._pieces)
            self._ends = time.monotonic() + limit
            self._request = request

        def __iter__(self) -> Iterator[bytes]:
            for piece in self._pieces:
                if time.monotonic() + self._gap > self._ends:
                    time.sleep(max(0.0, self._ends - time.monotonic()))
                    raise httpx.ReadTimeout(_message("timed out", _TRICKLE), request=self._request)
                time.sleep(self._gap)
                yield piece

    class _AsyncSlow(httpx.AsyncByteStream):  # type: ignore[misc]
        def __init__(self, body: bytes, seconds: float, limit: float, request: Any) -> None:
            self._pieces = _pieces(body)
            self._gap = seconds / len(self._pieces)
            self._ends = time.monotonic() + limit
            self._request = request

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for piece in self._pieces:
                if time.monotonic() + self._gap > self._ends:
                    await anyio.sleep(max(0.0, self._ends - time.monotonic()))
                    raise httpx.ReadTimeout(_message("timed out", _TRICKLE), request=self._request)
                await anyio.sleep(self._gap)
                yield piece

    def trickled(response: Any, body: bytes, seconds: float, request: Any, stream: type) -> Any:
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "transfer-encoding"]
        return httpx.Response(
            response.status_code,
            headers=headers,
            stream=stream(body, seconds, _stop_after(None), request),
            extensions=response.extensions,
        )

    class ChaosTransport(httpx.BaseTransport):  # type: ignore[misc]
        """An httpx transport that meets the service's faults before its inner transport."""

        def __init__(self, inner: Any, chaos: Chaos) -> None:
            self.inner = inner
            self.chaos = chaos

        def __getattr__(self, name: str) -> Any:
            return getattr(self.__dict__["inner"], name)  # the pool's numbers, its sockets after a fork

        def handle_request(self, request: Any) -> Any:
            fault = self.chaos.draw()
            if fault is None:
                return self.inner.handle_request(request)
            if fault.kind == "status":
                return status(fault, request)
            if fault.kind in ("latency", "read_timeout"):
                wait, times_out = _waits(fault, read_timeout_of(request))
                time.sleep(wait)
                if times_out:
                    raise failure(fault, request)
                return self.inner.handle_request(request)
            if fault.kind == "trickle":
                response = self.inner.handle_request(request)
                try:
                    body = b"".join(response.stream)
                finally:
                    response.stream.close()
                return trickled(response, body, fault.seconds, request, _Slow)
            raise failure(fault, request)

        def close(self) -> None:
            self.inner.close()

    class AsyncChaosTransport(httpx.AsyncBaseTransport):  # type: ignore[misc]
        """An async httpx transport (httpcore's or aiohttp's) that meets the service's faults first."""

        def __init__(self, inner: Any, chaos: Chaos) -> None:
            self.inner = inner
            self.chaos = chaos

        def __getattr__(self, name: str) -> Any:
            return getattr(self.__dict__["inner"], name)

        async def handle_async_request(self, request: Any) -> Any:
            fault = self.chaos.draw()
            if fault is None:
                return await self.inner.handle_async_request(request)
            if fault.kind == "status":
                return status(fault, request)
            if fault.kind in ("latency", "read_timeout"):
                wait, times_out = _waits(fault, read_timeout_of(request))
                await anyio.sleep(wait)
                if times_out:
                    raise failure(fault, request)
                return await self.inner.handle_async_request(request)
            if fault.kind == "trickle":
                response = await self.inner.handle_async_request(request)
                try:
                    body = b"".join([chunk async for chunk in response.stream])
                finally:
                    await response.stream.aclose()
                return trickled(response, body, fault.seconds, request, _AsyncSlow)
            raise failure(fault, request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    return ChaosTransport, AsyncChaosTransport


_TRICKLE = FaultConfig(kind="trickle")


def install(service: Any) -> Any:
    """Give a built service a fault layer it was not built with (the test fixture, on a process that does not allow
    chaos in its settings); returns the function that takes it out again. The requests backend asks for the layer
    on every attempt; the httpx clients made so far get it wrapped around their inner transports, later ones get it
    when they are built."""
    from .._chaos import Chaos
    from .._config import ChaosConfig

    policy = service.policy
    if policy.chaos is not None:
        return lambda: None
    policy.chaos = chaos = Chaos(service.name, ChaosConfig())
    wrapped: list[Any] = []
    for client in [*service._clients, *list(service._async_clients.values())]:
        for transport in (getattr(client, "outbound_transport", None), *getattr(client, "_managed_mounts", ())):
            inner = getattr(transport, "inner", None)
            if inner is None:
                continue
            httpx = sys.modules[type(client).__module__].httpx  # the backend module's library: httpx or httpx2
            transport.inner = chaos_transport(httpx, inner, chaos)
            wrapped.append(transport)

    def uninstall() -> None:
        policy.chaos = None
        for transport in wrapped:
            transport.inner = transport.inner.inner

    return uninstall
