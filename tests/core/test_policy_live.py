"""The richer policy against the real test upstream (and a real Redis for the fleet parts): the failure-rate and
slow-call breaker, the bulkhead, a pause the upstream asks for, the client-side rate limit and connection max age,
through requests, httpx and httpx's async client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

import outbound
from outbound import Registry
from tests.conftest import RegistryFactory
from tests.core.conftest import Send, native
from tests.upstream import Upstream, wait_until

NO_RETRY = {"total": 0}


def _ignore(*errors: type[BaseException]) -> Callable[[Callable[[], Any]], Any]:
    def run(call: Callable[[], Any]) -> Any:
        with contextlib.suppress(*errors):
            return call()
        return None

    return run


# -- breaker mode "rate" ---------------------------------------------------------------------------------------------


def test_a_40_percent_failing_upstream_opens_a_rate_breaker_and_health_shows_the_rates(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    breaker = {"mode": "rate", "window": {"size": 10}, "minimum_calls": 10, "failure_rate": 0.4}
    registry = make_registry(
        rate={"base_url": upstream.url, "client": kind, "retry": NO_RETRY, "breaker": breaker},
        consecutive={"base_url": upstream.url, "client": kind, "retry": NO_RETRY, "breaker": {"fail_max": 3}},
    )
    for path in ["status/500", "status/500", "ok", "ok", "ok"] * 2:
        send(registry, "rate", "GET", path)
        send(registry, "consecutive", "GET", path)
    health = registry.health()["services"]
    assert health["consecutive"]["breaker"]["state"] == "closed"  # never three failures in a row
    assert health["rate"]["breaker"]["state"] == "open"
    assert health["rate"]["breaker"]["mode"] == "rate"
    assert health["rate"]["breaker"]["calls"] == 10
    assert health["rate"]["breaker"]["failure_rate"] == 0.4
    hits = upstream.hits_by_path["/ok"]
    with pytest.raises(outbound.CircuitOpenError):
        send(registry, "rate", "GET", "ok")
    assert upstream.hits_by_path["/ok"] == hits


def test_an_upstream_that_answers_every_call_slowly_opens_a_slow_call_breaker(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = {"mode": "rate", "minimum_calls": 4, "slow_call_duration": 0.1, "slow_call_rate": 0.75}
    registry = make_registry(api={"base_url": upstream.url, "client": kind, "retry": NO_RETRY, "breaker": breaker})
    for _ in range(4):
        assert send(registry, "api", "GET", "slow", params={"delay": 0.15}).status_code == 200
    health = registry.health()["services"]["api"]
    assert health["breaker"]["state"] == "open"
    assert health["breaker"]["slow_call_rate"] == 1.0
    assert health["breaker"]["failure_rate"] == 0.0
    assert "opened after a slow-call rate of 100% (calls over 0.1s) in 4 calls" in caplog.text
    with pytest.raises(outbound.CircuitOpenError):
        send(registry, "api", "GET", "ok")


# -- the bulkhead --------------------------------------------------------------------------------------------------


def test_the_bulkhead_refuses_calls_past_max_in_flight_without_blaming_the_upstream(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": kind, "bulkhead": {"max_in_flight": 2}, "breaker": {"fail_max": 1}}
    )
    holding = threading.Barrier(3)

    def slow() -> Any:
        holding.wait()
        return send(registry, "api", "GET", "slow", params={"delay": 0.5})

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        holders = [pool.submit(slow) for _ in range(2)]
        holding.wait()
        assert upstream.wait_for(lambda: upstream.hits_by_path["/slow"] == 2)
        health = registry.health()["services"]["api"]
        assert health["bulkhead"] == {"max_in_flight": 2, "in_flight": 2, "waiting": 0}
        for _ in range(5):
            with pytest.raises(outbound.BulkheadFullError) as caught:
                send(registry, "api", "GET", "ok")
            assert isinstance(
                caught.value, requests.ConnectionError if kind == "requests" else native(kind).TransportError
            )
            assert "2 calls in flight" in str(caught.value)
        assert [holder.result().status_code for holder in holders] == [200, 200]
    assert upstream.hits_by_path["/ok"] == 0  # nothing was sent
    health = registry.health()["services"]["api"]
    assert health["stats"]["rejected"] == {"bulkhead_full": 5}
    assert health["breaker"]["state"] == "closed"
    assert health["bulkhead"]["in_flight"] == 0
    assert send(registry, "api", "GET", "ok").status_code == 200


def test_with_max_wait_callers_queue_for_the_bulkhead_and_all_get_through(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": kind, "bulkhead": {"max_in_flight": 2, "max_wait": 5}}
    )
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(
            pool.map(lambda _: send(registry, "api", "GET", "slow", params={"delay": 0.3}).status_code, range(6))
        )
    assert statuses == [200] * 6
    assert time.monotonic() - started >= 0.85  # three rounds of two: never more than two at once (a lower bound)
    assert registry.health()["services"]["api"]["bulkhead"] == {"max_in_flight": 2, "in_flight": 0, "waiting": 0}


def test_the_bulkhead_bounds_hundreds_of_tasks_on_the_async_client(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    httpx = native(library)
    service = {"client": library, "transport": async_transport, "bulkhead": {"max_in_flight": 10}, "retry": NO_RETRY}
    registry = make_registry(api={"base_url": upstream.url, **service})

    async def main() -> list[Any]:
        client = registry.async_client("api")

        async def one() -> Any:
            try:
                return (await client.get("slow", params={"delay": 0.3})).status_code
            except httpx.TransportError as error:  # the native class it also is
                return "full" if isinstance(error, outbound.BulkheadFullError) else error

        return await asyncio.gather(*(one() for _ in range(200)))

    results = asyncio.run(main())
    assert results.count(200) == 10
    assert results.count("full") == 190
    assert upstream.hits_by_path["/slow"] == 10


def test_async_callers_wait_for_the_bulkhead_too(
    upstream: Upstream, make_registry: RegistryFactory, library: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": library, "bulkhead": {"max_in_flight": 3, "max_wait": 5}}
    )

    async def main() -> list[int]:
        client = registry.async_client("api")
        responses = await asyncio.gather(*(client.get("slow", params={"delay": 0.2}) for _ in range(9)))
        return [response.status_code for response in responses]

    started = time.monotonic()
    assert asyncio.run(main()) == [200] * 9
    assert time.monotonic() - started >= 0.55  # three rounds of three
    assert registry["api"].policy.bulkhead is not None
    assert registry["api"].policy.bulkhead.in_flight == 0


# -- a pause the upstream asked for ---------------------------------------------------------------------------------


def test_a_429_with_retry_after_pauses_every_caller_of_the_service(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": kind, "retry": NO_RETRY})
    assert send(registry, "api", "GET", "status/429", params={"retry_after": 1}).status_code == 429
    with pytest.raises(outbound.RateLimitedError, match=r"the upstream asked for a pause; \d\.\ds left") as caught:
        send(registry, "api", "GET", "ok")
    assert isinstance(caught.value, requests.ConnectionError if kind == "requests" else native(kind).TransportError)
    assert upstream.hits_by_path["/ok"] == 0
    health = registry.health()["services"]["api"]
    assert health["status"] == "degraded"
    assert 0 < health["paused_for"] <= 1
    assert wait_until(lambda: registry["api"].policy.pause.paused_for() is None, timeout=2)  # type: ignore[union-attr]
    assert send(registry, "api", "GET", "ok").status_code == 200
    assert "paused_for" not in registry.health()["services"]["api"]


def test_a_caller_may_wait_out_the_pause_within_max_wait(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": kind, "retry": NO_RETRY, "pause": {"max_wait": 3}}
    )
    send(registry, "api", "GET", "status/503", params={"retry_after": 1})
    started = time.monotonic()
    assert send(registry, "api", "GET", "ok").status_code == 200
    assert time.monotonic() - started >= 0.9  # it waited for the pause to end (a lower bound: never flaky)


def test_the_call_that_got_the_429_retries_after_the_pause_and_succeeds(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": kind, "retry": {"total": 2}})
    key = f"pause-{kind}"
    response = send(registry, "api", "GET", "fail-then-ok", params={"fails": 1, "key": key, "retry_after": 1})
    assert response.status_code == 200
    assert upstream.hits_by_path["/fail-then-ok"] == 2


def test_an_async_caller_is_paused_too(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    service = {"client": library, "transport": async_transport, "retry": NO_RETRY}
    registry = make_registry(api={"base_url": upstream.url, **service})

    async def main() -> None:
        client = registry.async_client("api")
        await client.get("status/429", params={"retry_after": 2})
        with pytest.raises(outbound.RateLimitedError):
            await client.get("ok")

    asyncio.run(main())
    assert upstream.hits_by_path["/ok"] == 0


# -- the client-side rate limit -----------------------------------------------------------------------------------


def test_the_rate_limit_sends_its_rate_and_refuses_the_rest(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": kind, "rate_limit": {"rate": "10/minute", "max_wait": 0}}
    )
    library_error = requests.ConnectionError if kind == "requests" else native(kind).TransportError
    results: list[Any] = []
    for _ in range(15):
        try:
            results.append(send(registry, "api", "GET", "ok").status_code)
        except library_error as error:
            results.append(error)
    assert results[:10] == [200] * 10
    assert all(isinstance(error, outbound.RateLimitedError) for error in results[10:])
    assert "10/minute reached" in str(results[-1])
    assert upstream.hits_by_path["/ok"] == 10
    health = registry.health()["services"]["api"]
    assert health["rate_limit"] == {"rate": "10/minute", "scope": "process", "remaining": 0}
    assert health["stats"]["rejected"] == {"rate_limited": 5}


def test_threads_waiting_for_permits_all_get_through_at_the_rate(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": kind, "rate_limit": {"rate": "20/second", "max_wait": 3}}
    )
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: send(registry, "api", "GET", "ok").status_code, range(30)))
    assert statuses == [200] * 30
    assert time.monotonic() - started >= 0.95  # 20 permits in the first second, the other 10 a second later
    assert upstream.hits_by_path["/ok"] == 30


def test_async_calls_wait_for_permits(upstream: Upstream, make_registry: RegistryFactory, library: str) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": library, "rate_limit": {"rate": "5/second", "max_wait": 2}}
    )

    async def main() -> list[int]:
        client = registry.async_client("api")
        return [r.status_code for r in await asyncio.gather(*(client.get("ok") for _ in range(8)))]

    started = time.monotonic()
    assert asyncio.run(main()) == [200] * 8
    assert time.monotonic() - started >= 0.95


# -- connection max age ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_age", [0.2, None])
def test_a_connection_busy_for_3x_its_max_age_is_replaced_at_least_3_times(
    upstream: Upstream, make_registry: RegistryFactory, kind: str, max_age: float | None
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": kind, "pool": {"max_connection_age": max_age}})
    client: Any = registry.session("api") if kind == "requests" else registry.client("api")
    deadline = time.monotonic() + 0.7  # 3.5 times the age
    calls = 0
    while time.monotonic() < deadline:
        assert client.get("slow", params={"delay": 0.02}).status_code == 200
        calls += 1
    connections = upstream.stats()["connections_total"]
    if max_age is None:
        assert connections == 1  # the control: one keep-alive connection serves every call
    else:
        assert connections >= 3
        assert connections < calls  # renewed by age, not per call


def test_the_async_client_renews_old_connections_too(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    service = {"client": library, "transport": async_transport, "pool": {"max_connection_age": 0.2}}
    registry = make_registry(api={"base_url": upstream.url, **service})

    async def main() -> int:
        client = registry.async_client("api")
        deadline = time.monotonic() + 0.7
        calls = 0
        while time.monotonic() < deadline:
            await client.get("slow", params={"delay": 0.02})
            calls += 1
        return calls

    calls = asyncio.run(main())
    assert 3 <= upstream.stats()["connections_total"] < calls


# -- with a fleet ------------------------------------------------------------------------------------------------------


@pytest.fixture
def fleet(redis_url: str, upstream: Upstream) -> Iterator[Callable[..., Registry]]:
    made: list[Registry] = []

    def worker(**overrides: Any) -> Registry:
        service = {"base_url": upstream.url, "retry": None, **overrides}
        mapping = {
            "services": {"api": service},
            "state": {"backend": "redis", "url": redis_url, "prefix": f"policy-{id(made)}", "sync_interval": 0.2},
        }
        registry = Registry.from_mapping(mapping)
        made.append(registry)
        return registry

    yield worker
    for registry in made:
        registry.close()


def test_a_fleet_rate_limit_holds_across_workers(fleet: Callable[..., Registry], upstream: Upstream) -> None:
    limit = {"rate": "10/minute", "max_wait": 0, "scope": "fleet"}
    a, b = fleet(rate_limit=limit), fleet(rate_limit=limit)
    sent = 0
    for _ in range(8):
        for worker in (a, b):
            with contextlib.suppress(outbound.RateLimitedError):
                worker.session("api").get("ok")
                sent += 1
    assert sent == 10
    assert upstream.hits_by_path["/ok"] == 10
    assert a.health()["services"]["api"]["rate_limit"] == {"rate": "10/minute", "scope": "fleet", "remaining": None}


def test_a_fleet_rate_limit_holds_per_process_while_redis_is_away(
    upstream: Upstream, make_registry: RegistryFactory, caplog: pytest.LogCaptureFixture
) -> None:
    closed = socketless_port()
    registry = Registry.from_mapping(
        {
            "services": {
                "api": {"base_url": upstream.url, "rate_limit": {"rate": "3/minute", "max_wait": 0, "scope": "fleet"}}
            },
            "state": {"backend": "redis", "url": f"redis://127.0.0.1:{closed}/0", "timeout": 0.05},
        }
    )
    try:
        with caplog.at_level(logging.WARNING):
            results = [_ignore(outbound.RateLimitedError)(lambda: registry.session("api").get("ok")) for _ in range(5)]
            registry.health()  # the fleet backend meets the same outage: it adds no second WARNING
    finally:
        registry.close()
    assert [r.status_code if r is not None else None for r in results] == [200, 200, 200, None, None]
    # One clear WARNING for the outage, whichever of the limit and the fleet backend met it first, naming the setting.
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"state.url redis://127.0.0.1:{closed}/0" in warnings[0]
    assert "rate limits" in warnings[0]


def socketless_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_pause_reaches_every_worker_of_the_fleet(fleet: Callable[..., Registry], upstream: Upstream) -> None:
    a, b = fleet(), fleet()
    b.session("api").get("ok")  # b follows the fleet
    a.session("api").get("status/429", params={"retry_after": 2})
    assert wait_until(lambda: b["api"].policy.pause.paused_for() is not None, timeout=2)  # type: ignore[union-attr]
    hits = upstream.hits_by_path["/ok"]
    with pytest.raises(outbound.RateLimitedError):
        b.session("api").get("ok")
    assert upstream.hits_by_path["/ok"] == hits
    late = fleet()
    with pytest.raises(outbound.RateLimitedError):
        late.session("api").get("ok")  # a worker that joins during the pause adopts it before its first call
    assert upstream.hits_by_path["/ok"] == hits


def test_a_rate_breaker_shares_its_openings_but_not_its_window(
    fleet: Callable[..., Registry], upstream: Upstream, redis_url: str
) -> None:
    breaker = {"mode": "rate", "window": {"size": 4}, "minimum_calls": 4, "failure_rate": 0.5, "reset_timeout": 30}
    a, b = fleet(breaker=breaker), fleet(breaker=breaker)
    b.session("api").get("ok")
    for path in ["ok", "status/500", "ok", "status/500"]:
        a.session("api").get(path)
    assert a["api"].policy.breaker.state == "open"
    assert wait_until(lambda: b["api"].policy.breaker.state == "open", timeout=2)
    assert b["api"].policy.breaker.rule.failures == 0  # b's own window saw one success


def test_any_configured_pause_status_pauses(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    settings = {"retry": NO_RETRY, "pause": {"statuses": [502]}}
    registry = make_registry(api={"base_url": upstream.url, "client": kind, **settings})
    send(registry, "api", "GET", "status/502", params={"retry_after": 1})
    with pytest.raises(outbound.RateLimitedError):
        send(registry, "api", "GET", "ok")


def test_an_operators_reset_ends_a_pause_across_the_fleet(fleet: Callable[..., Registry], upstream: Upstream) -> None:
    a, b = fleet(), fleet()
    b.session("api").get("ok")
    a.session("api").get("status/429", params={"retry_after": 5})
    assert wait_until(lambda: b["api"].policy.pause.paused_for() is not None, timeout=2)  # type: ignore[union-attr]
    a.reset("api")
    assert wait_until(lambda: b["api"].policy.pause.paused_for() is None, timeout=2)  # type: ignore[union-attr]
    time.sleep(0.5)  # more than two sync intervals: the pause must not come back from Redis
    assert b.session("api").get("ok").status_code == 200
    assert a.session("api").get("ok").status_code == 200


def test_a_shorter_retry_after_never_shortens_the_fleets_pause(
    fleet: Callable[..., Registry], upstream: Upstream
) -> None:
    a, b = fleet(), fleet()
    b.session("api").get("ok")
    a.session("api").get("status/429", params={"retry_after": 5})
    assert wait_until(lambda: b["api"].policy.pause.paused_for() is not None, timeout=2)  # type: ignore[union-attr]
    b["api"].policy.pause.shared.paused(1.0)  # type: ignore[union-attr]  # b's own 429 asks for 1 s only
    time.sleep(0.3)  # its fleet thread has written (or not) the pause by now
    late = fleet()
    with pytest.raises(outbound.RateLimitedError, match=r"[34]\.\ds left"):
        late.session("api").get("ok")  # a worker that joins adopts the longer pause


def test_hedges_do_not_use_up_retry_total(upstream: Upstream, make_registry: RegistryFactory, library: str) -> None:
    service = {"client": library, "hedge": {"delay": 0.05}, "retry": {"total": 0}}
    registry = make_registry(api={"base_url": upstream.url, **service})

    async def main() -> list[str]:
        client = registry.async_client("api")
        params = {"every": 2, "delay": 1.0, "key": "hedge-retry-total"}
        return [(await client.get("replica", params=params)).text for _ in range(2)]

    assert asyncio.run(main()) == ["1", "3"]  # hedged although the service makes no retries


def test_close_wakes_a_thread_waiting_for_the_bulkhead(upstream: Upstream, make_registry: RegistryFactory) -> None:
    registry = make_registry(api={"base_url": upstream.url, "bulkhead": {"max_in_flight": 1, "max_wait": 30}})
    session = registry.session("api")
    holder = threading.Thread(target=_ignore(Exception), args=(lambda: session.get("slow", params={"delay": 1}),))
    holder.start()
    assert upstream.wait_for(lambda: upstream.hits_by_path["/slow"] == 1)
    waited: list[float] = []

    def waiter() -> None:
        started = time.monotonic()
        with contextlib.suppress(outbound.OutboundError):
            session.get("ok")
        waited.append(time.monotonic() - started)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    registry.close()
    thread.join(timeout=5)
    holder.join(timeout=5)
    assert not thread.is_alive()  # woken by close(), not after max_wait (30 s)
    assert upstream.hits_by_path["/ok"] == 0
