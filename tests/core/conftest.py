"""Core fixtures: a uniform way to call either sync backend, and listeners that never answer.

A test over client *kinds* names them ``"requests"``, ``"httpx"`` and ``"httpx2"`` (the sync clients), ``"async"``
and ``"async2"`` (httpx's and httpx2's async clients): every behaviour test of httpx runs on httpx2 too.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest
import requests

from outbound import Registry
from tests.proxy import ForwardingProxy

Send = Callable[..., Any]

# The libraries with httpx's API: httpx, and httpx2, its maintained fork.
HTTPX_LIBRARIES = ("httpx", "httpx2")
SYNC_KINDS = ("requests", *HTTPX_LIBRARIES)
ASYNC_KINDS = ("async", "async2")
HTTPX_KINDS = (*HTTPX_LIBRARIES, *ASYNC_KINDS)


def client_of(kind: str) -> str:
    """The ``client`` setting of a kind: ``"requests"``, ``"httpx"`` or ``"httpx2"``."""
    if kind == "requests":
        return "requests"
    return "httpx2" if kind.endswith("2") else "httpx"


def native(kind: str) -> ModuleType:
    """The library whose exception classes a kind's errors also are: ``requests``, ``httpx`` or ``httpx2``."""
    return importlib.import_module(client_of(kind))


def is_async(kind: str) -> bool:
    return kind in ASYNC_KINDS


@pytest.fixture(params=SYNC_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Each sync-backend test runs through a requests session, an httpx client and an httpx2 client."""
    return str(request.param)


@pytest.fixture(params=HTTPX_LIBRARIES)
def library(request: pytest.FixtureRequest) -> str:
    """Each test of an httpx client runs on httpx and on httpx2: set ``"client": library`` in the service and take
    the library's classes from ``native(library)``."""
    return str(request.param)


# The async client's transports (the service key `transport`): httpx's own, and aiohttp's through httpx-aiohttp.
ASYNC_TRANSPORTS = ("httpcore", "aiohttp")


@pytest.fixture(params=ASYNC_TRANSPORTS)
def async_transport(request: pytest.FixtureRequest) -> str:
    """Each async-client test runs once on each transport: set ``"transport": async_transport`` in the service."""
    return str(request.param)


def with_async_transports(kinds: list[str] | tuple[str, ...]) -> list[Any]:
    """``(kind, transport)`` parameters for a test over client kinds: the async kinds once on each transport, the
    sync kinds once (their clients have no transport to choose)."""
    return [
        pytest.param(kind, transport, id=f"{kind}-{transport}" if is_async(kind) else kind)
        for kind in kinds
        for transport in (ASYNC_TRANSPORTS if is_async(kind) else ASYNC_TRANSPORTS[:1])
    ]


@pytest.fixture
def send(kind: str) -> Send:
    """``send(registry, name, method, url, **kwargs)`` through the service's sync client; returns the response."""

    def call(registry: Registry, name: str, method: str, url: str, **kwargs: Any) -> requests.Response | httpx.Response:
        # An httpx2 service's client is an httpx2.Client: the same call.
        if kind == "requests":
            return registry.session(name).request(method, url, **kwargs)
        return registry.client(name).request(method, url, **kwargs)

    return call


@pytest.fixture(scope="session")
def blackhole() -> Iterator[dict[str, str]]:
    """URLs on 127.0.0.1 that never answer.

    ``connect_timeout``: a listener whose accept queue is full, so the kernel drops new SYNs (a connect timeout).
    ``silent``: a listener that never accepts or reads; connections complete in the kernel, then writes stall.
    """
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(full.getsockname())
        fillers.append(filler)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    yield {
        "connect_timeout": f"http://127.0.0.1:{full.getsockname()[1]}/",
        "silent": f"http://127.0.0.1:{silent.getsockname()[1]}/",
    }
    for sock in (full, silent, *fillers):
        sock.close()


@pytest.fixture
def proxy() -> Iterator[ForwardingProxy]:
    """A forwarding HTTP proxy on 127.0.0.1 that counts the requests it carries."""
    with ForwardingProxy() as server:
        yield server
