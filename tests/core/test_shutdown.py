"""``close()`` while calls are in flight: no new attempt, no new socket, none left open, nothing blamed on upstreams."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from typing import Any

import pytest

import outbound
from tests.conftest import RegistryFactory
from tests.core.conftest import Send
from tests.upstream import Upstream


def _in_thread(work: Any) -> tuple[threading.Thread, list[BaseException | None]]:
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:
            result.append(error)
        else:
            result.append(None)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_retry_sleeping_in_backoff_is_refused_at_once_and_opens_nothing(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": kind, "retry": {"total": 3, "backoff_factor": 5, "backoff_jitter": 0}}
    )
    thread, result = _in_thread(lambda: send(registry, "api", "GET", "status/503"))
    assert upstream.wait_for(lambda: upstream.hits == 1)
    time.sleep(0.05)  # now sleeping 5 s before its retry
    closed_at = time.monotonic()
    registry.close()
    thread.join(timeout=5)
    assert time.monotonic() - closed_at < 1.0, "close() must wake a sleeping retry"
    assert isinstance(result[0], outbound.RegistryClosedError)
    assert upstream.hits == 1  # the retry was never sent
    gc.collect()
    assert upstream.wait_for(lambda: upstream.live_connections == 0)  # and no socket was left open


def test_calls_in_flight_when_the_registry_closes_are_not_blamed_on_the_upstream(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": kind, "breaker": {"fail_max": 2}, "retry": {"backoff_factor": 0}}
    )
    with caplog.at_level(logging.INFO, logger="outbound"):
        threads = [_in_thread(lambda: send(registry, "api", "GET", "slow", params={"delay": 1})) for _ in range(8)]
        assert upstream.wait_for(lambda: upstream.hits_by_path["/slow"] == 8)
        registry.close()
        for thread, _ in threads:
            thread.join(timeout=5)
    outcomes = [result[0] for _, result in threads]
    # requests lets a call in flight finish on its connection; httpx closes it under the call: either way nothing is
    # retried, nothing reaches the breaker, and nothing is logged as the upstream's failure.
    assert all(outcome is None or isinstance(outcome, outbound.RegistryClosedError) for outcome in outcomes), outcomes
    assert upstream.hits_by_path["/slow"] == 8
    assert registry["api"].policy.breaker.state == "closed"
    assert registry["api"].policy.breaker.failures == 0
    assert registry["api"].policy.stats.errors == 0
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("outbound.")]
    gc.collect()
    assert upstream.wait_for(lambda: upstream.live_connections == 0)


def test_async_calls_in_flight_when_the_registry_closes_are_not_blamed_on_the_upstream(
    upstream: Upstream,
    make_registry: RegistryFactory,
    caplog: pytest.LogCaptureFixture,
    async_transport: str,
    library: str,
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": library, "transport": async_transport, "breaker": {"fail_max": 2}}
    )

    async def scenario() -> list[Any]:
        client = registry.async_client("api")
        calls = [asyncio.create_task(client.get("slow", params={"delay": 1})) for _ in range(8)]
        await asyncio.to_thread(upstream.wait_for, lambda: upstream.hits_by_path["/slow"] == 8)
        await registry.aclose()
        return await asyncio.gather(*calls, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="outbound"):
        outcomes = asyncio.run(scenario())
    assert all(isinstance(outcome, outbound.RegistryClosedError) for outcome in outcomes), outcomes
    assert registry["api"].policy.breaker.failures == 0
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("outbound.")]


def test_no_new_attempt_starts_after_close(upstream: Upstream, make_registry: RegistryFactory, send: Send) -> None:
    registry = make_registry(api={"base_url": upstream.url})
    registry.close()
    with pytest.raises(outbound.RegistryClosedError):
        send(registry, "api", "GET", "ok")
    assert upstream.hits == 0


def test_an_async_retry_sleeping_in_backoff_is_refused_soon_after_close(
    upstream: Upstream,
    make_registry: RegistryFactory,
    caplog: pytest.LogCaptureFixture,
    async_transport: str,
    library: str,
) -> None:
    registry = make_registry(
        api={
            "base_url": upstream.url,
            "client": library,
            "transport": async_transport,
            "retry": {"backoff_factor": 5, "backoff_jitter": 0},
        }
    )

    async def scenario() -> tuple[BaseException | None, float]:
        call = asyncio.create_task(registry.async_client("api").get("status/503"))
        await asyncio.to_thread(upstream.wait_for, lambda: upstream.hits == 1)
        await asyncio.sleep(0.05)  # now sleeping 5 s before its retry
        closed_at = time.monotonic()
        registry.close()
        try:
            await call
        except BaseException as error:
            return error, time.monotonic() - closed_at
        return None, time.monotonic() - closed_at

    with caplog.at_level(logging.INFO, logger="outbound"):
        error, waited = asyncio.run(scenario())
    assert isinstance(error, outbound.RegistryClosedError)
    assert waited < 1.0
    assert upstream.hits == 1
    stats = registry["api"].policy.stats
    assert stats.errors == 0  # a retry refused by our own shutdown is not the upstream's failure
    assert stats.last_error is None
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("outbound.")]
