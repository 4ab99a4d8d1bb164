"""Row 15 (issue 10, a total deadline that holds inside an attempt): how late a call ends after its deadline.

The upstream trickles one byte every 50 ms, well inside the 0.4 s read timeout, so only ``timeout.total`` (0.3 s)
can end the call: its status line and headers (``/trickle-headers``), or its body after headers sent at once
(``/trickle-body``). Each client makes the same calls, alternated per call; the figure is how long after the
deadline the caller got the error back, from the call's start (the client is made before the clock starts: the
first use of a service builds its client, an SSL context and, for aiohttp, the import, outside any call's deadline).

15a-15d: the worst overrun of a round, per client (target: 0.1 s, the margin the hardening issue set).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import outbound
from benchmarks._harness import Row, Target, UpstreamProcess

if TYPE_CHECKING:
    from benchmarks._scenarios import Settings

MEASUREMENT = 15
ROW_KEYS = ("15a", "15b", "15c", "15d")
TOTAL = 0.3
INTERVAL = 0.05
PATHS = (
    f"trickle-headers?interval={INTERVAL}&count=200",  # 10 s of headers at least
    f"trickle-body?interval={INTERVAL}&bytes=200",  # headers at once, then 10 s of body
)
CLIENTS = (
    ("15a", "requests session"),
    ("15b", "httpx client"),
    ("15c", "async client, httpcore"),
    ("15d", "async client, aiohttp"),
)


def deadline(up: UpstreamProcess, s: Settings) -> list[Row]:
    calls_per_path = 3 if s.rounds > 2 else 1
    worst: dict[str, list[float]] = {key: [] for key, _ in CLIENTS}
    every: dict[str, list[float]] = {key: [] for key, _ in CLIENTS}
    registry = outbound.Registry.from_mapping({"services": _services(up.url)})
    try:
        for _ in range(s.rounds):
            overruns: dict[str, list[float]] = {key: [] for key, _ in CLIENTS}
            for _ in range(calls_per_path):
                for path in PATHS:
                    overruns["15a"].append(_overrun_sync(registry.session("requests").get, path))
                    overruns["15b"].append(_overrun_sync(registry.client("httpx").get, path))
                    overruns["15c"].append(asyncio.run(_overrun_async(registry, "httpcore", path)))
                    overruns["15d"].append(asyncio.run(_overrun_async(registry, "aiohttp", path)))
            for key, values in overruns.items():
                worst[key].append(max(values))
                every[key].extend(values)
    finally:
        registry.close()
    target = Target("<=", 100.0, "<= 100 ms")
    return [
        Row(
            key,
            f"timeout.total {TOTAL:g} s against a trickling upstream, {name}: worst overrun of a round",
            "ms",
            worst[key],
            target,
            f"{len(every[key])} calls (headers and body trickled alike); median overrun "
            f"{statistics.median(every[key]):.1f} ms, worst of all {max(every[key]):.1f} ms",
            digits=1,
        )
        for key, name in CLIENTS
    ]


def _services(url: str) -> dict[str, Any]:
    common = {
        "base_url": url,
        "timeout": {"total": TOTAL, "read": 0.4},
        "retry": {"total": 0},
        "breaker": {"fail_max": 1_000_000},  # every call times out: a breaker opening would end the row
    }
    return {
        "requests": {**common, "client": "requests"},
        "httpx": {**common, "client": "httpx"},
        "httpcore": {**common, "client": "httpx", "transport": "httpcore"},
        "aiohttp": {**common, "client": "httpx", "transport": "aiohttp"},
    }


def _overrun_sync(get: Callable[[str], Any], path: str) -> float:
    started = time.perf_counter()
    try:
        get(path)
    except outbound.ReadTimeoutError:
        return (time.perf_counter() - started - TOTAL) * 1000.0
    raise RuntimeError(f"GET {path} returned before its deadline")


async def _overrun_async(registry: outbound.Registry, name: str, path: str) -> float:
    get: Callable[[str], Awaitable[Any]] = registry.async_client(name).get
    started = time.perf_counter()
    try:
        await get(path)
    except outbound.ReadTimeoutError:
        return (time.perf_counter() - started - TOTAL) * 1000.0
    raise RuntimeError(f"GET {path} returned before its deadline")
