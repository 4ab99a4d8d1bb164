"""Row 10 (issue 11, fleet mode): what sharing state through Redis costs a call, and what it spares a dead upstream.

10a: sequential GETs through a service whose breaker is shared through Redis, against the same service with the
     default in-process state, alternated in slices as row 1: a call while the breaker is closed makes no Redis round
     trip, so the ratio should be 1 within noise (target >= 0.98).
10b/10c: W = 4 worker processes, each calling every 20 ms, ``fail_max`` 5, no retries; the upstream turns to 503;
     the requests it receives from that moment until every worker has refused five calls in a row. Alone, each
     worker must discover the failure itself (about W x fail_max); with Redis the fleet counts failures together and
     an opening reaches every worker at once (target <= fail_max + W: the failures, and at most one call in flight
     per worker when the breaker opens).

10e-10i: the fleet in production (issue 26): ``_fleetprod.py``.

A redis-server of the run's own (tests/redis_server.py) on a free port; never the machine's shared one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import outbound
from benchmarks import _fleetprod
from benchmarks._harness import ROOT, Row, Target, UpstreamProcess, alternate, die_with_parent, interleave, ratios
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from benchmarks._scenarios import Settings

MEASUREMENT = 10
ROW_KEYS = ("10a", "10b", "10c", *_fleetprod.ROW_KEYS)
WORKERS = 4
FAIL_MAX = 5
CALL_INTERVAL = 0.02
REFUSALS = 5  # a worker stops once it refused this many calls in a row
WORKER_SECONDS = 10.0  # and in any case after this long

_WORKER = f"""
import json, sys, time, outbound
settings = json.loads(sys.argv[1])
registry = outbound.Registry.from_mapping(settings)
session = registry.session("api")
session.get("ok")
print("ready", flush=True)
sys.stdin.readline()
refused, deadline = 0, time.monotonic() + {WORKER_SECONDS}
while refused < {REFUSALS} and time.monotonic() < deadline:
    try:
        session.get("dead")
        refused = 0
    except outbound.CircuitOpenError:
        refused += 1
    time.sleep({CALL_INTERVAL})
print(json.dumps({{"refused": refused}}), flush=True)
registry.close()
"""


def fleet(up: UpstreamProcess, s: Settings) -> list[Row]:
    from benchmarks._scenarios import expect_ok, overhead_detail, service, sliced, warm_up

    with tempfile.TemporaryDirectory(prefix="outbound-bench-redis") as directory, RedisServer(Path(directory)) as redis:
        shared_state = {"backend": "redis", "url": redis.url, "prefix": f"bench-{uuid.uuid4().hex[:8]}"}
        memory = outbound.Registry.from_mapping({"services": {"api": service(up.url)}})
        shared = outbound.Registry.from_mapping({"services": {"api": service(up.url)}, "state": shared_state})
        try:

            def through_redis_backend() -> None:
                expect_ok(shared.session("api").get("ok"))

            def through_memory_backend() -> None:
                expect_ok(memory.session("api").get("ok"))

            warm_up(s.warmup_calls, through_redis_backend, through_memory_backend)
            runs = interleave(
                [sliced(s, through_redis_backend), sliced(s, through_memory_backend)], rounds=s.rounds, slices=s.slices
            )
        finally:
            memory.close()
            shared.close()

        up.set_mode("failing", status=503)
        try:
            alone, together = alternate(
                [lambda: _dead_upstream(up, None), lambda: _dead_upstream(up, redis.url)], max(2, s.rounds // 2)
            )
        finally:
            up.reset()
        production = _fleetprod.production(up, s, redis.url)
    return [
        Row(
            "10a",
            "sequential GETs, requests: fleet backend (Redis) / memory backend",
            "x",
            ratios(*runs),
            Target(">=", 0.98, ">= 0.98"),
            overhead_detail(runs) + "; a call while the breaker is closed reads local memory only",
        ),
        Row(
            "10b",
            f"dead upstream, {WORKERS} worker processes, fail_max {FAIL_MAX}, memory backend: upstream requests until "
            "every worker refuses",
            "req",
            alone,
            None,
            "each worker discovers the failure by itself",
            digits=1,
        ),
        Row(
            "10c",
            f"dead upstream, {WORKERS} worker processes, fail_max {FAIL_MAX}, Redis backend: upstream requests until "
            "every worker refuses",
            "req",
            together,
            Target("<=", FAIL_MAX + WORKERS, f"<= fail_max + W = {FAIL_MAX + WORKERS}"),
            f"the fleet counts failures together and publishes the opening; each worker calls every "
            f"{CALL_INTERVAL * 1000:.0f} ms",
            digits=1,
        ),
        *production,
    ]


def _dead_upstream(up: UpstreamProcess, redis_url: str | None, *, cluster: bool = False) -> float:
    """Upstream requests to the failing path from the moment the workers start until every one refuses."""
    settings: dict[str, Any] = {
        "services": {"api": {"base_url": up.url, "retry": None, "breaker": {"fail_max": FAIL_MAX, "reset_timeout": 60}}}
    }
    if redis_url is not None:
        settings["state"] = {
            "backend": "redis",
            "url": redis_url,
            "cluster": cluster,
            "prefix": f"bench-{uuid.uuid4().hex[:8]}",
        }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, json.dumps(settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # each worker logs the breaker opening: not the benchmark's output
            text=True,
            cwd=ROOT,
            env=env,
            preexec_fn=die_with_parent(),
        )
        for _ in range(WORKERS)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                raise RuntimeError("a fleet benchmark worker did not start")
        before = _dead_hits(up)
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            output = worker.communicate(timeout=WORKER_SECONDS + 30)[0].strip().splitlines()[-1]
            if json.loads(output)["refused"] < REFUSALS:
                raise RuntimeError("a worker never saw its breaker open")
        return float(_dead_hits(up) - before)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=5)


def _dead_hits(up: UpstreamProcess) -> int:
    return int(up.control("GET", "stats")["hits_by_path"].get("/dead", 0))
