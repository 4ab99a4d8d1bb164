"""Row 14 (issue 15, speed): outbound against the textbook recipe, and the aiohttp transport for async services.

14a: sequential GETs, requests: outbound's session / the textbook recipe — a Session with
     ``HTTPAdapter(max_retries=Retry(total=2, backoff_factor=0.25, status_forcelist=[429, 502, 503, 504]))`` and every
     call through ``pybreaker.CircuitBreaker.call`` with ``raise_for_status()`` (so a 5xx counts) — alternated in
     slices as row 1 (target >= 1.0).
14b: sequential GETs, async: outbound's AsyncClient on the aiohttp transport / a raw ``aiohttp.ClientSession``
     (target >= 0.5; the httpcore transport's is in the details).
14c: the same / a bare ``httpx.AsyncClient`` on httpx-aiohttp's ``AiohttpTransport`` (target >= 0.95).
14d: 200 tasks, 50 ms upstream, 20 connections: outbound on aiohttp, calls/s against the 400/s the pool can carry
     (target >= 0.9).
14e: 500 tasks, 50 ms upstream, 100 connections: the event loop's longest stall while outbound on aiohttp runs them
     (a 10 ms sleep that wakes late) over a bare AsyncClient's on httpx-aiohttp, the same load alternated run by
     run (target <= 1.1x), and the calls that failed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
import httpx
import pybreaker
import requests
from httpx_aiohttp import AiohttpTransport
from urllib3.util.retry import Retry

import outbound
from benchmarks._harness import Row, Target, UpstreamProcess, interleave, interleave_async, ratios, run_async_slice

if TYPE_CHECKING:
    from benchmarks._scenarios import Settings

MEASUREMENT = 14
ROW_KEYS = ("14a", "14b", "14c", "14d", "14e")
SLOW_DELAY = 0.05
LAG_PROBE = 0.01


def speed(up: UpstreamProcess, s: Settings) -> list[Row]:
    from benchmarks._scenarios import (
        POOL,
        REQUESTS_TIMEOUT,
        expect_ok,
        overhead_detail,
        registry,
        service,
        sliced,
        warm_up,
    )

    reg = registry(req=service(up.url))
    recipe = requests.Session()
    retry = Retry(total=2, backoff_factor=0.25, status_forcelist=[429, 502, 503, 504])
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=4, pool_maxsize=POOL.max_connections, pool_block=True, max_retries=retry
    )
    recipe.mount("http://", adapter)
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    url = up.url + "ok"

    def outbound_session() -> None:
        expect_ok(reg.session("req").get("ok"))

    def fetch() -> requests.Response:
        response = recipe.get(url, timeout=REQUESTS_TIMEOUT)
        response.raise_for_status()
        return response

    def textbook_recipe() -> None:
        expect_ok(breaker.call(fetch))

    try:
        warm_up(s.warmup_calls, outbound_session, textbook_recipe)
        recipe_runs = interleave(
            [sliced(s, outbound_session), sliced(s, textbook_recipe)], rounds=s.rounds, slices=s.slices
        )
    finally:
        recipe.close()
        reg.close()
    sequential, httpcore_runs = asyncio.run(_sequential_async(up.url, s))
    concurrent = [
        asyncio.run(_concurrent(up.url, tasks=200, connections=20, s=s)) for _ in range(max(2, s.rounds // 3))
    ]
    big, big_bare = [], []
    for _ in range(max(2, s.rounds // 3)):  # alternated run by run: both sample the same moments of the machine
        big.append(asyncio.run(_concurrent(up.url, tasks=500, connections=100, s=s)))
        big_bare.append(asyncio.run(_concurrent(up.url, tasks=500, connections=100, s=s, bare=True)))
    outbound_aio, raw_aio, bare_aio = sequential
    ideal = 20 / SLOW_DELAY
    return [
        Row(
            "14a",
            "sequential GETs, requests: outbound session / textbook recipe (Retry adapter + pybreaker.call)",
            "x",
            ratios(*recipe_runs),
            Target(">=", 1.0, ">= 1.0"),
            overhead_detail(recipe_runs).replace("bare", "recipe"),
        ),
        Row(
            "14b",
            "sequential GETs, async: outbound AsyncClient on aiohttp / raw aiohttp.ClientSession",
            "x",
            ratios(outbound_aio, raw_aio),
            Target(">=", 0.5, ">= 0.5"),
            f"outbound on aiohttp {statistics.median(outbound_aio):,.0f} calls/s, raw aiohttp "
            f"{statistics.median(raw_aio):,.0f}; a bare httpx AsyncClient on httpx-aiohttp "
            f"{statistics.median(bare_aio):,.0f} ({statistics.median(ratios(bare_aio, raw_aio)):.2f} of raw aiohttp: "
            "httpx's own client is the floor); outbound on httpcore "
            f"{statistics.median(httpcore_runs):,.0f} ({statistics.median(ratios(httpcore_runs, raw_aio)):.2f})",
        ),
        Row(
            "14c",
            "sequential GETs, async: outbound AsyncClient on aiohttp / bare AsyncClient on httpx-aiohttp",
            "x",
            ratios(outbound_aio, bare_aio),
            Target(">=", 0.95, ">= 0.95"),
            overhead_detail([outbound_aio, bare_aio]),
        ),
        Row(
            "14d",
            f"200 tasks, {SLOW_DELAY * 1000:.0f} ms upstream, 20 connections: outbound on aiohttp / the {ideal:.0f}/s "
            "the pool can carry",
            "x",
            [rate / ideal for rate, _, _ in concurrent],
            Target(">=", 0.9, ">= 0.9"),
            f"{statistics.median(rate for rate, _, _ in concurrent):,.0f} calls/s; failed calls "
            f"{sum(failed for _, _, failed in concurrent)}",
        ),
        Row(
            "14e",
            f"500 tasks, {SLOW_DELAY * 1000:.0f} ms upstream, 100 connections, outbound on aiohttp: the event loop's "
            "longest stall / a bare AsyncClient's on httpx-aiohttp",
            "x",
            [lag / bare_lag for (_, lag, _), (_, bare_lag, _) in zip(big, big_bare, strict=True)],
            Target("<=", 1.1, "<= 1.1"),
            f"outbound's longest stall {statistics.median(lag for _, lag, _ in big) * 1000:.0f} ms; "
            f"{statistics.median(rate for rate, _, _ in big):,.0f} calls/s (the pool could carry "
            f"{100 / SLOW_DELAY:,.0f}/s); failed calls (timeouts included): {sum(failed for _, _, failed in big)}; a "
            f"bare AsyncClient on httpx-aiohttp under the same load: longest stall "
            f"{statistics.median(lag for _, lag, _ in big_bare) * 1000:.0f} ms, "
            f"{statistics.median(rate for rate, _, _ in big_bare):,.0f} calls/s",
            digits=2,
        ),
    ]


async def _sequential_async(url: str, s: Settings) -> tuple[list[list[float]], list[float]]:
    """Calls/s of outbound on aiohttp, raw aiohttp, bare httpx on httpx-aiohttp and outbound on httpcore."""
    registry = outbound.Registry.from_mapping(
        {
            "services": {
                "aio": {"base_url": url, "client": "httpx", "transport": "aiohttp"},
                "hc": {"base_url": url, "client": "httpx"},
            }
        }
    )
    raw = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20))
    bare = httpx.AsyncClient(base_url=url, transport=AiohttpTransport(limits=httpx.Limits(max_connections=20)))
    try:

        async def outbound_aiohttp() -> None:
            _ok((await registry.async_client("aio").get("ok")).status_code)

        async def raw_aiohttp() -> None:
            async with raw.get(url + "ok") as response:
                await response.read()
                _ok(response.status)

        async def bare_httpx_aiohttp() -> None:
            _ok((await bare.get("ok")).status_code)

        async def outbound_httpcore() -> None:
            _ok((await registry.async_client("hc").get("ok")).status_code)

        variants = [outbound_aiohttp, raw_aiohttp, bare_httpx_aiohttp, outbound_httpcore]
        for variant in variants:
            for _ in range(s.warmup_calls):
                await variant()
        runs = await interleave_async(
            [_slice(variant, s) for variant in variants], rounds=s.rounds, slices=max(1, s.slices // 2)
        )
    finally:
        await raw.close()
        await bare.aclose()
        await registry.aclose()
    return runs[:3], runs[3]


def _slice(call: Callable[[], Awaitable[None]], s: Settings) -> Callable[[], Awaitable[tuple[int, float]]]:
    return lambda: run_async_slice(call, max_calls=s.slice_calls, max_seconds=s.slice_seconds)


async def _concurrent(
    url: str, *, tasks: int, connections: int, s: Settings, bare: bool = False
) -> tuple[float, float, int]:
    """Calls/s of ``tasks`` tasks through outbound on aiohttp (or, ``bare``, an AsyncClient on httpx-aiohttp), the
    loop's longest stall, and the calls that failed."""
    service = {
        "base_url": url,
        "client": "httpx",
        "transport": "aiohttp",
        "pool": {"max_connections": connections, "max_keepalive": connections},
        "timeout": {"pool": 10.0},
    }
    registry = outbound.Registry.from_mapping({"services": {"api": service}})
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    plain = httpx.AsyncClient(base_url=url, transport=AiohttpTransport(limits=limits), timeout=10.0)
    seconds = 3.0 if s.rounds > 2 else 0.3
    failed = 0
    calls = 0
    stalls: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(LAG_PROBE)
            stalls.append(time.perf_counter() - before - LAG_PROBE)

    async def worker(deadline: float) -> None:
        nonlocal failed, calls
        client = plain if bare else registry.async_client("api")
        while time.perf_counter() < deadline:
            try:
                _ok((await client.get("slow", params={"delay": SLOW_DELAY})).status_code)
                calls += 1
            except httpx.HTTPError:  # outbound's errors are httpx's too
                failed += 1

    try:
        await asyncio.gather(*(worker(time.perf_counter() + 0.2) for _ in range(tasks)))  # open the connections
        calls = failed = 0
        monitor = asyncio.create_task(probe())
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds) for _ in range(tasks)))
        elapsed = time.perf_counter() - started
        stop.set()
        await monitor
    finally:
        await plain.aclose()
        await registry.aclose()
    return calls / elapsed, max(stalls, default=0.0), failed


def _ok(status: int) -> None:
    if status != 200:
        raise RuntimeError(f"expected 200 from the upstream, got {status}")
