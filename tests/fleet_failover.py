"""W worker processes calling through a Redis failover, for the tests and benchmark row 10k (issue 26, item 4).

Each worker calls ``GET /ok`` every 20 ms for ``seconds``, recording each outcome (``ok``, ``refused`` by the
breaker, or ``failed: <error>``) with its ``time.monotonic()`` (the machine's, shared by the processes). The
caller's ``fail_over()`` kills a node and waits until the topology recovered; then an operator isolates the service.
Counted: calls that failed (Redis failing must never fail a call), and workers that did not refuse every call from
2 s after the isolation (a decision lost or late). ``broken=True`` runs workers that never apply the fleet's
decisions, to show the check can fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from outbound import CircuitOpenError, Registry
from tests.fleet_limit import ROOT
from tests.upstream import wait_until

WORKERS = 4
SECONDS = 14.0

FAILOVER_WORKER = """
import json, sys, time, outbound
settings, seconds = json.loads(sys.argv[1]), float(sys.argv[2])
if sys.argv[3] == "broken":  # a worker that never applies what the fleet decides: the check must see it
    import outbound._state.redis as fleet
    fleet.RedisState._apply_remote = lambda *args, **kwargs: None
registry = outbound.Registry.from_mapping(settings)
session = registry.session("api")
session.get("ok")
print("ready", flush=True)
sys.stdin.readline()
outcomes, end = [], time.monotonic() + seconds
while time.monotonic() < end:
    try:
        session.get("ok")
        outcome = "ok"
    except outbound.CircuitOpenError:
        outcome = "refused"
    except Exception as error:
        outcome = "failed: " + type(error).__name__
    outcomes.append((time.monotonic(), outcome))
    time.sleep(0.02)
print(json.dumps({"outcomes": outcomes, "backend": registry.health()["state_backend"]}), flush=True)
registry.close()
"""


@contextlib.contextmanager
def _calling(script: str, settings: dict[str, Any], seconds: float, mode: str) -> Iterator[list[subprocess.Popen[str]]]:
    """``WORKERS`` processes running ``script``, each ready (its registry built) and then told to start calling
    together; killed on the way out if one is still running."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(settings), str(seconds), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for _ in range(WORKERS)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        yield workers
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=5)


# How soon after a decision every worker must refuse: sync_interval (0.2 s) plus the time a worker's client takes to
# find the new primary after a failover (a cluster client re-reads the slots on its first error), on a loaded machine.
DECISION_REACHES_WITHIN = 2.0


def _tally(results: list[dict[str, Any]], decided_at: float) -> tuple[int, int]:
    """Calls that failed, and workers that did not refuse every call from ``DECISION_REACHES_WITHIN`` after the
    decision made at ``decided_at``."""
    failed = missed = 0
    for result in results:
        outcomes = result["outcomes"]
        failed += sum(1 for _, outcome in outcomes if outcome.startswith("failed"))
        late = {outcome for at, outcome in outcomes if at > decided_at + DECISION_REACHES_WITHIN}
        missed += late != {"refused"}
    return failed, missed


def through_a_failover(
    settings: dict[str, Any], fail_over: Callable[[], None], *, seconds: float = SECONDS, broken: bool = False
) -> tuple[int, int, list[dict[str, Any]]]:
    """Calls failed, workers that missed the decision made after the failover, each worker's ``state_backend``
    health at the end (``settings``: a service ``api`` and a fleet state)."""
    with _calling(FAILOVER_WORKER, settings, seconds, "broken" if broken else "ok") as workers:
        time.sleep(1.0)
        fail_over()
        with Registry.from_mapping(settings) as operator:
            assert wait_until(lambda: operator.health()["state_backend"]["status"] == "ok", timeout=5)
            operator.isolate("api", 600)
            isolated_at = time.monotonic()
        results = [json.loads(worker.communicate(timeout=40)[0].strip().splitlines()[-1]) for worker in workers]
    failed, missed = _tally(results, isolated_at)
    return failed, missed, [result["backend"] for result in results]


def through_a_lost_write(
    settings: dict[str, Any],
    lose_replication: Callable[[], None],
    fail_over: Callable[[], None],
    *,
    seconds: float = SECONDS,
    broken: bool = False,
) -> tuple[int, int, str]:
    """Calls failed, workers that did not keep refusing, and the breaker's state the fleet reports after the
    workers are done, when the breaker was opened fleet-wide by a write the failover loses (issue 26, item 4).

    ``lose_replication()`` makes the next writes reach the primary only (``Processes.lose_replication``); then a
    separate process opens the breaker fleet-wide by its failures (every worker applies the opening it publishes)
    and leaves; ``fail_over()`` kills the primary and waits until a replica without the opening took over. The
    opening's ``reset_timeout`` outlasts the run: every worker must refuse every call from 2 s after the
    opening to its end, failover included, and the fleet must hold the opening again. ``broken=True`` runs workers
    that never re-assert what they hold, to show the check can fail."""
    with _calling(LOST_WRITE_WORKER, settings, seconds, "no-reassert" if broken else "ok") as workers:
        time.sleep(1.0)
        lose_replication()
        with Registry.from_mapping(settings) as opener:  # leaves before the failover: only the workers hold it
            opener.session("api").get("ok")
            for _ in range(10):
                if opener["api"].policy.breaker.state == "open":
                    break
                with contextlib.suppress(CircuitOpenError):
                    opener.session("api").get("status/503")
            assert opener["api"].policy.breaker.state == "open"
            assert opener.health()["services"]["api"]["breaker"]["state"] == "open"  # the fleet's, on the primary
            opened_at = time.monotonic()
        time.sleep(0.5)  # the workers apply the published opening (sync_interval 0.2 s catches a missed message)
        fail_over()
        results = [json.loads(worker.communicate(timeout=60)[0].strip().splitlines()[-1]) for worker in workers]
        with Registry.from_mapping(settings) as newcomer:
            assert wait_until(lambda: newcomer.health()["state_backend"]["status"] == "ok", timeout=10)
            fleet_state = newcomer.health()["services"]["api"]["breaker"]["state"]
    failed, missed = _tally(results, opened_at)
    return failed, missed, fleet_state


LOST_WRITE_WORKER = FAILOVER_WORKER.replace(
    'if sys.argv[3] == "broken":',
    'if sys.argv[3] == "no-reassert":  # a worker that never writes again what the fleet lost\n'
    "    import outbound._state.redis as fleet\n"
    "    fleet.RedisState._reassert = lambda *args, **kwargs: False\n"
    'if sys.argv[3] == "broken":',
)
