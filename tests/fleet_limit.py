"""W worker processes offering a fleet rate limit more than it allows, for the tests and benchmark row 10f.

Each worker calls ``GET /limited`` every ``interval`` seconds for ``seconds`` (refused calls are not sent); the
upstream records when each request arrived, and ``busiest`` finds the most requests in any window of the limit's
length: what the fleet's limit must bound, measured at the upstream. ``broken=True`` runs a deliberately wrong
lease window (half the limit's length: the leases of two windows in one), to show the check can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

WORKER = """
import json, sys, time, outbound
settings, seconds, interval = json.loads(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
if sys.argv[4] == "broken":
    import outbound._state.lease as lease
    original = lease.LeasedPermits.__init__
    def init(self, state, service, amount, window, margin):
        original(self, state, service, amount, window, margin)
        self.span_ms = int(window * 500)
    lease.LeasedPermits.__init__ = init
registry = outbound.Registry.from_mapping(settings)
session = registry.session("api")
print("ready", flush=True)
sys.stdin.readline()
sent = refused = 0
start = time.monotonic()
next_at = start
while time.monotonic() < start + seconds:
    try:
        session.get("limited")
        sent += 1
    except outbound.RateLimitedError:
        refused += 1
    next_at += interval
    time.sleep(max(0.0, next_at - time.monotonic()))
print(json.dumps({"sent": sent, "refused": refused}), flush=True)
registry.close()
"""


def run_workers(
    settings: dict[str, Any], *, workers: int, seconds: float, interval: float, broken: bool = False
) -> list[dict[str, int]]:
    """Start ``workers`` processes with ``settings`` (a service ``api``), let them call together, return each one's
    counts of sent and refused calls."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [json.dumps(settings), str(seconds), str(interval), "broken" if broken else "ok"]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for _ in range(workers)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("a rate limit worker did not start")
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = []
        for process in processes:
            output = process.communicate(timeout=seconds + 30)[0].strip().splitlines()
            results.append(json.loads(output[-1]))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)


def busiest(arrivals: list[float], window: float) -> int:
    """The most arrivals in any half-open window of ``window`` seconds."""
    times = sorted(arrivals)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most
