"""Row 8's worker, run in a fresh process so its memory and descriptors are its own:
``python -m benchmarks._leak --url URL --calls 50000 --segments 5`` prints one JSON line.

Calls go through all three clients at once: a requests session and an httpx client from 4 threads each, and async
clients from a series of short-lived event loops (each ``asyncio.run`` gets, and must close, its own AsyncClient).
A fifth of the calls ask for a 503 (retried once, within the budget); the breakers (``fail_max`` 5,
``reset_timeout`` 20 ms) trip and recover throughout. A caller refused by an open breaker waits until the breaker
admits a trial, as a well-behaved client would; otherwise refusals, at a few microseconds each, would use up the
call count while hardly any request reached the upstream.

Descriptors come from ``/proc/self/fd`` and memory from ``VmRSS`` in ``/proc/self/status`` (Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import requests

import outbound

FAILING_SHARE = 0.2
SYNC_THREADS = 4
ASYNC_TASKS = 10
ASYNC_BATCH = 200  # calls per event loop
JOIN_SECONDS = 600.0
BREAKER_FAIL_MAX = 5
BREAKER_RESET_SECONDS = 0.02


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class OpenCounter(logging.Handler):
    """Counts the breakers' "opened" warnings instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.opened = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "opened" in record.getMessage():
            self.opened += 1


def build(url: str) -> outbound.Registry:
    settings = {
        "base_url": url,
        "retry": {"total": 1, "backoff_factor": 0, "backoff_jitter": 0},
        "breaker": {"fail_max": BREAKER_FAIL_MAX, "reset_timeout": BREAKER_RESET_SECONDS},
    }
    return outbound.Registry.from_mapping(
        {"services": {"req": {**settings, "client": "requests"}, "hx": {**settings, "client": "httpx"}}}
    )


def path(rng: random.Random) -> str:
    return "status/503" if rng.random() < FAILING_SHARE else "ok"


def classify(name: str, target: str, registry: outbound.Registry) -> str:
    """Make one call through service ``name``'s sync client and name its outcome."""
    try:
        if name == "req":
            response: requests.Response | httpx.Response = registry.session(name).get(target)
        else:
            response = registry.client(name).get(target)
    except outbound.CircuitOpenError as refused:
        time.sleep(min(refused.retry_in, BREAKER_RESET_SECONDS))
        return "rejected by breaker"
    except outbound.OutboundError as error:
        return f"error {type(error).__name__}"
    return "ok" if response.status_code == 200 else "failed (503)"


class Tally:
    """Outcome counts merged from every worker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, counts: Counter[str]) -> None:
        with self._lock:
            self.counts.update(counts)


def sync_worker(registry: outbound.Registry, name: str, calls: int, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    local: Counter[str] = Counter()
    for _ in range(calls):
        local[classify(name, path(rng), registry)] += 1
    tally.add(local)


def async_worker(registry: outbound.Registry, calls: int, seed: int, tally: Tally, loops: list[int]) -> None:
    rng = random.Random(seed)

    async def task(count: int) -> Counter[str]:
        local: Counter[str] = Counter()
        for _ in range(count):
            target = path(rng)
            try:
                response = await registry.async_client("hx").get(target)
            except outbound.CircuitOpenError as refused:
                await asyncio.sleep(min(refused.retry_in, BREAKER_RESET_SECONDS))
                local["rejected by breaker"] += 1
                continue
            except outbound.OutboundError as error:
                local[f"error {type(error).__name__}"] += 1
                continue
            local["ok" if response.status_code == 200 else "failed (503)"] += 1
        return local

    async def batch(count: int) -> None:
        per_task = [count // ASYNC_TASKS + (1 if i < count % ASYNC_TASKS else 0) for i in range(ASYNC_TASKS)]
        for result in await asyncio.gather(*(task(n) for n in per_task if n)):
            tally.add(result)

    left = calls
    while left > 0:
        count = min(ASYNC_BATCH, left)
        asyncio.run(batch(count))  # a new loop, so a new AsyncClient that must be closed when the loop ends
        loops[0] += 1
        left -= count


def segment(registry: outbound.Registry, calls: int, seed: int, tally: Tally, loops: list[int]) -> None:
    """Run ``calls`` calls: 40% through requests, 40% through httpx, 20% async, all at once."""
    sync_calls = calls * 2 // 5 // SYNC_THREADS
    async_calls = calls - 2 * sync_calls * SYNC_THREADS
    errors: list[BaseException] = []

    def guarded(work: Callable[..., None], *args: Any) -> threading.Thread:
        def run() -> None:
            try:
                work(*args)
            except BaseException as error:  # re-raised below: an unexpected error must fail the run
                errors.append(error)

        return threading.Thread(target=run)

    workers = [
        guarded(sync_worker, registry, name, sync_calls, seed * 100 + i, tally)
        for name in ("req", "hx")
        for i in range(SYNC_THREADS)
    ]
    workers.append(guarded(async_worker, registry, async_calls, seed * 100 + 99, tally, loops))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=JOIN_SECONDS)
        if worker.is_alive():
            raise RuntimeError(f"a worker did not finish within {JOIN_SECONDS:.0f}s")
    if errors:
        raise errors[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--segments", type=int, default=5)
    args = parser.parse_args(argv)

    counter = OpenCounter()
    breaker_logger = logging.getLogger("outbound.breaker")
    breaker_logger.addHandler(counter)
    breaker_logger.propagate = False
    logging.getLogger("outbound").addHandler(logging.NullHandler())  # no "closed" chatter on stderr

    # A warm-up run with its own registry: imports, SSL contexts, class caches and the allocator's arenas are
    # one-time costs, not growth.
    warm = build(args.url)
    segment(warm, max(100, args.calls // 50), 0, Tally(), [0])
    warm.close()
    del warm
    gc.collect()
    fds_before, rss_before = open_fds(), rss_mb()
    counter.opened = 0

    tally = Tally()
    loops = [0]
    registry = build(args.url)
    segments = []
    started = time.perf_counter()
    per_segment = args.calls // args.segments
    for index in range(args.segments):
        calls = per_segment if index < args.segments - 1 else args.calls - per_segment * (args.segments - 1)
        segment(registry, calls, index + 1, tally, loops)
        gc.collect()
        segments.append({"calls": calls, "fds": open_fds(), "rss_mb": rss_mb()})
    seconds = time.perf_counter() - started
    registry.close()
    del registry
    gc.collect()
    result = {
        "outcomes": dict(tally.counts.most_common()),
        "segments": segments,
        "seconds": seconds,
        "event_loops": loops[0],
        "breaker_opened": counter.opened,
        "fds_before": fds_before,
        "fds_after": open_fds(),
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_mb(),
        "versions": {"requests": requests.__version__, "httpx": httpx.__version__},
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
