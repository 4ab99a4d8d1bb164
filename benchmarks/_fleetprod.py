"""Rows 10e-10i (issue 26, fleet mode in production), run by row 10 (``_fleet.py``) against its redis-server.

10e: sequential GETs with a fleet-scope rate limit (1,000,000/second: never reached) against the same service
     without a limit, one call of each in turn (``paired_throughput``: the totals of every call, the lease thread's
     work included): permits are leased in batches, so a call makes no Redis round trip (target >= 0.95; one script
     per call measured 0.74 before).
10f: W = 4 worker processes each offering half the limit (twice the limit together) of a fleet limit of 100/second
     for 3 s: the most requests the upstream received in any 1 s window, over the limit (target <= 1.03).
10g/10h: one registry with 5 services, its published stats copied under 1,000 made-up worker ids (a fleet of 1,000
     live workers as Redis holds it): ``registry.health()``'s time (median of 50) and the bytes Redis sent for one
     (targets <= 5 ms, <= 20 KB).
10j: row 10c on a 3-node Redis Cluster the run starts (``tests/redis_topologies.py``): W = 4 worker processes,
     ``fail_max`` 5, a dead upstream: the requests it receives until every worker refuses (target <= fail_max + W).
10k: a primary behind 3 Sentinels killed while W = 4 worker processes call every 20 ms
     (``tests/fleet_failover.py``): calls failed because of Redis, plus workers that missed the isolation an operator
     decided after the failover (target 0).
10i: Redis commands per second caused by one idle worker (5 services, nothing called), counted by Redis itself
     (``INFO commandstats``: every command a script runs counts), over 61 syncs at sync_interval 0.1 s, scaled to
     the default sync_interval of 1 s (target <= 2).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

import outbound
from benchmarks._harness import Row, Target, UpstreamProcess, paired_throughput, ratios
from tests.fleet_failover import through_a_failover
from tests.fleet_limit import busiest, run_workers
from tests.redis_topologies import Cluster, SentinelGroup

if TYPE_CHECKING:
    from benchmarks._scenarios import Settings

ROW_KEYS = ("10e", "10f", "10g", "10h", "10i", "10j", "10k")
LIMIT = 100
WORKERS = 4
SIMULATED = 1000
SERVICES = 5


def production(up: UpstreamProcess, s: Settings, redis_url: str) -> list[Row]:
    from benchmarks._scenarios import expect_ok, overhead_detail, pair_bounds, service, warm_up

    state = {"backend": "redis", "url": redis_url, "prefix": f"bench-{uuid.uuid4().hex[:8]}"}
    fleet_limit = {"rate": "1000000/second", "scope": "fleet"}
    registry = outbound.Registry.from_mapping(
        {
            "services": {"limited": service(up.url, rate_limit=fleet_limit), "plain": service(up.url)},
            "state": state,
        }
    )
    try:
        made = [0]

        def limited() -> None:
            expect_ok(registry.session("limited").get("ok"))
            made[0] += 1

        def plain() -> None:
            expect_ok(registry.session("plain").get("ok"))

        warm_up(s.warmup_calls, limited, plain)
        leases_before, made[0] = _leases(registry), 0
        runs: list[list[float]] = [[], []]
        for _ in range(s.rounds):
            # One call of each in turn, not slices: a slice of 50 ms without a call of the limited service would
            # let its lease (50 ms here) expire at every slice, which is a caller with pauses, not a sequential one.
            for run, throughput in zip(runs, paired_throughput(limited, plain, **pair_bounds(s)), strict=True):
                run.append(throughput)
        leases = _leases(registry) - leases_before
    finally:
        registry.close()
    rounds = max(1, s.rounds // 3)
    windows = [_worst_window(up, redis_url, 3.0 if s.rounds > 2 else 1.5) for _ in range(rounds)]
    millis, kilobytes = _large_fleet_health(up, redis_url, 50 if s.rounds > 2 else 10)
    idle = [_idle_commands(up, redis_url) for _ in range(max(1, s.rounds // 4))]
    from benchmarks._fleet import FAIL_MAX, WORKERS, _dead_upstream

    up.set_mode("failing", status=503)
    try:
        with tempfile.TemporaryDirectory(prefix="outbound-bench-cluster") as directory, Cluster(Path(directory)) as c:
            on_cluster = [_dead_upstream(up, c.url, cluster=True) for _ in range(max(2, s.rounds // 2))]
    finally:
        up.reset()
    failover = _sentinel_failover(up)
    return [
        Row(
            "10e",
            "sequential GETs, requests: fleet rate limit (leased permits) / no limit",
            "x",
            ratios(*runs),
            Target(">=", 0.95, ">= 0.95"),
            overhead_detail(runs) + f"; {leases:,} leases (a Redis script each, asked for ahead by the lease thread) "
            f"for {made[0]:,} calls (a lease lives 50 ms, of up to 1,000 permits)",
        ),
        Row(
            "10f",
            f"fleet rate limit {LIMIT}/second, {WORKERS} worker processes offering twice it: most requests at the "
            "upstream in any 1 s window / limit",
            "x",
            windows,
            Target("<=", 1.03, "<= 1.03"),
            "arrival times recorded by the upstream; calls refused at once (max_wait 0)",
        ),
        Row(
            "10g",
            f"registry.health() with {SIMULATED} live workers (simulated), {SERVICES} services",
            "ms",
            millis,
            Target("<=", 5.0, "<= 5 ms"),
            "one merged record read (rewritten once per sync_interval by one process), not every worker's stats",
            digits=2,
        ),
        Row(
            "10h",
            f"bytes Redis sends for one registry.health() with {SIMULATED} live workers (simulated)",
            "KB",
            kilobytes,
            Target("<=", 20.0, "<= 20 KB"),
            "INFO stats total_net_output_bytes around one report",
            digits=1,
        ),
        Row(
            "10i",
            f"Redis commands per second from one idle worker ({SERVICES} services, sync_interval 1 s)",
            "cmd/s",
            idle,
            Target("<=", 2.0, "<= 2"),
            "INFO commandstats (commands inside scripts included), 61 syncs at 0.1 s scaled to 1 s",
            digits=2,
        ),
        Row(
            "10j",
            f"dead upstream, {WORKERS} worker processes, fail_max {FAIL_MAX}, on a 3-node Redis Cluster: upstream "
            "requests until every worker refuses",
            "req",
            on_cluster,
            Target("<=", FAIL_MAX + WORKERS, f"<= fail_max + W = {FAIL_MAX + WORKERS}"),
            "state.cluster: true, every key under the hash tag {prefix}; as 10c otherwise",
            digits=1,
        ),
        Row(
            "10k",
            f"primary killed under load (Sentinel), {WORKERS} worker processes: calls failed because of Redis + "
            "workers that missed a decision made after the failover",
            "n",
            [float(failover[0] + failover[1])],
            Target("<=", 0, "0 / 0"),
            f"failed {failover[0]}, decisions missed {failover[1]}; one primary, one replica, three Sentinels "
            "(down-after-milliseconds 1000)",
            digits=0,
        ),
    ]


def _worst_window(up: UpstreamProcess, redis_url: str, seconds: float) -> float:
    settings: dict[str, Any] = {
        "services": {
            "api": {
                "base_url": up.url,
                "retry": None,
                "rate_limit": {"rate": f"{LIMIT}/second", "scope": "fleet", "max_wait": 0},
            }
        },
        "state": {"backend": "redis", "url": redis_url, "prefix": f"bench-{uuid.uuid4().hex[:8]}"},
    }
    start = time.monotonic()
    run_workers(settings, workers=WORKERS, seconds=seconds, interval=WORKERS / (2 * LIMIT))
    return busiest(up.arrived("/limited", since=start), 1.0) / LIMIT


def _mapping(up: UpstreamProcess, redis_url: str, prefix: str, sync_interval: float) -> dict[str, Any]:
    return {
        "services": {f"s{i}": {"base_url": up.url} for i in range(SERVICES)},
        "state": {"backend": "redis", "url": redis_url, "prefix": prefix, "sync_interval": sync_interval},
    }


def _large_fleet_health(up: UpstreamProcess, redis_url: str, reports: int) -> tuple[list[float], list[float]]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    registry = outbound.Registry.from_mapping(_mapping(up, redis_url, prefix, 0.5))
    try:
        for i in range(SERVICES):
            registry.session(f"s{i}").get("ok")
        state = registry._state  # type: ignore[attr-defined]
        state._sync()
        record = client.get(f"{prefix}:stats:{state.worker}")
        pipeline = client.pipeline(transaction=False)
        for n in range(SIMULATED):
            fake = f"fake-{n}:{n + 1}:{n:06x}"
            pipeline.set(f"{prefix}:stats:{fake}", record, px=600_000)
            pipeline.zadd(f"{prefix}:workers", {fake: int(time.time() * 1000)})
        pipeline.execute()
        registry.health()  # the first report of a fleet without a merged record merges it
        millis, kilobytes = [], []
        for _ in range(reports):
            start = time.perf_counter()
            report = registry.health()
            millis.append((time.perf_counter() - start) * 1000)
            if report["workers"] < SIMULATED:
                raise RuntimeError(f"the simulated fleet has {report['workers']} workers")
            time.sleep(0.02)
        for _ in range(5):
            before = client.info("stats")["total_net_output_bytes"]
            registry.health()
            kilobytes.append((client.info("stats")["total_net_output_bytes"] - before) / 1000)
        return [statistics.median(millis)], [statistics.median(kilobytes)]
    finally:
        registry.close()
        client.close()


def _leases(registry: outbound.Registry) -> int:
    # Leases the limited service asked for so far (each one Redis script): its lease's sequence number.
    limit = registry["limited"].policy.rate_limit
    fleet = limit._fleet if limit is not None else None
    assert fleet is not None
    return fleet._seq


def _idle_commands(up: UpstreamProcess, redis_url: str) -> float:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    interval = 0.1
    registry = outbound.Registry.from_mapping(_mapping(up, redis_url, f"bench-{uuid.uuid4().hex[:8]}", interval))
    try:
        for i in range(SERVICES):
            registry.session(f"s{i}").get("ok")
        time.sleep(1.5)  # its calls published and out of the recent window's changes

        def commands() -> int:
            return sum(int(entry["calls"]) for entry in client.info("commandstats").values())

        before, start = commands(), time.monotonic()
        time.sleep(61 * interval)
        used, elapsed = commands() - before - 1, time.monotonic() - start  # the first INFO counts itself
        return used / (elapsed / interval)  # per sync: per second at sync_interval 1 s
    finally:
        registry.close()
        client.close()


def _sentinel_failover(up: UpstreamProcess) -> tuple[int, int]:
    with (
        tempfile.TemporaryDirectory(prefix="outbound-bench-sentinel") as directory,
        SentinelGroup(Path(directory)) as group,
    ):
        settings = {
            "services": {"api": {"base_url": up.url, "retry": None}},
            "state": {"backend": "redis", "url": group.url, "prefix": f"bench-{uuid.uuid4().hex[:8]}", "timeout": 0.2,
                      "sync_interval": 0.2},
        }  # fmt: skip

        def fail_over() -> None:
            old = group.primary_port()
            group.kill(old)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if group.primary_port() != old:
                        return
                except (redis.RedisError, OSError, TypeError):
                    pass
                time.sleep(0.1)
            raise RuntimeError("the Sentinels did not fail over within 30 s")

        failed, missed, _ = through_a_failover(settings, fail_over)
        return failed, missed
