"""Row 23 (issue 28): fault injection and observe-only protections, held to the issue's targets.

23a: an httpx service with ``chaos`` (one ``status`` fault at rate 0.1) on an in-memory upstream, 10,000 calls per
     round: the share that met an injected fault (target 0.10 +- 0.01; the row shows the share, the verdict is on
     its distance from 0.1).
23b: W = 4 worker processes sharing a Redis (the run's own), each calling the real upstream every 20 ms; the operator
     runs ``outbound chaos api --kind status --rate 1 --for 5s``; each worker writes down when it last met an
     injected fault. The figure is the latest of those, minus the moment the switch expired (its time to live, on the
     same machine's clock): seconds a worker went on injecting after the game day was over (target <= 2 s).
23c: the same recorded faults (2 s failing, 2 s healthy, in turn, on a fake clock) replayed through a breaker that
     enforces and one that observes (``enforce: false``), through the whole client stack: the figure is
     ``|would-rejects - refusals| + calls the observer refused`` (target 0: the counts are equal, and the observer
     refuses nothing).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

import outbound
from benchmarks._harness import ROOT, Row, Target, UpstreamProcess, die_with_parent
from outbound import cli
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from benchmarks._scenarios import Settings

MEASUREMENT = 23
ROW_KEYS = ("23a", "23b", "23c")
CALLS = 10_000
RATE = 0.1
WORKERS = 4
GAME_DAY = 5.0  # seconds: `--for 5s`
CALL_INTERVAL = 0.02
AFTER = 3.0  # seconds the workers go on calling after the expiry

_WORKER = """
import json, sys, time
import outbound
from outbound import cli
settings = json.loads(sys.argv[1])
registry = outbound.Registry.from_mapping(settings)
session = registry.session("api")
session.get("ok")  # first use: the switches' follower starts
print("ready", flush=True)
until = float(sys.stdin.readline())
last = None
injected = 0
while time.time() < until:
    response = session.get("ok")
    if "x-outbound-injected" in response.headers:
        injected += 1
        last = time.time()
    time.sleep(INTERVAL)
registry.close()
print(json.dumps({"last": last, "injected": injected}), flush=True)
""".replace("INTERVAL", repr(CALL_INTERVAL))


class _Answer(httpx.BaseTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"ok", request=request)


def chaos(up: UpstreamProcess, s: Settings) -> list[Row]:
    quick = s.failing_calls < 100  # --quick proves the code runs: fewer calls, a one-second game day, one round
    calls, game_day, after = (500, 1.0, 0.5) if quick else (CALLS, GAME_DAY, AFTER)
    shares = [_share(calls) for _ in range(s.rounds)]
    with tempfile.TemporaryDirectory(prefix="outbound-bench-redis") as directory, RedisServer(Path(directory)) as redis:
        late = [_game_day(up, redis.url, game_day, after) for _ in range(1 if quick else s.rounds)]
    replays = [_replay(enforce) for enforce in (True, False)]
    (refused, _), (observer_refused, would) = replays
    mismatch = float(abs(would - refused) + observer_refused)
    return [
        Row(
            "23a",
            f"rate {RATE} over {CALLS:,} calls: |share that met an injected fault - {RATE}|",
            "",
            [abs(share - RATE) for share in shares],
            Target("<=", 0.01, "0.10 +- 0.01"),
            f"shares injected: median {statistics.median(shares):.4f}, "
            f"{min(shares):.4f}-{max(shares):.4f} over the rounds",
            digits=4,
        ),
        Row(
            "23b",
            f"game day --for {GAME_DAY:g}s, {WORKERS} workers: last injected fault after the expiry",
            "s",
            late,
            Target("<=", 2.0, "<= 2 s"),
            f"workers call every {CALL_INTERVAL * 1000:.0f} ms; a negative figure: the last one came before the end",
        ),
        Row(
            "23c",
            "observe vs enforce on the same recorded faults: |would-rejects - refusals| + observer's refusals",
            "",
            [mismatch],
            Target("==", 0.0, "0 / equal"),
            f"enforcing breaker refused {refused}; observing breaker refused {observer_refused}, would have "
            f"refused {would}",
            digits=0,
        ),
    ]


def _share(calls: int) -> float:
    settings = {
        "chaos": {"allow": True},
        "services": {
            "s": {
                "base_url": "http://chaos.invalid/",
                "client": "httpx",
                "retry": None,
                "breaker": {"fail_max": 1_000_000},
                "pause": None,
                "chaos": {"enabled": True, "faults": [{"kind": "status", "rate": RATE}]},
            }
        },
    }
    with outbound.Registry.from_mapping(settings, transports={"s": _Answer()}) as registry:
        client = registry.client("s")
        injected = sum("x-outbound-injected" in client.get("ok").headers for _ in range(calls))
    return injected / calls


def _game_day(up: UpstreamProcess, redis_url: str, game_day: float, after: float) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings: dict[str, Any] = {
        "chaos": {"allow": True},
        "state": {"backend": "redis", "url": redis_url, "prefix": prefix},
        "services": {"api": {"base_url": up.url, "retry": None, "pause": None, "breaker": {"fail_max": 1_000_000}}},
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, json.dumps(settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # each worker logs the injection's start and end
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
                raise RuntimeError("a chaos benchmark worker did not start")
        with outbound.Registry.from_mapping(settings) as operator:
            started = time.time()
            output = cli.chaos(operator, "api", kind="status", rate=1.0, seconds=game_day)
            if output.code:
                raise RuntimeError(output.text)
        expired = started + game_day
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(f"{expired + after}\n")
            worker.stdin.flush()
        results = [
            json.loads(worker.communicate(timeout=game_day + after + 30)[0].strip().splitlines()[-1])
            for worker in workers
        ]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=5)
    if any(result["injected"] == 0 for result in results):
        raise RuntimeError("a worker never met an injected fault: the switch did not reach it")
    return max(result["last"] for result in results) - expired


class _Recorded(httpx.BaseTransport):
    """The recorded faults: 503 while the fake clock is in a failing stretch, 200 otherwise."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        failing = int(self.clock[0] // 2.0) % 2 == 0
        return httpx.Response(503 if failing else 200, content=b"", request=request)


def _replay(enforce: bool) -> tuple[int, int]:
    """``(calls refused, would-rejects)`` over 40 s of recorded faults, a call every 50 ms."""
    now = [0.0]
    settings = {
        "services": {
            "s": {
                "base_url": "http://recorded.invalid/",
                "client": "httpx",
                "retry": None,
                "pause": None,
                "breaker": {"fail_max": 5, "reset_timeout": 1.0, "enforce": enforce},
            }
        }
    }
    refused = 0
    registry = outbound.Registry.from_mapping(settings, clock=lambda: now[0], transports={"s": _Recorded(now)})
    with registry:
        client = registry.client("s")
        for step in range(800):
            now[0] = step * 0.05
            try:
                client.get("x")
            except outbound.CircuitOpenError:
                refused += 1
        counts = registry["s"].policy.would_reject
        would = counts.total() if counts is not None else 0
    return refused, would
