"""Row 22 (issue 27, the cache above the policy): what a stored response buys when the upstream cannot answer.

22a: the upstream dead (its breaker open, the stored response past its freshness but within ``stale_if_error``):
     milliseconds per stale answer through the requests session and the httpx client (the worse of the two per
     round), and the upstream requests those answers caused (must be 0: the sample becomes 1e9 ms otherwise).
22b: a fresh cache hit against a bare ``requests.Session`` GET of the same path, alternated in slices as row 1:
     how many times faster the hit is (target >= 5x).
22c: 100 concurrent stale hits (``stale_while_revalidate``) from 4 worker processes, 25 each on 5 threads, sharing
     a Redis storage of the run's own: upstream revalidations (target exactly 1, the fleet-wide lock).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

import outbound
from benchmarks._harness import ROOT, Row, Target, UpstreamProcess, die_with_parent, interleave, ratios
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from benchmarks._scenarios import Settings

MEASUREMENT = 22
ROW_KEYS = ("22a", "22b", "22c")
WORKERS = 4
THREADS = 5
CALLS_PER_THREAD = 5
STALE_CALLS = 200
FAILED = 1e9  # a 22a sample when a stale answer reached the network: the row fails, and says why

_WORKER = """
import json, sys, threading, time
import outbound
settings, start_at = json.loads(sys.argv[1]), float(sys.argv[2])
CALLS, THREADS = int(sys.argv[4]), int(sys.argv[5])
registry = outbound.Registry.from_mapping(settings)
session = registry.session("api")
answers = []
def run():
    time.sleep(max(0.0, start_at - time.time()))
    for _ in range(CALLS):
        answers.append(session.get(sys.argv[3]).status_code)
threads = [threading.Thread(target=run) for _ in range(THREADS)]
for thread in threads: thread.start()
for thread in threads: thread.join(60)
time.sleep(1.0)  # a refresh this worker started has finished
print(json.dumps({"answers": len(answers), "ok": answers.count(200),
                  "revalidations": registry["api"].policy.cache.snapshot()["revalidations"]}))
registry.close()
"""


def cache(up: UpstreamProcess, s: Settings) -> list[Row]:
    stale_ms: list[float] = []
    network: list[int] = []
    for _ in range(s.rounds):
        milliseconds, calls = _stale_answers(up, min(STALE_CALLS, max(20, s.slice_calls)))
        stale_ms.append(milliseconds if calls == 0 else FAILED)
        network.append(calls)
    hit, bare = _hit_against_bare(up, s)
    revalidations = [float(_fleet_revalidations(up)) for _ in range(max(1, min(3, s.rounds // 2)))]
    return [
        Row(
            "22a",
            "upstream dead (breaker open), stored response within stale_if_error: one stale answer",
            "ms",
            stale_ms,
            Target("<=", 5.0, "<= 5 ms, 0 network calls"),
            f"requests session and httpx client, the worse per round; upstream requests during the stale answers: "
            f"{network}",
            digits=3,
        ),
        Row(
            "22b",
            "fresh cache hit (requests session) / bare requests.Session GET of the same path",
            "x",
            ratios(hit, bare),
            Target(">=", 5.0, ">= 5x"),
            f"hits {1e6 / _median(hit):.0f} us per call, bare calls {1e6 / _median(bare):.0f} us",
            digits=1,
        ),
        Row(
            "22c",
            f"{WORKERS * THREADS * CALLS_PER_THREAD} concurrent stale hits, {WORKERS} worker processes, Redis storage: "
            "upstream revalidations",
            "req",
            revalidations,
            Target("==", 1.0, "exactly 1"),
            "stale_while_revalidate: every hit answers at once; one refresh per key across the fleet (SET NX PX)",
            digits=0,
        ),
    ]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _hits(up: UpstreamProcess, path: str) -> int:
    return int(up.control("GET", "stats")["hits_by_path"].get(path, 0))


def _stale_answers(up: UpstreamProcess, calls: int) -> tuple[float, int]:
    """Median ms per stale answer (the worse client) and how many reached the upstream."""
    service = {
        "base_url": up.url,
        "retry": {"total": 0},
        "breaker": {"fail_max": 2, "reset_timeout": 600},
        "cache": {"ttl": 0.5, "stale_if_error": 3600},
    }
    registry = outbound.Registry.from_mapping(
        {"services": {"requests": {**service, "client": "requests"}, "httpx": {**service, "client": "httpx"}}}
    )
    path = f"/stale-{uuid.uuid4().hex[:8]}"
    try:
        getters = [registry.session("requests").get, registry.client("httpx").get]
        for get in getters:
            if get(path[1:]).status_code != 200:
                raise RuntimeError("the upstream did not answer the first call")
            for _ in range(2):
                get("status/503")
        time.sleep(0.6)  # past freshness: every answer below is stale
        before = _hits(up, path)
        worst = 0.0
        for get in getters:
            samples = []
            for _ in range(calls):
                started = time.perf_counter()
                answer = get(path[1:])
                samples.append((time.perf_counter() - started) * 1000.0)
                if answer.status_code != 200 or answer.headers.get("Age") is None:
                    raise RuntimeError("a stale answer was not the stored 200")
            worst = max(worst, _median(samples))
        return worst, _hits(up, path) - before
    finally:
        registry.close()


def _hit_against_bare(up: UpstreamProcess, s: Settings) -> tuple[list[float], list[float]]:
    from benchmarks._scenarios import sliced, warm_up

    registry = outbound.Registry.from_mapping({"services": {"api": {"base_url": up.url, "cache": {"ttl": 3600}}}})
    bare = requests.Session()
    url = up.url + "ok"
    try:
        session = registry.session("api")

        def hit() -> None:
            if session.get("ok").status_code != 200:
                raise RuntimeError("expected 200")

        def plain() -> None:
            if bare.get(url).status_code != 200:
                raise RuntimeError("expected 200")

        warm_up(s.warmup_calls, hit, plain)
        hits, bares = interleave([sliced(s, hit), sliced(s, plain)], rounds=s.rounds, slices=s.slices)
        return hits, bares
    finally:
        registry.close()
        bare.close()


def _fleet_revalidations(up: UpstreamProcess) -> int:
    """Upstream requests made by the 4 workers' stale hits (the revalidations)."""
    path = f"/swr-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="outbound-bench-redis") as directory, RedisServer(Path(directory)) as redis:
        settings: dict[str, Any] = {
            "services": {
                "api": {
                    "base_url": up.url,
                    "cache": {"storage": "redis", "url": redis.url, "ttl": 0.5, "stale_while_revalidate": 600},
                }
            },
            "state": {"timeout": 2.0},  # the cache's Redis commands may wait this long on a loaded machine
        }
        primer = outbound.Registry.from_mapping(settings)
        try:
            if primer.session("api").get(path[1:]).status_code != 200:
                raise RuntimeError("the upstream did not answer the first call")
        finally:
            primer.close()
        time.sleep(0.6)  # stale from now on, for 600 s
        before = _hits(up, path)
        start_at = time.time() + 3.0  # every worker imported and built before the first hit
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _WORKER,
                    json.dumps(settings),
                    str(start_at),
                    path[1:],
                    str(CALLS_PER_THREAD),
                    str(THREADS),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
                env=env,
                preexec_fn=die_with_parent(),
            )
            for _ in range(WORKERS)
        ]
        try:
            answered = 0
            for worker in workers:
                output = worker.communicate(timeout=90)[0].strip().splitlines()[-1]
                result = json.loads(output)
                answered += result["ok"]
            if answered != WORKERS * THREADS * CALLS_PER_THREAD:
                raise RuntimeError(f"only {answered} stale hits were answered")
            return _hits(up, path) - before
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait(timeout=5)
