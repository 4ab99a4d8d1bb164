"""Row 12 (issue 14, hedged requests): what a hedge does to the tail, and what it costs the upstream.

The upstream's ``/replica`` path stands for a service behind which one replica in 25 is slow (every 25th request
answers 100 ms late). One async caller makes sequential GETs through two services alike but for ``hedge``: none, and
``{"delay": "p95"}`` (a second attempt once a call has taken longer than the service's live p95). Alternated per
round; each round a fresh registry, so the p95 is learnt from that round's own calls.

12a: p99 latency with hedging / without (lower is better; reported).
12b: upstream requests added by hedging, in percent of the calls (reported).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import uuid
from typing import TYPE_CHECKING

import outbound
from benchmarks._harness import Row, UpstreamProcess

if TYPE_CHECKING:
    from benchmarks._scenarios import Settings

MEASUREMENT = 12
ROW_KEYS = ("12a", "12b")
SLOW_EVERY = 25
SLOW_SECONDS = 0.1


def hedging(up: UpstreamProcess, s: Settings) -> list[Row]:
    calls = 400 if s.rounds > 2 else 40
    p99_ratios: list[float] = []
    extra_load: list[float] = []
    details: list[tuple[float, float, float, float]] = []
    for _ in range(max(2, s.rounds // 2)):
        plain, _ = asyncio.run(_run(up, calls, hedge=None))
        hedged, hedged_hits = asyncio.run(_run(up, calls, hedge={"delay": "p95"}))
        p99_ratios.append(_percentile(hedged, 0.99) / _percentile(plain, 0.99))
        extra_load.append((hedged_hits - calls) / calls * 100)
        details.append(
            (
                _percentile(plain, 0.5),
                _percentile(plain, 0.99),
                _percentile(hedged, 0.5),
                _percentile(hedged, 0.99),
            )
        )
    p50_plain, p99_plain, p50_hedged, p99_hedged = (statistics.median(column) for column in zip(*details, strict=True))
    return [
        Row(
            "12a",
            f"p99 latency, async GETs with 1 replica in {SLOW_EVERY} {SLOW_SECONDS * 1000:.0f} ms slow: "
            'hedge {"delay": "p95"} / no hedge',
            "x",
            p99_ratios,
            None,
            f"{calls} calls per variant per round; p50 {p50_plain * 1000:.1f} ms vs {p50_hedged * 1000:.1f} ms, p99 "
            f"{p99_plain * 1000:.1f} ms without hedging vs {p99_hedged * 1000:.1f} ms with",
        ),
        Row(
            "12b",
            "upstream requests added by those hedges, per call",
            "%",
            extra_load,
            None,
            "a hedge goes out for each call slower than the live p95 (the slow replica's, and the slowest fast ones), "
            "paid from the retry budget",
            digits=1,
        ),
    ]


async def _run(up: UpstreamProcess, calls: int, *, hedge: dict[str, object] | None) -> tuple[list[float], int]:
    """Latencies of ``calls`` sequential GETs, and the upstream requests they made."""
    service: dict[str, object] = {"base_url": up.url, "client": "httpx"}
    if hedge is not None:
        service["hedge"] = hedge
    registry = outbound.Registry.from_mapping({"services": {"api": service}})
    params = {"every": SLOW_EVERY, "delay": SLOW_SECONDS, "key": uuid.uuid4().hex}
    latencies = []
    before = _replica_hits(up)
    try:
        client = registry.async_client("api")
        for _ in range(calls):
            started = time.perf_counter()
            response = await client.get("replica", params=params)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"expected 200 from the upstream, got {response.status_code}")
    finally:
        await registry.aclose()  # a hedge's loser may still be on its way out: counted once its request arrived
    return latencies, _replica_hits(up) - before


def _replica_hits(up: UpstreamProcess) -> int:
    return int(up.control("GET", "stats")["hits_by_path"].get("/replica", 0))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
