"""Row 26 (issue 31, several endpoints): what one endpoint costs, and what a dead one costs a fleet.

26a: sequential GETs through a service written with one endpoint (``endpoints: [url]``) and the same service with
     ``base_url``, alternated in slices as row 1 (target >= 0.99). One endpoint builds the service ``base_url`` does.
26b-d: three endpoints (two paths of the run's upstream, and an upstream of this process's own on a port of its
     own), ``outlier.consecutive_failures`` 5, W = 4 worker processes sharing a Redis, each calling every 20 ms with
     ``retry.total`` 2. The third endpoint is stopped (its connections closed, its port refusing), then started again
     on the same port ``RESTART`` seconds later.
     26b: attempts that failed on it, fleet-wide, before every worker had it ejected (target <= consecutive_failures +
          W). The same run without Redis is reported beside it (each worker discovers it alone: about
          consecutive_failures x W): the check can fail.
     26c: the share of the attempts that went to it ``LATER`` seconds after it died, over ``WINDOW`` seconds
          (target <= 1 %).
     26d: seconds from its restart until every worker has had an answer from it again, against one ``base_ejection``
          (from its ejection) plus one trial: the row is the time past the ejection's end (target <= one trial,
          ``TRIAL`` s).

A redis-server of the run's own (tests/redis_server.py) on a free port; never the machine's shared one.
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

import outbound
from benchmarks._harness import ROOT, Row, Target, UpstreamProcess, die_with_parent, interleave, ratios
from tests.redis_server import RedisServer
from tests.upstream import Upstream

if TYPE_CHECKING:
    from benchmarks._scenarios import Settings

MEASUREMENT = 26
ROW_KEYS = ("26a", "26b", "26c", "26d")
WORKERS = 4
CONSECUTIVE = 5
CALL_INTERVAL = 0.02
TRIAL = 1.0  # one trial: a call interval, and the time an attempt to a fresh connection takes, with a wide margin

_WORKER = """
import json, sys, time, outbound
settings, timing = json.loads(sys.argv[1]), json.loads(sys.argv[2])
registry = outbound.Registry.from_mapping(settings)
session = registry.session("api")
for _ in range(30):
    session.get("ok").raise_for_status()
endpoints = registry._open("api").policy.endpoints
print("ready", flush=True)
killed = float(sys.stdin.readline())
later, window = killed + timing["later"], killed + timing["later"] + timing["window"]
restart, stop = killed + timing["restart"], killed + timing["stop"]
ejected_at = back_at = good = None
errors, marks, failed_calls = 0, {}, 0
while time.time() < stop:
    try:
        session.get("ok").raise_for_status()
    except Exception:
        failed_calls += 1
    now = time.time()
    rows = endpoints.snapshot()
    dead = rows[2]
    if ejected_at is None and dead["state"] == "ejected":
        ejected_at, errors = now, dead["errors"]
    for name, at in (("later", later), ("window", window)):
        if name not in marks and now >= at:
            marks[name] = (dead["calls"], sum(row["calls"] for row in rows))
    if now >= restart:
        if good is None:
            good = dead["calls"] - dead["errors"]
        elif dead["calls"] - dead["errors"] > good:
            back_at = now
            break
    time.sleep(timing["interval"])
if ejected_at is None:
    errors = endpoints.snapshot()[2]["errors"]
print(json.dumps({"ejected_at": ejected_at, "errors": errors, "marks": marks, "back_at": back_at,
                  "failed_calls": failed_calls}), flush=True)
registry.close()
"""


def endpoints(up: UpstreamProcess, s: Settings) -> list[Row]:
    from benchmarks._scenarios import QUICK, expect_ok, overhead_detail, sliced, warm_up

    one = outbound.Registry.from_mapping({"services": {"api": {"endpoints": [up.url]}}})
    base = outbound.Registry.from_mapping({"services": {"api": {"base_url": up.url}}})
    try:

        def one_endpoint() -> None:
            expect_ok(one.session("api").get("ok"))

        def base_url() -> None:
            expect_ok(base.session("api").get("ok"))

        warm_up(s.warmup_calls, one_endpoint, base_url)
        runs = interleave([sliced(s, one_endpoint), sliced(s, base_url)], rounds=s.rounds, slices=s.slices)
    finally:
        one.close()
        base.close()

    quick = s == QUICK
    timing = (
        {"later": 1.0, "window": 0.3, "restart": 1.4, "ejection": 1.6, "stop": 5.0}
        if quick
        else {"later": 10.0, "window": 2.0, "restart": 12.5, "ejection": 15.0, "stop": 25.0}
    )
    rounds = 1 if quick else 2
    together: list[dict[str, float]] = []
    alone: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="outbound-bench-redis") as directory, RedisServer(Path(directory)) as redis:
        for _ in range(rounds):
            together.append(_fleet_round(up, redis.url, timing))
            alone.append(_fleet_round(up, None, timing))
    ejection = timing["ejection"]
    return [
        Row(
            "26a",
            "sequential GETs, requests: one endpoint configured / base_url",
            "x",
            ratios(*runs),
            Target(">=", 0.99, ">= 0.99"),
            overhead_detail(runs) + "; one endpoint builds the service base_url does",
        ),
        Row(
            "26b",
            f"3 endpoints, one killed, {WORKERS} worker processes with Redis, consecutive_failures {CONSECUTIVE}: "
            "failed attempts on it fleet-wide before every worker ejected it",
            "att",
            [r["errors"] for r in together],
            Target("<=", CONSECUTIVE + WORKERS, f"<= consecutive_failures + W = {CONSECUTIVE + WORKERS}"),
            "without Redis (each worker alone): "
            + ", ".join(f"{r['errors']:.0f}" for r in alone)
            + " attempts; calls that failed (after retries) with Redis: "
            + f"{sum(r['failed_calls'] for r in together):.0f}",
            digits=1,
        ),
        Row(
            "26c",
            f"share of the attempts reaching the dead endpoint {timing['later']:g} s after it died "
            f"(over {timing['window']:g} s, with Redis)",
            "%",
            [r["share"] for r in together],
            Target("<=", 1.0, "<= 1 %"),
            "without Redis: " + ", ".join(f"{r['share']:.2f} %" for r in alone),
            digits=2,
        ),
        Row(
            "26d",
            f"endpoint restarted {timing['restart']:g} s after it died: seconds after its ejection "
            f"(base_ejection {ejection:g} s) ended until every worker had an answer from it",
            "s",
            [r["late"] for r in together],
            Target("<=", TRIAL, f"<= one trial ({TRIAL:g} s)"),
            "back after the restart in "
            + ", ".join(f"{r['back']:.2f} s" for r in together)
            + f"; the ejection ends {ejection:g} s after it began",
            digits=2,
        ),
    ]


def _fleet_round(up: UpstreamProcess, redis_url: str | None, timing: dict[str, float]) -> dict[str, float]:
    extra = Upstream().start()
    port = extra.port
    urls = [up.url + "e1/", up.url + "e2/", extra.url + "e3/"]
    settings: dict[str, Any] = {
        "services": {
            "api": {
                "endpoints": urls,
                "balance": "round_robin",
                "retry": {"total": 2, "backoff_factor": 0},
                "outlier": {"consecutive_failures": CONSECUTIVE, "base_ejection": timing["ejection"]},
            }
        }
    }
    if redis_url is not None:
        settings["state"] = {"backend": "redis", "url": redis_url, "prefix": f"bench-{uuid.uuid4().hex[:8]}"}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    restart_at = 0.0
    workers = []
    try:
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _WORKER,
                    json.dumps(settings),
                    json.dumps({**timing, "interval": CALL_INTERVAL}),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
                env=env,
                preexec_fn=die_with_parent(),
            )
            for _ in range(WORKERS)
        ]
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                raise RuntimeError("an endpoints benchmark worker did not start")
        extra.stop()
        killed = time.time()
        restart_at = killed + timing["restart"]
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(f"{killed}\n")
            worker.stdin.flush()
        time.sleep(max(restart_at - time.time(), 0.0))
        extra = Upstream(port=port).start()
        results = []
        for worker in workers:
            output = worker.communicate(timeout=timing["stop"] + 30)[0].strip().splitlines()[-1]
            results.append(json.loads(output))
    finally:
        extra.stop()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=5)
    dead_later = sum(r["marks"]["window"][0] - r["marks"]["later"][0] for r in results)
    all_later = sum(r["marks"]["window"][1] - r["marks"]["later"][1] for r in results)
    ejected = [r["ejected_at"] for r in results if r["ejected_at"] is not None]
    backs = [r["back_at"] for r in results]
    back = max(backs) - restart_at if None not in backs else float("inf")
    # The fleet's ejection began with the first worker's; it ends base_ejection later.
    ends = (min(ejected) if ejected else killed) + timing["ejection"]
    return {
        "errors": float(sum(r["errors"] for r in results)),
        "share": 100.0 * dead_later / all_later if all_later else 0.0,
        "back": back,
        "late": max(max(backs) - ends, 0.0) if None not in backs else float("inf"),
        "failed_calls": float(sum(r["failed_calls"] for r in results)),
    }
