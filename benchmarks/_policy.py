"""Row 11 (issue 13, the richer policy): what the new stages cost a call, and whether a rate limit holds its rate.

11a: sequential GETs through a service whose breaker judges a failure-rate window (``mode: "rate"``, a count window
     of 100) against the same service with the default consecutive-failures breaker, in back-to-back pairs
     (``paired_difference``, as row 16; target >= 0.99: one short lock per call).
11b: a process-scope rate limit of 200/second, 16 threads calling as fast as they can for 5 s (each may wait up to
     1 s for a permit): the permits granted in those 5 s against the 1,000 the limit allows, as a deviation in
     percent (target <= 2 %).
11c: sequential GETs with a fleet-scope rate limit (permits leased in batches, against a redis-server the run starts)
     against the same service with the default breaker, one call of each in turn as row 10e (reported; 10e is the
     target).
11d: sequential GETs with a bulkhead (``max_in_flight`` 100) against none (reported).
11e: sequential GETs with a process-scope rate limit (1,000,000/second: never reached) against none, in back-to-back
     pairs (``paired_difference``): what a permit costs a call (reported); beside it, a permit taken from the window
     alone, empty and holding 300,000 times (a daily quota in use: O(1), the same).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import requests

import outbound
from benchmarks._harness import (
    Row,
    Target,
    UpstreamProcess,
    interleave,
    paired_difference,
    paired_throughput,
    per_call_us,
    ratios,
)
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from benchmarks._scenarios import Settings

MEASUREMENT = 11
ROW_KEYS = ("11a", "11b", "11c", "11d", "11e")
RATE = 200
RATE_THREADS = 16
RATE_SECONDS = 5.0


def policy(up: UpstreamProcess, s: Settings) -> list[Row]:
    from benchmarks._scenarios import expect_ok, overhead_detail, pair_bounds, service, sliced, warm_up

    rate_breaker = {"mode": "rate", "window": {"type": "count", "size": 100}, "minimum_calls": 20}
    with tempfile.TemporaryDirectory(prefix="outbound-bench-redis") as directory, RedisServer(Path(directory)) as redis:
        state = {"backend": "redis", "url": redis.url, "prefix": f"bench-{uuid.uuid4().hex[:8]}"}
        fleet_limit = {"rate": "1000000/second", "scope": "fleet"}
        registry = outbound.Registry.from_mapping(
            {
                "services": {
                    "consecutive": service(up.url),
                    "rate": service(up.url, breaker=rate_breaker),
                    "fleet_limited": service(up.url, rate_limit=fleet_limit, shared=False),
                    "bulkhead": service(up.url, bulkhead={"max_in_flight": 100}),
                    "process_limited": service(up.url, rate_limit={"rate": "1000000/second"}),
                },
                "state": state,
            }
        )
        try:
            calls = {name: _caller(registry, name, expect_ok) for name in registry.services}
            warm_up(s.warmup_calls, *calls.values())
            sequence = {"rounds": s.rounds, "slices": s.slices}
            pairs = pair_bounds(s)
            fleet_runs: list[list[float]] = [[], []]
            for _ in range(s.rounds):  # one call of each in turn: as row 10e (slices would let the lease expire)
                for run, throughput in zip(
                    fleet_runs, paired_throughput(calls["fleet_limited"], calls["consecutive"], **pairs), strict=True
                ):
                    run.append(throughput)
            bulkhead_runs = interleave([sliced(s, calls["bulkhead"]), sliced(s, calls["consecutive"])], **sequence)
            # A lock a call: a difference of a microsecond or two, timed in back-to-back pairs as row 16 (slices
            # scattered this ratio by +-2 % on a loaded VM).
            rate_costs = [paired_difference(calls["rate"], calls["consecutive"], **pairs) for _ in range(s.rounds)]
            permit_costs = [
                paired_difference(calls["process_limited"], calls["consecutive"], **pairs) for _ in range(s.rounds)
            ]
        finally:
            registry.close()
    seconds = RATE_SECONDS if s.rounds > 2 else 0.5
    deviations = [_rate_limit_deviation(up, seconds) for _ in range(max(1, s.rounds // 3))]
    return [
        Row(
            "11a",
            'sequential GETs, requests: breaker mode "rate" (count window 100) / "consecutive"',
            "x",
            [plain / (plain + added) for added, plain in rate_costs],
            Target(">=", 0.99, ">= 0.99"),
            f"the rate window adds {statistics.median(added for added, _ in rate_costs):.2f} us to a call of "
            f"{statistics.median(plain for _, plain in rate_costs):.0f} us (median of back-to-back pairs)",
        ),
        Row(
            "11b",
            f"process rate limit {RATE}/second, {RATE_THREADS} threads for {RATE_SECONDS:g} s: permits granted vs "
            "the limit",
            "% off",
            deviations,
            Target("<=", 2.0, "within 2 %"),
            f"{RATE * RATE_SECONDS:.0f} permits allowed in the window (a moving window: {RATE} at once, then one "
            "each time one turns a second old); callers wait up to 1 s for a permit",
            digits=2,
        ),
        Row(
            "11c",
            "sequential GETs, requests: fleet rate limit (leased permits, as 10e) / no limit",
            "x",
            ratios(*fleet_runs),
            None,
            overhead_detail(fleet_runs) + "; one Redis script per lease of up to 1,000 permits",
        ),
        Row(
            "11d",
            "sequential GETs, requests: bulkhead (max_in_flight 100) / none",
            "x",
            ratios(*bulkhead_runs),
            None,
            overhead_detail(bulkhead_runs),
        ),
        Row(
            "11e",
            "sequential GETs, requests: a process rate limit (1,000,000/second) adds per call",
            "us",
            [added for added, _ in permit_costs],
            None,
            f"a call without it takes {statistics.median(plain for _, plain in permit_costs):.0f} us (median of "
            f"back-to-back pairs); a permit from the window alone {_window_permit_us(0):.2f} us while it fills; full, "
            f"each take letting the oldest go, {_window_permit_us(1_000):.2f} us with 1,000 permits a day and "
            f"{_window_permit_us(300_000):.2f} us with 300,000",
            digits=2,
        ),
    ]


def _window_permit_us(held: int) -> float:
    """What taking a permit costs a window of ``held`` permits a day, in microseconds (the median of 7 loops of
    20,000): with ``held`` 0 the window never fills (a permit is appended), otherwise it is full, each permit one
    day's share later than the one before, so every take compares with the oldest time, lets it go and appends."""
    from outbound._ratelimit import _MovingWindow

    step = 86_400.0 / max(held, 1) * (1 + 1e-9)  # a hair over a day's share: sums of floats never fall short
    now = [0.0]

    def clock() -> float:
        now[0] += step
        return now[0]

    window = _MovingWindow(held or 1_000_000, 86_400.0, clock)
    for _ in range(held):
        window.take()
    if held and not (len(window._taken) == held and window.take() is None and len(window._taken) == held):
        raise RuntimeError("the window did not stay full while taking permits")
    return per_call_us(window.take, calls=20_000, runs=7)


def _caller(
    registry: outbound.Registry, name: str, expect_ok: Callable[[requests.Response], None]
) -> Callable[[], None]:
    session = registry.session(name)

    def call() -> None:
        expect_ok(session.get("ok"))

    return call


def _rate_limit_deviation(up: UpstreamProcess, seconds: float) -> float:
    """Percent between the permits granted in ``seconds`` and the ``RATE * seconds`` the limit allows."""
    registry = outbound.Registry.from_mapping(
        {"services": {"api": {"base_url": up.url, "rate_limit": {"rate": f"{RATE}/second", "max_wait": 1.0}}}}
    )
    session = registry.session("api")
    session.get("ok")  # open a connection before the clock starts...
    registry.reset()  # ...and give its permit back
    granted: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(RATE_THREADS + 1)
    stop = [0.0]

    def worker() -> None:
        barrier.wait()
        while time.monotonic() < stop[0]:
            try:
                session.get("ok")
            except outbound.RateLimitedError:
                continue
            answered = time.monotonic()  # its permit came a few hundred microseconds earlier
            with lock:
                granted.append(answered)

    threads = [threading.Thread(target=worker) for _ in range(RATE_THREADS)]
    for thread in threads:
        thread.start()
    start = time.monotonic()
    stop[0] = start + seconds + 1.0  # run past the window, so its end is measured under full load
    barrier.wait()
    for thread in threads:
        thread.join()
    registry.close()
    in_window = sum(1 for at in granted if at < start + seconds)
    return abs(in_window / (RATE * seconds) - 1) * 100
