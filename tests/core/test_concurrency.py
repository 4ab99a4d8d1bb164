"""One breaker shared by 16 threads or 50 asyncio tasks: no serialisation, fast rejection, a single trial."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import outbound
from outbound import Registry
from tests.conftest import FakeClock
from tests.core.conftest import Send
from tests.upstream import Upstream

UPSTREAM_LATENCY = 0.2


def in_threads(count: int, work: Callable[[], Any]) -> list[Any]:
    """Run ``work`` in ``count`` threads released together; return each result or exception."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait(timeout=10)
        try:
            results[index] = work()
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def breaker_registry(upstream: Upstream, kind: str, clock: FakeClock, transport: str = "httpcore") -> Registry:
    return Registry.from_mapping(
        {
            "services": {
                "api": {
                    "base_url": upstream.url,
                    "client": kind,
                    "transport": transport,
                    "pool": {"max_connections": 50},
                    "retry": {"total": 0},
                    "breaker": {"fail_max": 2, "reset_timeout": 10},
                }
            }
        },
        clock=clock,
    )


def test_16_threads_through_one_breaker_are_not_serialised(
    upstream: Upstream, make_registry: Any, send: Send, kind: str
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": kind, "pool": {"max_connections": 16}})
    started = time.monotonic()
    results = in_threads(16, lambda: send(registry, "api", "GET", "slow", params={"delay": UPSTREAM_LATENCY}))
    elapsed = time.monotonic() - started
    assert [r.status_code for r in results] == [200] * 16
    # Serialised calls would take 16 x 0.2 s = 3.2 s; concurrent ones about one latency. Half of serial is a
    # wide margin that still fails if anything holds a lock across the call.
    assert elapsed < 16 * UPSTREAM_LATENCY / 2


def test_breaker_from_16_threads_fails_fast_then_sends_a_single_trial(
    upstream: Upstream, send: Send, kind: str
) -> None:
    clock = FakeClock()
    with breaker_registry(upstream, kind, clock) as registry:
        for _ in range(2):
            assert send(registry, "api", "GET", "status/500").status_code == 500
        assert registry["api"].policy.breaker.state == "open"
        hits = upstream.hits

        rejected = in_threads(16, lambda: send(registry, "api", "GET", "ok"))
        assert all(isinstance(r, outbound.CircuitOpenError) for r in rejected)
        assert {r.service for r in rejected} == {"api"}
        assert all(r.retry_in == pytest.approx(10.0) for r in rejected)
        assert upstream.hits == hits  # nothing was sent

        clock.now += 10
        trial = in_threads(16, lambda: send(registry, "api", "GET", "slow", params={"delay": UPSTREAM_LATENCY}))
        passed = [r for r in trial if not isinstance(r, Exception)]
        assert len(passed) == 1
        assert passed[0].status_code == 200
        assert sum(isinstance(r, outbound.CircuitOpenError) for r in trial) == 15
        assert upstream.hits_by_path["/slow"] == 1
        assert registry["api"].policy.breaker.state == "closed"
        assert registry.health()["services"]["api"]["stats"]["short_circuited"] == 31


def test_breaker_from_50_asyncio_tasks_fails_fast_then_sends_a_single_trial(
    upstream: Upstream, async_transport: str
) -> None:
    clock = FakeClock()

    async def scenario(registry: Registry) -> None:
        client = registry.async_client("api")
        for _ in range(2):
            assert (await client.get("status/500")).status_code == 500
        rejected = await asyncio.gather(*(client.get("ok") for _ in range(50)), return_exceptions=True)
        assert all(isinstance(r, outbound.CircuitOpenError) for r in rejected)
        assert upstream.hits_by_path["/ok"] == 0

        clock.now += 10
        trial = await asyncio.gather(
            *(client.get("slow", params={"delay": UPSTREAM_LATENCY}) for _ in range(50)), return_exceptions=True
        )
        assert sum(not isinstance(r, BaseException) for r in trial) == 1
        assert sum(isinstance(r, outbound.CircuitOpenError) for r in trial) == 49
        assert upstream.hits_by_path["/slow"] == 1
        assert registry["api"].policy.breaker.state == "closed"

    with breaker_registry(upstream, "httpx", clock, async_transport) as registry:
        asyncio.run(scenario(registry))


def test_50_asyncio_tasks_run_concurrently(
    upstream: Upstream, make_registry: Any, async_transport: str, library: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": library, "transport": async_transport, "pool": {"max_connections": 50}}
    )

    async def scenario() -> float:
        client = registry.async_client("api")
        started = time.monotonic()
        responses = await asyncio.gather(*(client.get("slow", params={"delay": UPSTREAM_LATENCY}) for _ in range(50)))
        assert [r.status_code for r in responses] == [200] * 50
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 50 * UPSTREAM_LATENCY / 5


def test_cancelled_task_never_counts_as_an_upstream_failure(
    upstream: Upstream, make_registry: Any, async_transport: str, library: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": library, "transport": async_transport, "breaker": {"fail_max": 1}}
    )

    async def scenario() -> None:
        client = registry.async_client("api")
        task = asyncio.create_task(client.get("slow", params={"delay": 1}))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert registry["api"].policy.breaker.state == "closed"
    assert registry["api"].policy.stats.in_flight == 0
