"""Hedged requests on the async client, against the test upstream's ``/replica`` path (one replica in N is slow):
which attempt won (the body is the request's number), what reached the upstream, and what the stages were told."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import outbound
from outbound import Registry
from outbound._outcome import Kind, Outcome
from outbound._policy import Policy
from tests.conftest import FakeClock, RegistryFactory
from tests.upstream import Upstream

SLOW = 1.0  # the slow replica's delay: far longer than any hedge delay here


def _service(upstream: Upstream, **settings: Any) -> dict[str, Any]:
    return {"base_url": upstream.url, "client": "httpx", "hedge": {"delay": 0.05}, **settings}


def _replica(registry: Registry, key: str, *, every: int = 2, method: str = "GET", **kwargs: Any) -> list[str]:
    """Two calls to /replica through the async client: the first reaches a fast replica, the second a slow one."""

    async def main() -> list[str]:
        client = registry.async_client("api")
        params = {"every": every, "delay": SLOW, "key": key}
        return [(await client.request(method, "replica", params=params, **kwargs)).text for _ in range(2)]

    return asyncio.run(main())


def test_a_slow_answer_is_hedged_and_the_first_answer_wins(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str
) -> None:
    registry = make_registry(api=_service(upstream, transport=async_transport))

    async def main() -> list[str]:
        client = registry.async_client("api")
        params = {"every": 2, "delay": SLOW, "key": "wins"}
        bodies = [(await client.get("replica", params=params)).text for _ in range(2)]
        # The loser was cancelled and its connection discarded: only the winner's is left in the pool.
        pool = registry["api"].pool()
        assert (pool.in_use, pool.idle) == (0, 1)
        return bodies

    # Request 2 hits the slow replica; after 50 ms a hedge (request 3) goes out, answers first and wins.
    assert asyncio.run(main()) == ["1", "3"]
    assert upstream.hits_by_path["/replica"] == 3
    health = registry.health()["services"]["api"]
    assert health["stats"]["retries"] == 1  # the hedge is an extra attempt
    assert health["stats"]["requests"] == 2
    assert health["stats"]["errors"] == 0
    assert health["breaker"]["failures"] == 0


def test_hedging_works_under_trio(upstream: Upstream, make_registry: RegistryFactory) -> None:
    import trio

    registry = make_registry(api=_service(upstream))

    async def main() -> list[str]:
        client = registry.async_client("api")
        params = {"every": 2, "delay": SLOW, "key": "trio"}
        return [(await client.get("replica", params=params)).text for _ in range(2)]

    assert trio.run(main) == ["1", "3"]


def test_without_a_hedge_the_caller_waits_for_the_slow_replica(
    upstream: Upstream, make_registry: RegistryFactory, library: str
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": library})
    started = time.monotonic()
    assert _replica(registry, "unhedged") == ["1", "2"]
    assert time.monotonic() - started >= SLOW  # the control (a lower bound: never flaky)


def test_hedges_spend_the_retry_budget(upstream: Upstream, make_registry: RegistryFactory) -> None:
    budget = {"ratio": 0.0, "min_per_second": 0.0}
    registry = make_registry(api=_service(upstream, retry={"budget": budget}))
    assert _replica(registry, "no-budget") == ["1", "2"]  # no budget left: the slow answer is waited for
    assert upstream.hits_by_path["/replica"] == 2


def test_only_the_configured_methods_are_hedged(upstream: Upstream, make_registry: RegistryFactory) -> None:
    registry = make_registry(api=_service(upstream))
    assert _replica(registry, "post", method="POST", json={}) == ["1", "2"]
    assert upstream.hits_by_path["/replica"] == 2


def test_a_call_whose_retries_are_off_sends_no_hedge(upstream: Upstream, make_registry: RegistryFactory) -> None:
    registry = make_registry(api=_service(upstream))
    assert _replica(registry, "off", extensions={"outbound.retries": False}) == ["1", "2"]


def test_a_hedge_never_goes_to_a_half_open_breakers_taken_trial(
    upstream: Upstream, make_registry: RegistryFactory
) -> None:
    registry = make_registry(api=_service(upstream, breaker={"fail_max": 1, "reset_timeout": 0.2}, retry=None))

    async def main() -> str:
        client = registry.async_client("api")
        await client.get("status/503")  # opens the breaker
        await asyncio.sleep(0.25)  # the trial is due: the next call is it, and the only one allowed
        return (await client.get("replica", params={"every": 1, "delay": 0.3, "key": "trial"})).text

    assert asyncio.run(main()) == "1"  # the slow trial was not hedged
    assert upstream.hits_by_path["/replica"] == 1
    assert registry["api"].policy.breaker.state == "closed"


def test_the_live_p95_sets_the_delay_once_enough_calls_are_known(
    upstream: Upstream, make_registry: RegistryFactory
) -> None:
    registry = make_registry(api=_service(upstream, hedge={"delay": "p95"}))

    async def main() -> list[float]:
        client = registry.async_client("api")
        params = {"every": 25, "delay": SLOW, "key": "p95"}
        took = []
        for _ in range(25):
            started = time.monotonic()
            (await client.get("replica", params=params)).raise_for_status()
            took.append(time.monotonic() - started)
        return took

    took = asyncio.run(main())
    # 24 fast calls give a p95 of a few milliseconds; the slow 25th request is hedged after it and a fast hedge wins,
    # so no call waits for the slow replica. (Which call meets request 25 depends on the machine: a hiccup longer
    # than that p95 hedges an earlier call, and the numbering moves on by one.)
    assert max(took) < SLOW / 2, took
    assert upstream.hits_by_path["/replica"] >= 26  # at least the one hedge


def test_cancelling_the_caller_mid_race_gives_everything_back(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str
) -> None:
    settings = {"hedge": {"delay": 0.05, "max": 2}, "bulkhead": {"max_in_flight": 1}, "retry": None}
    registry = make_registry(api=_service(upstream, transport=async_transport, **settings))

    async def main() -> None:
        client = registry.async_client("api")
        with pytest.raises(TimeoutError):
            # every request is slow: the call and its two hedges are all running when the caller gives up
            await asyncio.wait_for(client.get("replica", params={"every": 1, "delay": SLOW, "key": "cancel"}), 0.3)
        assert (await client.get("ok")).status_code == 200  # the bulkhead's one slot is free again

    asyncio.run(main())
    assert upstream.hits_by_path["/replica"] == 3
    assert registry["api"].policy.bulkhead is not None
    assert registry["api"].policy.bulkhead.in_flight == 0
    health = registry.health()["services"]["api"]
    assert health["breaker"]["failures"] == 0  # a cancelled race says nothing about the upstream
    assert health["stats"]["errors"] == 0


def test_the_sync_clients_do_not_hedge(upstream: Upstream, make_registry: RegistryFactory) -> None:
    registry = make_registry(api=_service(upstream))
    client = registry.client("api")
    params = {"every": 2, "delay": 0.2, "key": "sync"}
    assert [client.get("replica", params=params).text for _ in range(2)] == ["1", "2"]


def test_the_policy_admits_a_hedge_only_while_every_stage_would() -> None:
    settings = {"base_url": "http://127.0.0.1:1/", "hedge": {"delay": 0.1, "max": 1}}
    config = outbound.parse_config({"services": {"svc": settings}}).services["svc"]
    clock = FakeClock()
    policy = Policy(config, clock=clock, random=lambda: 0.0)
    call = policy.start("GET", "http://127.0.0.1:1/x", replayable=True)
    assert call.hedge_delay() == 0.1
    assert call.admit() is None
    policy.pause.pause(5.0)  # type: ignore[union-attr]  # the upstream asked for a pause meanwhile
    assert call.hedge(0.1) is None
    policy.pause.reset()  # type: ignore[union-attr]
    hedge = call.hedge(0.1)
    assert hedge is not None
    assert call.hedge(0.1) is None  # max 1
    assert call.hedge_delay() is None
    call.adopt(hedge)
    assert call.record(Outcome(Kind.RESPONSE, status=200)).retry is False
    assert call.attempts == 2
    streamed = policy.start("GET", "http://127.0.0.1:1/x", replayable=False)  # a body that cannot be sent twice
    assert streamed.hedge_delay() is None
