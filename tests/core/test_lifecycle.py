"""close(), per-loop async clients, and fork: no leaked sockets, no 'Event loop is closed', fresh child pools."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync

import outbound
from tests.conftest import RegistryFactory
from tests.upstream import Upstream


def both_kinds(
    upstream: Upstream, make_registry: RegistryFactory, transport: str = "httpcore", library: str = "httpx"
) -> outbound.Registry:
    return make_registry(
        sync={"base_url": upstream.url},
        http={"base_url": upstream.url, "client": library, "transport": transport},
    )


def test_close_leaves_no_live_connection_at_the_server(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    registry = both_kinds(upstream, make_registry, async_transport, library)
    registry.session("sync").get("ok")
    registry.client("http").get("ok")

    # An async client on a loop that keeps running in another thread, as under uvicorn.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def call() -> int:
        return (await registry.async_client("http").get("ok")).status_code

    assert asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=5) == 200
    assert upstream.live_connections == 3

    registry.close()
    assert upstream.wait_for(lambda: upstream.live_connections == 0)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


def test_calls_after_close_raise_a_clear_error(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    registry = both_kinds(upstream, make_registry, async_transport, library)
    session, client = registry.session("sync"), registry.client("http")
    with registry:
        pass
    assert registry.closed
    with pytest.raises(outbound.RegistryClosedError, match="closed"):
        session.get("ok")
    with pytest.raises(outbound.RegistryClosedError, match="closed"):
        client.get("ok")
    with pytest.raises(outbound.RegistryClosedError):
        registry.session("sync")
    with pytest.raises(outbound.RegistryClosedError):
        asyncio.run(_async_get(registry))
    assert upstream.hits == 0


async def _async_get(registry: outbound.Registry) -> int:
    return (await registry.async_client("http").get("ok")).status_code


def test_async_client_works_across_asyncio_run_calls_and_closes_with_each_loop(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    registry = both_kinds(upstream, make_registry, async_transport, library)
    seen: list[Any] = []

    async def call() -> int:
        client = registry.async_client("http")
        assert registry.async_client("http") is client  # one per loop
        seen.append(client)
        return (await client.get("ok")).status_code

    for _ in range(3):
        assert asyncio.run(call()) == 200
        # asyncio.run shut the loop's async generators down: its client was closed with it.
        assert seen[-1].is_closed
        assert upstream.wait_for(lambda: upstream.live_connections == 0)
    assert len({id(client) for client in seen}) == 3
    gc.collect()  # any unclosed transport would warn here, and warnings are errors


def test_async_client_under_asgiref_async_to_sync(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    registry = both_kinds(upstream, make_registry, async_transport, library)
    # Flask async views and Django's sync-to-async bridges run each call on a new event loop.
    for _ in range(3):
        assert async_to_sync(_async_get)(registry) == 200
    assert upstream.wait_for(lambda: upstream.live_connections == 0)
    gc.collect()


def test_aclose_awaits_the_running_loops_client(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    registry = both_kinds(upstream, make_registry, async_transport, library)

    async def scenario() -> None:
        await registry.async_client("http").get("ok")
        await registry.aclose()
        assert upstream.wait_for(lambda: upstream.live_connections == 0)

    asyncio.run(scenario())
    assert registry.closed


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("name", ["sync", "http"])
def test_forked_child_uses_fresh_connections_and_leaves_the_parents_alone(
    upstream: Upstream, make_registry: RegistryFactory, name: str
) -> None:
    registry = both_kinds(upstream, make_registry)

    def get() -> int:
        if name == "sync":
            return registry.session(name).get("ok").status_code
        return registry.client(name).get("ok").status_code

    assert get() == 200
    assert upstream.connections_total == 1

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        code = 1
        try:
            code = 0 if get() == 200 else 3
        finally:
            os.write(write_end, bytes([code]))
            os._exit(0)
    os.close(write_end)
    child_code = os.read(read_end, 1)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child_code == b"\x00", "the child's request failed"
    assert upstream.connections_total == 2, "the child must open its own connection, not reuse the parent's"

    # The parent's pooled connection is intact: reused, no new connection opened.
    assert get() == 200
    assert upstream.connections_total == 2


def test_sync_close_from_inside_the_loop_still_closes_its_client(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    registry = both_kinds(upstream, make_registry, async_transport, library)

    async def scenario() -> None:
        client = registry.async_client("http")
        await client.get("ok")
        registry.close()  # cannot block on this loop: the close is scheduled on it
        for _ in range(100):
            if client.is_closed:
                break
            await asyncio.sleep(0.01)
        assert client.is_closed

    asyncio.run(scenario())
    assert upstream.wait_for(lambda: upstream.live_connections == 0)
