"""Row 21 (issue 32, adaptive protection): a capacity-limited upstream, and what the adaptive settings make of it.

The upstream (``benchmarks/_capacity.py``, a process of its own on 127.0.0.1) works on C = 8 requests at once, each
for 200 ms; the rest queue there, so past C every answer takes longer and nothing is refused: the limit must be
learned from latency. Rows 21a-21c are the issue's fleet of 4 workers: four worker
processes (``python -m benchmarks._adaptive --worker``), each a registry calling through one httpx service with
``concurrency.scope: "fleet"``, sharing a redis-server the row starts on a free port (tests/redis_server.py). The
other rows' callers are threads of one process. A caller refused by the limit sleeps the refusal's ``retry_in`` (at
least 20 ms) and calls again.

21a   24 critical callers (3x C, 6 per worker), ``concurrency: {"algorithm": "gradient2", "initial": 20, "scope":
      "fleet"}``: how far the fleet's limit is from C over seconds 5-10 (the median of samples every 100 ms), in % of
      C (target <= 25 %). The detail shows the upstream's requests in flight (sampled there), and the same run with
      ``scope: "process"`` (the broken variant: each worker learns a limit of its own).
21b   the same run, its last 5 s: successful calls per second vs the ideal C / 200 ms (target >= 0.9).
21b2  the same window: the p99 latency of the admitted calls vs the p99 of one caller alone (target <= 2x).
21c   4 callers, one per worker (50 % of C; sheddable, as code outside a request is), scope fleet: the share of calls
      refused (target < 0.1 %).
21d   the upstream fails 90 % of requests (an immediate 503), 4 callers, ``throttle`` (k 2) and ``retry.tokens``
      with ``retry.total`` 3 (the breaker's ``fail_max`` out of reach, so that the breaker does not do the work):
      over seconds 5-10, requests that reached the upstream per call made (target <= 1.2x) ...
21d2  ... and of them the retries per call made (target <= 0.1x).
21e   24 callers, 12 in ``outbound.criticality("critical")`` and 12 sheddable, ``max_wait`` 2 s: the share of
      critical calls that succeeded (target >= 99 %).

Each row is measured once per round (three rounds at most: a round takes about 45 s).
"""

from __future__ import annotations

import contextvars
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import outbound
from benchmarks._capacity import CapacityProcess
from benchmarks._harness import Row, Target
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from benchmarks._harness import UpstreamProcess
    from benchmarks._scenarios import Settings

MEASUREMENT = 21
WORKERS = 4  # the fleet: worker processes sharing one Redis
ROW_KEYS = ("21a", "21b", "21b2", "21c", "21d", "21d2", "21e")
CAPACITY = 8
SERVICE = 0.2
IDEAL = CAPACITY / SERVICE  # calls per second the upstream can serve


def adaptive(up: UpstreamProcess, s: Settings) -> list[Row]:
    del up  # the row's own upstream: one with a capacity
    quick = s.rounds <= 2
    rounds = 1 if quick else min(s.rounds, 3)
    scale = 0.2 if quick else 1.0
    samples: dict[str, list[float]] = {key: [] for key in ROW_KEYS}
    details: dict[str, str] = {}
    with (
        CapacityProcess(CAPACITY, SERVICE) as server,
        tempfile.TemporaryDirectory(prefix="outbound-bench-redis") as directory,
        RedisServer(Path(directory)) as redis,
    ):
        for index in range(rounds):
            unloaded = _run(server, callers=1, seconds=3 * scale, settings={})["p99"]
            fleet = {"algorithm": "gradient2", "initial": 20, "scope": "fleet"}
            found = _fleet(server, redis.url, f"r{index}", 3 * CAPACITY, 10 * scale, fleet, critical=True)
            samples["21a"].append(100 * abs(found["limit"] - CAPACITY) / CAPACITY)
            samples["21b"].append(found["goodput"] / IDEAL)
            samples["21b2"].append(found["p99"] / unloaded)
            alone = {**fleet, "scope": "process"}  # the broken variant: each worker a limit of its own
            apart = _fleet(server, redis.url, f"a{index}", 3 * CAPACITY, 10 * scale, alone, critical=True)
            details["21a"] = (
                f"{WORKERS} worker processes, scope fleet: limit {found['limit']:.1f} over the last {5 * scale:g}s "
                f"of {10 * scale:g}s (C = {CAPACITY}), at the upstream {found['upstream']:.1f} in flight; "
                f"scope process instead: limits {apart['limits']}, {apart['upstream']:.1f} in flight there"
            )
            details["21b2"] = f"p99 admitted {1000 * found['p99']:.0f} ms, alone {1000 * unloaded:.0f} ms"
            light = _fleet(server, redis.url, f"l{index}", CAPACITY // 2, 5 * scale, {"scope": "fleet"})
            samples["21c"].append(100 * light["refused"] / max(1, light["calls"]))
            details["21c"] = (
                f"{light['refused']} of {light['calls']} calls refused ({WORKERS} workers, scope fleet); "
                f"limit {light['limit']:.1f}"
            )
            failing = _failing(server, seconds=10 * scale)
            samples["21d"].append(failing["arrivals"] / max(1, failing["calls"]))
            samples["21d2"].append(failing["retries"] / max(1, failing["calls"]))
            details["21d"] = (
                f"{failing['calls']} calls, {failing['throttled']} throttled, {failing['arrivals']} requests reached "
                f"the upstream ({failing['retries']} retries); without throttle and tokens: "
                f"{failing['bare_ratio']:.2f}x, of which retries {failing['bare_retries']:.2f}x"
            )
            mixed = _run(
                server,
                callers=3 * CAPACITY,
                seconds=10 * scale,
                settings={"concurrency": {"algorithm": "gradient2", "initial": 20, "max_wait": 2.0}},
                critical=3 * CAPACITY // 2,
            )
            samples["21e"].append(100 * mixed["critical_ok"] / max(1, mixed["critical_calls"]))
            details["21e"] = (
                f"{mixed['critical_ok']} of {mixed['critical_calls']} critical calls succeeded; sheddable: "
                f"{mixed['sheddable_ok']} of {mixed['sheddable_calls']}"
            )
    return [
        Row("21a", "adaptive limit vs C = 8, seconds 5-10 of 24 callers", "%", samples["21a"],
            Target("<=", 25.0, "<= 25 %"), details["21a"], digits=1),
        Row("21b", "goodput vs ideal (C / latency), overloaded 3x", "x", samples["21b"], Target(">=", 0.9, ">= 0.9"),
            f"ideal {IDEAL:.0f} calls/s", digits=2),
        Row("21b2", "p99 of admitted calls vs unloaded p99, overloaded 3x", "x", samples["21b2"],
            Target("<=", 2.0, "<= 2x"), details["21b2"], digits=2),
        Row("21c", "calls refused at 50 % load (4 sheddable callers)", "%", samples["21c"], Target("<", 0.1, "< 0.1 %"),
            details["21c"], digits=3),
        Row("21d", "upstream failing 90 %: requests at the upstream per call made", "x", samples["21d"],
            Target("<=", 1.2, "<= 1.2x"), details["21d"], digits=2),
        Row("21d2", "upstream failing 90 %: retries at the upstream per call made", "x", samples["21d2"],
            Target("<=", 0.1, "<= 0.1x"), details["21d"], digits=3),
        Row("21e", "overload 3x, 50/50 critical/sheddable: critical calls that succeeded", "%", samples["21e"],
            Target(">=", 99.0, ">= 99 %"), details["21e"], digits=2),
    ]  # fmt: skip


def _registry(url: str, settings: dict[str, Any]) -> outbound.Registry:
    service = {
        "base_url": url,
        "client": "httpx",
        "pool": {"max_connections": 64},
        "timeout": {"read": 10, "total": 20},
        **settings,
    }
    return outbound.Registry.from_mapping({"services": {"s": service}})


def _in_threads(count: int, critical: int, work: Callable[[bool], None]) -> list[threading.Thread]:
    threads = []
    for index in range(count):
        is_critical = index < critical
        context = contextvars.copy_context()
        threads.append(threading.Thread(target=context.run, args=(work, is_critical), daemon=True))
    for thread in threads:
        thread.start()
    return threads


def _run(
    server: CapacityProcess, *, callers: int, seconds: float, settings: dict[str, Any], critical: int = 0
) -> dict[str, Any]:
    """``callers`` closed-loop callers (the first ``critical`` of them critical) for ``seconds``; what the last half
    of the run saw, and the limit at its end."""
    registry = _registry(server.url, {"retry": {"total": 0}, **settings})
    client = registry.client("s")
    stop = threading.Event()
    started = time.monotonic()
    measured_from = started + seconds / 2
    lock = threading.Lock()
    tally = {"calls": 0, "refused": 0, "ok": 0, "critical_calls": 0, "critical_ok": 0}
    tally |= {"sheddable_calls": 0, "sheddable_ok": 0}
    latencies: list[float] = []

    def work(is_critical: bool) -> None:
        label = "critical" if is_critical else "sheddable"
        scope = outbound.criticality(label)
        with scope:
            while not stop.is_set():
                begun = time.monotonic()
                pause = 0.0
                try:
                    ok = client.get("work").status_code == 200
                except outbound.RejectedError as error:
                    ok, pause = False, max(0.02, error.retry_in)
                    refused = True
                else:
                    refused = False
                took = time.monotonic() - begun
                if begun >= measured_from:
                    with lock:
                        tally["calls"] += 1
                        tally["refused"] += refused
                        tally["ok"] += ok
                        tally[f"{label}_calls"] += 1
                        tally[f"{label}_ok"] += ok
                        if ok:
                            latencies.append(took)
                if pause:
                    stop.wait(pause)

    threads = _in_threads(callers, critical, work)
    stop.wait(seconds / 2)
    limits = []  # sampled every 100 ms over the measured half: a probe's halving is one moment, not the answer
    while time.monotonic() < started + seconds:
        limits.append(_limit(registry))
        stop.wait(0.1)
    limit = statistics.median(limits)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    registry.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
    return {**tally, "limit": limit, "goodput": tally["ok"] / (seconds / 2), "p99": p99}


def _limit(registry: outbound.Registry) -> float:
    for stage in registry["s"].policy.stages:
        if hasattr(stage, "limit") and type(stage).__name__ in ("ConcurrencyLimit", "FleetConcurrencyLimit"):
            return float(stage.limit)
    return float("nan")


def _fleet(
    server: CapacityProcess,
    redis_url: str,
    prefix: str,
    callers: int,
    seconds: float,
    concurrency: dict[str, Any],
    *,
    critical: bool = False,
) -> dict[str, Any]:
    """``callers`` closed-loop callers spread over ``WORKERS`` worker processes (``python -m benchmarks._adaptive
    --worker``), each with its own registry on the same Redis; their tallies summed, their limits sampled every
    100 ms over the last half (the median), and the upstream's requests in flight sampled by the upstream itself."""
    root = Path(__file__).resolve().parents[1]
    config = {
        "url": server.url,
        "redis": redis_url,
        "prefix": prefix,
        "seconds": seconds,
        "concurrency": concurrency,
        "critical": critical,
    }
    workers = []
    for index in range(WORKERS):
        share = callers // WORKERS + (index < callers % WORKERS)
        command = [sys.executable, "-m", "benchmarks._adaptive", "--worker", json.dumps({**config, "callers": share})]
        workers.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=root))
    started = time.monotonic()
    in_flight = []
    time.sleep(seconds / 2)
    while time.monotonic() < started + seconds:
        in_flight.append(server.control()["in_flight"])
        time.sleep(0.1)
    results = []
    for worker in workers:
        out, _ = worker.communicate(timeout=seconds + 60)
        results.append(json.loads(out.strip().splitlines()[-1]))
    limits = [result["limit"] for result in results]
    latencies = sorted(latency for result in results for latency in result["latencies"])
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
    calls = sum(result["calls"] for result in results)
    ok = sum(result["ok"] for result in results)
    return {
        "calls": calls,
        "ok": ok,
        "refused": sum(result["refused"] for result in results),
        "limit": statistics.median(limits),
        "limits": " ".join(f"{limit:.1f}" for limit in limits),
        "upstream": statistics.median(in_flight) if in_flight else float("nan"),
        "goodput": ok / (seconds / 2),
        "p99": p99,
    }


def _worker(config: dict[str, Any]) -> None:
    """One worker process of ``_fleet``: its callers for the run; prints its tallies as one JSON line."""
    state = {"backend": "redis", "url": config["redis"], "prefix": config["prefix"]}
    registry = outbound.Registry.from_mapping(
        {
            "services": {
                "s": {
                    "base_url": config["url"],
                    "client": "httpx",
                    "pool": {"max_connections": 64},
                    "timeout": {"read": 10, "total": 20},
                    "retry": {"total": 0},
                    "concurrency": config["concurrency"],
                }
            },
            "state": state,
        }
    )
    client = registry.client("s")
    seconds = config["seconds"]
    stop = threading.Event()
    started = time.monotonic()
    measured_from = started + seconds / 2
    lock = threading.Lock()
    tally = {"calls": 0, "refused": 0, "ok": 0}
    latencies: list[float] = []
    label = "critical" if config["critical"] else "sheddable"

    def work(_: bool) -> None:
        with outbound.criticality(label):
            while not stop.is_set():
                begun = time.monotonic()
                pause = 0.0
                try:
                    ok = client.get("work").status_code == 200
                except outbound.RejectedError as error:
                    ok, pause, refused = False, max(0.02, error.retry_in), True
                else:
                    refused = False
                if begun >= measured_from:
                    with lock:
                        tally["calls"] += 1
                        tally["refused"] += refused
                        tally["ok"] += ok
                        if ok:
                            latencies.append(time.monotonic() - begun)
                if pause:
                    stop.wait(pause)

    threads = _in_threads(config["callers"], 0, work)
    stop.wait(seconds / 2)
    limits = []
    while time.monotonic() < started + seconds:
        limits.append(_limit(registry))
        stop.wait(0.1)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    registry.close()
    print(json.dumps({**tally, "limit": statistics.median(limits), "latencies": latencies}))


def _failing(server: CapacityProcess, *, seconds: float) -> dict[str, Any]:
    """The upstream fails 90 %: calls, throttled calls and the requests that reached it over the second half."""
    adaptive = {"throttle": {"k": 2.0}, "retry": {**_RETRY, "tokens": {"max": 10, "ratio": 0.1}}}
    measured = _failing_run(server, seconds, adaptive)
    bare = _failing_run(server, seconds, {"retry": _RETRY})
    measured["bare_ratio"] = bare["arrivals"] / max(1, bare["calls"])
    measured["bare_retries"] = bare["retries"] / max(1, bare["calls"])
    return measured


_RETRY = {"total": 3, "backoff_factor": 0.01, "backoff_jitter": 0.01}


def _failing_run(server: CapacityProcess, seconds: float, settings: dict[str, Any]) -> dict[str, Any]:
    server.control(reset=1, fail=0.9)
    registry = _registry(server.url, {"breaker": {"fail_max": 1_000_000}, **settings})
    client = registry.client("s")
    stop = threading.Event()
    measuring = threading.Event()
    lock = threading.Lock()
    tally = {"calls": 0, "throttled": 0}

    def work(is_critical: bool) -> None:
        while not stop.is_set():
            throttled = False
            try:
                client.get("work")
            except outbound.ThrottledError:
                throttled = True
            if measuring.is_set():
                with lock:
                    tally["calls"] += 1
                    tally["throttled"] += throttled
            stop.wait(0.02)

    threads = _in_threads(CAPACITY // 2, 0, work)
    stop.wait(seconds / 2)
    before = server.control()["arrivals"]
    measuring.set()
    stop.wait(seconds / 2)
    measuring.clear()
    arrivals = server.control()["arrivals"] - before
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    registry.close()
    server.control(reset=1)
    first_attempts = tally["calls"] - tally["throttled"]
    return {**tally, "arrivals": arrivals, "retries": max(0, arrivals - first_attempts)}


def summary(rows: list[Row]) -> str:
    return "; ".join(f"{row.key} {row.value_text()} ({row.verdict})" for row in rows)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(json.loads(sys.argv[2]))
elif __name__ == "__main__":
    from benchmarks._scenarios import FULL, QUICK

    result = adaptive(None, QUICK if "--quick" in sys.argv else FULL)  # type: ignore[arg-type]
    for row in result:
        print(
            row.key, row.value_text(), row.verdict, "-", row.title, "|", row.detail, "|", statistics.median(row.samples)
        )
