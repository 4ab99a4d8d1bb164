"""Core fixtures: a uniform way to call either sync backend, and listeners that never answer."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests

from outbound import Registry
from tests.proxy import ForwardingProxy

Send = Callable[..., Any]


@pytest.fixture(params=["requests", "httpx"])
def kind(request: pytest.FixtureRequest) -> str:
    """Each sync-backend test runs once through a requests session and once through an httpx client."""
    return str(request.param)


# The async client's transports (the service key `transport`): httpx's own, and aiohttp's through httpx-aiohttp.
ASYNC_TRANSPORTS = ("httpcore", "aiohttp")


@pytest.fixture(params=ASYNC_TRANSPORTS)
def async_transport(request: pytest.FixtureRequest) -> str:
    """Each async-client test runs once on each transport: set ``"transport": async_transport`` in the service."""
    return str(request.param)


def with_async_transports(kinds: list[str], async_kind: str = "async") -> list[Any]:
    """``(kind, transport)`` parameters for a test over client kinds: the async kind once on each transport, the
    sync kinds once (their clients have no transport to choose)."""
    return [
        pytest.param(kind, transport, id=f"{kind}-{transport}" if kind == async_kind else kind)
        for kind in kinds
        for transport in (ASYNC_TRANSPORTS if kind == async_kind else ASYNC_TRANSPORTS[:1])
    ]


@pytest.fixture
def send(kind: str) -> Send:
    """``send(registry, name, method, url, **kwargs)`` through the service's sync client; returns the response."""

    def call(registry: Registry, name: str, method: str, url: str, **kwargs: Any) -> requests.Response | httpx.Response:
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
