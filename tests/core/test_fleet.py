"""Fleet mode against a real Redis: breakers, trials, stats, health and operator actions shared by every process.

Several registries with one prefix in one test process are several workers of a fleet (each has its own worker id,
connections and threads); the upstream-protection test runs real worker processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import outbound
from outbound import Registry, cli
from outbound._page import render_page
from tests.redis_server import RedisServer
from tests.tcp_relay import TcpRelay
from tests.upstream import Upstream, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet(redis_url: str, upstream: Upstream) -> Iterator[Callable[..., Registry]]:
    """``fleet(**service_overrides)``: a registry (a worker) of a fleet sharing the test's Redis and prefix."""
    made: list[Registry] = []

    def worker(prefix: str = "test", sync_interval: float = 0.2, url: str | None = None, **overrides: Any) -> Registry:
        """``url``: reach Redis there instead (a ``TcpRelay`` that cuts this worker off from the fleet)."""
        service = {
            "base_url": upstream.url,
            "retry": None,
            "breaker": {"fail_max": 3, "reset_timeout": 30},
            **overrides,
        }
        mapping = {
            "services": {"api": service, "local": {"base_url": upstream.url, "shared": False}},
            "state": {"backend": "redis", "url": url or redis_url, "prefix": prefix, "sync_interval": sync_interval},
        }
        registry = Registry.from_mapping(mapping)
        made.append(registry)
        return registry

    yield worker
    for registry in made:
        registry.close()


def _fail(registry: Registry, times: int = 1) -> None:
    for _ in range(times):
        with contextlib.suppress(outbound.CircuitOpenError):
            registry.session("api").get("status/503")


def _state(registry: Registry) -> str:
    return registry["api"].policy.breaker.state


def test_failures_count_fleet_wide_and_an_opening_reaches_every_worker(fleet: Callable[..., Registry]) -> None:
    a, b, c = fleet(), fleet(), fleet()
    for worker in (a, b, c):
        worker.session("api").get("ok")  # each starts following the fleet
    _fail(a)
    _fail(b)
    _fail(c)  # one failure each: three for the fleet, fail_max 3
    assert wait_until(lambda: all(_state(worker) == "open" for worker in (a, b, c)), timeout=3)
    with pytest.raises(outbound.CircuitOpenError):
        b.session("api").get("ok")


def test_the_hot_path_makes_no_redis_round_trip_while_closed(
    fleet: Callable[..., Registry], redis_server: RedisServer, upstream: Upstream
) -> None:
    registry = fleet(sync_interval=30)  # no periodic sync during the measurement
    session = registry.session("api")
    session.get("ok")
    client = redis_server.client()

    def commands() -> int:
        return int(client.info("stats")["total_commands_processed"])

    assert wait_until(lambda: client.exists("test:workers") == 1)  # the first sync has begun

    # ... and is over: no command but this test's own INFO for 0.2 s (a loaded machine may still be writing it).
    def quiet() -> bool:
        start = commands()
        time.sleep(0.2)
        return commands() - start <= 1  # one of the two INFOs, nothing else

    assert wait_until(quiet, timeout=10)
    before = commands()
    for _ in range(200):
        assert session.get("ok").status_code == 200
    assert commands() - before <= 1  # the INFO above is the only command


def test_one_trial_for_the_fleet_and_its_verdict_reaches_everyone(
    fleet: Callable[..., Registry], upstream: Upstream
) -> None:
    workers = [fleet(breaker={"fail_max": 1, "reset_timeout": 0.5}) for _ in range(3)]
    for worker in workers:
        worker.session("api").get("ok")
    _fail(workers[0])
    assert wait_until(lambda: all(_state(worker) == "open" for worker in workers))
    time.sleep(0.6)  # the trial is due everywhere
    upstream.reset()

    def call(worker: Registry) -> int | str:
        try:
            return int(worker.session("api").get("slow", params={"delay": 0.5}).status_code)
        except outbound.CircuitOpenError:
            return "refused"

    with concurrent.futures.ThreadPoolExecutor(len(workers)) as pool:  # every worker tries at once
        outcomes = list(pool.map(call, workers))
    assert upstream.hits == 1  # one trial call reached the upstream for the whole fleet
    assert sorted(map(str, outcomes)) == ["200", "refused", "refused"]
    assert wait_until(lambda: all(_state(worker) == "closed" for worker in workers), timeout=3)


def test_a_failed_trial_reopens_the_breaker_everywhere(fleet: Callable[..., Registry], upstream: Upstream) -> None:
    workers = [fleet(breaker={"fail_max": 1, "reset_timeout": 0.5}) for _ in range(2)]
    for worker in workers:
        worker.session("api").get("ok")
    _fail(workers[0])
    assert wait_until(lambda: all(_state(worker) == "open" for worker in workers))
    time.sleep(0.6)
    _fail(workers[1])  # the trial, and it fails
    # Open again everywhere, for a new reset_timeout (a stale "open" whose trial is due has no retry_in).
    assert wait_until(lambda: all((worker["api"].policy.breaker.retry_in() or 0) > 0 for worker in workers))
    assert all(_state(worker) == "open" for worker in workers)


def test_every_worker_reports_the_fleets_breaker_and_counters(
    fleet: Callable[..., Registry], upstream: Upstream
) -> None:
    a, b = fleet(), fleet()
    for _ in range(3):
        a.session("api").get("ok")
    b.session("api").get("ok")
    _fail(b, 3)
    assert wait_until(lambda: _state(a) == "open")
    assert wait_until(lambda: a.health()["services"]["api"]["stats"]["requests"] == 7, timeout=3)
    reports = [worker.health() for worker in (a, b)]
    for report in reports:
        assert report["scope"] == "fleet"
        assert report["workers"] == 2
        assert {k: report["state_backend"][k] for k in ("backend", "status", "last_error", "outages")} == {
            "backend": "redis",
            "status": "ok",
            "last_error": None,
            "outages": 0,
        }
        api = report["services"]["api"]
        assert api["breaker"]["state"] == "open"
        assert api["stats"]["requests"] == 7  # summed over both workers
        assert api["stats"]["errors"] == 3
        assert api["stats"]["latency_ms"]["p50"] is not None  # merged from both workers' histograms
        assert report["services"]["local"]["stats"]["requests"] == 0  # shared: false stays this process's
    first, second = (report["services"]["api"]["breaker"] for report in reports)
    assert first["retry_in"] == pytest.approx(second["retry_in"], abs=0.5)  # each computed when it was read
    assert {**first, "retry_in": None} == {**second, "retry_in": None}


def test_a_service_failing_across_the_fleet_is_failing_in_every_workers_report(
    fleet: Callable[..., Registry],
) -> None:
    # Three failed calls per worker: too few for either alone, enough for the fleet (the status is the merged one's).
    a, b = (fleet(breaker={"fail_max": 100, "reset_timeout": 30}) for _ in range(2))
    _fail(a, 3)
    _fail(b, 3)
    for worker in (a, b):
        assert worker["api"].policy.stats.snapshot().recent == outbound.health.RecentCalls(calls=3, errors=3)
        assert worker["api"].health().status == "ok"  # this process's own view
    assert wait_until(lambda: a.report().services["api"].stats.recent.calls == 6, timeout=3)
    assert wait_until(lambda: b.report().services["api"].stats.recent.calls == 6, timeout=3)
    for worker in (a, b):
        report = worker.report()
        api = report.services["api"]
        assert (api.breaker.state, api.stats.recent.errors, api.status) == ("closed", 6, "failing")
        assert report.status == "degraded"
        assert worker.health()["services"]["api"]["stats"]["recent"]["error_rate"] == 1.0


def test_a_new_process_status_shows_the_fleet(fleet: Callable[..., Registry]) -> None:
    running = fleet()
    running.session("api").get("ok")
    _fail(running, 3)
    assert wait_until(lambda: _state(running) == "open")
    # A new registry, as `manage.py outbound status` builds: it has made no call and received no message.
    cli = fleet()
    # The opening reaches Redis from the running worker's fleet thread, a moment after its own breaker opened.
    assert wait_until(lambda: cli.report().services["api"].breaker.state == "open", timeout=3)
    # Each process publishes its stats every sync_interval (0.2 s here).
    assert wait_until(lambda: cli.report().services["api"].stats.requests == 4, timeout=3)
    assert cli.report().status == "degraded"


def test_isolate_and_reset_act_on_the_whole_fleet(fleet: Callable[..., Registry]) -> None:
    a, b = fleet(), fleet()
    b.session("api").get("ok")
    a.isolate("api", seconds=60)
    assert wait_until(lambda: _state(b) == "isolated")
    with pytest.raises(outbound.CircuitOpenError, match="isolated"):
        b.session("api").get("ok")
    assert b.health()["services"]["api"]["status"] == "down"
    a.reset("api")
    assert wait_until(lambda: _state(b) == "closed")
    assert b.session("api").get("ok").status_code == 200


def test_an_isolation_with_an_end_lifts_itself(fleet: Callable[..., Registry]) -> None:
    a, b = fleet(), fleet()
    b.session("api").get("ok")
    a.isolate("api", seconds=0.5)
    assert wait_until(lambda: _state(b) == "isolated")
    time.sleep(0.6)
    assert b.session("api").get("ok").status_code == 200
    assert _state(b) == "closed"


def test_redis_failing_is_not_the_app_failing(
    fleet: Callable[..., Registry], redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    registry = fleet(breaker={"fail_max": 2, "reset_timeout": 0.3})
    registry.session("api").get("ok")
    with caplog.at_level(logging.WARNING, logger="outbound.fleet"):
        redis_server.stop()
        try:
            started = time.monotonic()
            for _ in range(20):
                assert registry.session("api").get("ok").status_code == 200
            _fail(registry, 2)  # the breaker opens locally
            assert _state(registry) == "open"
            time.sleep(0.35)
            assert registry.session("api").get("ok").status_code == 200  # the trial: a local decision
            elapsed = time.monotonic() - started
            report = registry.health()
            assert report["state_backend"]["status"] == "unreachable"
            assert report["status"] == "degraded"  # never "ok" while cut off from the fleet
        finally:
            redis_server.start()
    assert elapsed < 2.0  # no call waited on Redis beyond one timeout (0.05 s)
    warnings = [r for r in caplog.records if r.name == "outbound.fleet" and r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, not once per call
    assert wait_until(lambda: registry.health()["state_backend"]["status"] == "ok", timeout=5)  # re-synced


def test_keys_are_namespaced_expire_and_prefixes_do_not_interfere(
    fleet: Callable[..., Registry], redis_server: RedisServer
) -> None:
    one, other = fleet(prefix="one"), fleet(prefix="other")
    for registry in (one, other):
        registry.session("api").get("ok")
        registry.session("local").get("ok")
    _fail(one, 3)
    assert wait_until(lambda: _state(one) == "open")
    time.sleep(0.3)
    assert _state(other) == "closed"
    client = redis_server.client()
    keys = sorted(key.decode() for key in client.keys("*"))
    assert all(key.startswith(("one:", "other:")) for key in keys), keys
    assert not [key for key in keys if "local" in key]  # shared: false writes nothing
    assert all(client.pttl(key) > 0 for key in keys), {key: client.pttl(key) for key in keys}
    one.close()
    assert not client.exists(*[key for key in keys if key.startswith("one:stats:")])  # a closed worker leaves


def test_a_dead_workers_stats_vanish_after_a_few_sync_intervals(
    redis_url: str, redis_server: RedisServer, upstream: Upstream
) -> None:
    code = (
        "import sys, time, outbound\n"
        f"r = outbound.Registry.from_mapping({{'services': {{'api': {{'base_url': {upstream.url!r}}}}},"
        f" 'state': {{'backend': 'redis', 'url': {redis_url!r}, 'prefix': 'dead', 'sync_interval': 0.2}}}})\n"
        "r.session('api').get('ok')\n"
        "time.sleep(0.5)\n"
        "import os; os._exit(0)\n"  # dies without closing: no goodbye
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=30, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    client = redis_server.client()
    assert client.keys("dead:stats:*")
    assert wait_until(lambda: not client.keys("dead:stats:*"), timeout=3)  # 3 x 0.2 s after its last publish


def test_a_dead_upstream_sees_about_fail_max_requests_from_the_whole_fleet(redis_url: str, upstream: Upstream) -> None:
    workers = 4
    fail_max = 5
    code = f"""
import json, sys, time, outbound
r = outbound.Registry.from_mapping({{"services": {{"api": {{"base_url": {upstream.url!r}, "retry": None,
    "breaker": {{"fail_max": {fail_max}, "reset_timeout": 60}}}}}},
    "state": {{"backend": "redis", "url": {redis_url!r}, "prefix": "dead-upstream", "sync_interval": 0.5}}}})
session = r.session("api")
session.get("warm")
print("ready", flush=True)
sys.stdin.readline()
refused, deadline = 0, time.monotonic() + 10
while refused < 5 and time.monotonic() < deadline:
    try:
        session.get("dead")
    except outbound.CircuitOpenError:
        refused += 1
    time.sleep(0.02)
print(json.dumps({{"refused": refused}}), flush=True)
r.close()
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
        )
        for _ in range(workers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        upstream.set_mode("failing", status=503)
        before = upstream.hits_by_path["/dead"]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=30)[0].strip().splitlines()[-1]) for proc in procs]
    finally:
        for proc in procs:
            proc.kill() if proc.poll() is None else None
    assert all(result["refused"] == 5 for result in results)
    assert upstream.hits_by_path["/dead"] - before <= fail_max + workers


def test_async_clients_share_the_fleet_too(fleet: Callable[..., Registry], async_transport: str) -> None:
    sync_side, async_side = fleet(client="httpx"), fleet(client="httpx", transport=async_transport)
    sync_side.client("api").get("ok")

    async def fail_three_times() -> None:
        client = async_side.async_client("api")
        for _ in range(3):
            await client.get("status/503")

    asyncio.run(fail_three_times())
    assert wait_until(lambda: _state(sync_side) == "open")
    with pytest.raises(outbound.CircuitOpenError):
        sync_side.client("api").get("ok")


def test_close_leaves_no_thread_and_no_connection(fleet: Callable[..., Registry], redis_server: RedisServer) -> None:
    client = redis_server.client()
    baseline = len(client.client_list())
    registry = fleet()
    registry.session("api").get("ok")
    assert wait_until(lambda: len(client.client_list()) > baseline)
    assert {t.name for t in threading.enumerate()} >= {"outbound-fleet", "outbound-fleet-events"}
    registry.close()
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("outbound-fleet")])
    # At most the baseline: it may hold the fixture's own short-lived connection (the FLUSHALL's), closed when
    # its client is collected, so "none of the registry's left" is what is asserted, not an exact count.
    assert wait_until(lambda: len(client.client_list()) <= baseline)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
def test_a_forked_child_follows_the_fleet_with_its_own_connection_and_threads(
    fleet: Callable[..., Registry], upstream: Upstream
) -> None:
    parent = fleet()
    parent.session("api").get("ok")  # the parent runs its threads before the fork, as gunicorn --preload may
    other = fleet()
    other.session("api").get("ok")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees, then leave without running the parent's cleanup
        try:
            parent.session("api").get("ok")  # starts the child's own threads and connection
            worker = parent._state.worker  # type: ignore[attr-defined]
            _fail(other, 3)  # another worker opens the breaker...
            opened = wait_until(lambda: _state(parent) == "open", timeout=3)  # ...and the child learns it
            os.write(write, json.dumps({"opened": opened, "worker": worker}).encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    seen = json.loads(os.read(read, 4096))
    os.close(read)
    assert status == 0
    assert seen["opened"] is True
    assert seen["worker"] != parent._state.worker  # type: ignore[attr-defined]  # its own identity in the fleet
    assert wait_until(lambda: _state(parent) == "open")  # the parent's threads still run


def test_a_new_workers_first_call_meets_the_fleets_open_breaker(
    fleet: Callable[..., Registry], upstream: Upstream
) -> None:
    first = fleet()
    first.session("api").get("ok")
    _fail(first, 3)
    assert wait_until(lambda: _state(first) == "open")
    hits = upstream.hits
    newcomer = fleet()  # a worker gunicorn just started: it has never called anything
    with pytest.raises(outbound.CircuitOpenError):
        newcomer.session("api").get("ok")
    assert upstream.hits == hits


# -- decisions made while cut off from the fleet ---------------------------------------------------------------------


def _refused_for(seconds: float, *workers: Registry) -> None:
    """Every worker refuses every call for ``seconds`` (several sync intervals: nothing lifts the breaker)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for worker in workers:
            with pytest.raises(outbound.CircuitOpenError):
                worker.session("api").get("ok")
        time.sleep(0.05)


def _served_for(seconds: float, *workers: Registry) -> None:
    """Every worker's calls reach the upstream for ``seconds`` (nothing re-opens the breaker)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for worker in workers:
            assert worker.session("api").get("ok").status_code == 200
        time.sleep(0.05)


def test_an_isolation_made_while_redis_is_down_has_no_end_when_it_returns(
    fleet: Callable[..., Registry], redis_server: RedisServer, upstream: Upstream
) -> None:
    a, b = fleet(), fleet()
    for worker in (a, b):
        worker.session("api").get("ok")
    redis_server.stop()
    try:
        a.isolate("api")  # an operator's kill switch, while the fleet cannot be told
    finally:
        redis_server.start()  # a Redis restarted empty
    assert wait_until(lambda: _state(b) == "isolated", timeout=5)  # the fleet learns of it...
    hits = upstream.hits
    _refused_for(1.5, a, b)  # ...and it does not switch itself off
    assert upstream.hits == hits
    for worker in (a, b):
        breaker = worker.health()["services"]["api"]["breaker"]
        assert (breaker["state"], breaker["retry_in"]) == ("isolated", None)


def test_a_timed_isolation_made_while_redis_is_down_keeps_what_is_left_of_it(
    fleet: Callable[..., Registry], redis_server: RedisServer
) -> None:
    a, b = fleet(), fleet()
    for worker in (a, b):
        worker.session("api").get("ok")
    redis_server.stop()
    try:
        a.isolate("api", seconds=30)
    finally:
        redis_server.start()
    assert wait_until(lambda: _state(b) == "isolated", timeout=5)
    left = b["api"].policy.breaker.retry_in()
    assert left is not None
    assert 20 < left <= 30
    _refused_for(0.6, b)


def test_a_reset_made_while_cut_off_is_not_undone_when_the_fleet_answers_again(
    fleet: Callable[..., Registry], redis_server: RedisServer
) -> None:
    with TcpRelay(redis_server.port) as relay:
        away, other = fleet(url=relay.url), fleet()
        for worker in (away, other):
            worker.session("api").get("ok")
        other.isolate("api")
        assert wait_until(lambda: _state(away) == "isolated")
        relay.cut()  # `away` alone loses Redis; the fleet and its isolation go on
        assert wait_until(lambda: away.health()["state_backend"]["status"] == "unreachable")
        away.reset("api")  # an operator's reset there, later than the isolation
        assert _state(away) == "closed"
        relay.heal()
        assert wait_until(lambda: _state(other) == "closed", timeout=5)  # the later decision wins, fleet-wide
        _served_for(1.5, away, other)
        assert away.health()["state_backend"]["status"] == "ok"


def test_a_reset_made_while_redis_is_down_outranks_an_isolation_decided_before_it(
    fleet: Callable[..., Registry], redis_server: RedisServer
) -> None:
    a, b = fleet(), fleet()
    for worker in (a, b):
        worker.session("api").get("ok")
    a.isolate("api")
    assert wait_until(lambda: _state(b) == "isolated")
    redis_server.stop()
    try:
        a.reset("api")
    finally:
        redis_server.start()  # empty: `b` still holds the isolation and pushes it back, stamped with its time
    assert wait_until(lambda: _state(b) == "closed", timeout=5)
    _served_for(1.5, a, b)


def test_an_isolation_while_cut_off_outranks_a_reset_the_fleet_made_before_it(
    fleet: Callable[..., Registry], redis_server: RedisServer
) -> None:
    with TcpRelay(redis_server.port) as relay:
        away, other = fleet(url=relay.url), fleet()
        for worker in (away, other):
            worker.session("api").get("ok")
        other.isolate("api", seconds=60)
        assert wait_until(lambda: _state(away) == "isolated")
        relay.cut()
        assert wait_until(lambda: away.health()["state_backend"]["status"] == "unreachable")
        other.reset("api")  # the fleet's reset, which `away` does not hear of...
        time.sleep(0.1)
        away.isolate("api")  # ...then an isolation without end there
        relay.heal()
        assert wait_until(lambda: other["api"].policy.breaker.retry_in() is None and _state(other) == "isolated")
        _refused_for(1.0, away, other)


# -- a reset clears the fleet's stats ---------------------------------------------------------------------------------


def _fleet_stats(worker: Registry) -> dict[str, Any]:
    api = worker.health()["services"]["api"]
    return {**api["stats"], "last_error": api["last_error"]}


_CLEARED = {
    "requests": 0,
    "errors": 0,
    "retries": 0,
    "short_circuited": 0,
    "pool_timeouts": 0,
    "recent": {"seconds": 60.0, "calls": 0, "errors": 0, "error_rate": None},
    "latency_ms": {"p50": None, "p95": None, "p99": None},
    "last_error": None,
}


def test_a_reset_clears_the_fleets_stats_at_once_and_for_good(fleet: Callable[..., Registry]) -> None:
    a, b = fleet(), fleet()
    for worker in (a, b):
        worker.session("api").get("ok")
        _fail(worker)
    assert wait_until(lambda: _fleet_stats(a)["requests"] == 4, timeout=3)
    shell = fleet()  # `outbound reset api` from a shell
    assert "counts cleared" in cli.reset(shell, "api").text
    deadline = time.monotonic() + 1.0  # five sync intervals: every worker publishes again meanwhile
    while time.monotonic() < deadline:
        for worker in (a, b, shell):
            assert _fleet_stats(worker) == _CLEARED
        time.sleep(0.05)
    b.session("api").get("ok")  # counting goes on from zero
    assert wait_until(lambda: _fleet_stats(a)["requests"] == 1, timeout=3)


def test_a_worker_that_missed_a_reset_clears_its_stats_when_it_returns(
    fleet: Callable[..., Registry], redis_server: RedisServer
) -> None:
    with TcpRelay(redis_server.port) as relay:
        away, here = fleet(url=relay.url), fleet()
        for worker in (away, here):
            _fail(worker)
        assert wait_until(lambda: _fleet_stats(here)["requests"] == 2, timeout=3)
        relay.cut()
        assert wait_until(lambda: away.health()["state_backend"]["status"] == "unreachable")
        here.reset("api")  # `away` never hears of it
        assert _fleet_stats(here) == _CLEARED  # its last published record predates the reset: not counted
        relay.heal()
        assert wait_until(lambda: away.health()["state_backend"]["status"] == "ok", timeout=5)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for worker in (away, here):
                assert _fleet_stats(worker) == _CLEARED
            time.sleep(0.05)
        assert away["api"].policy.stats.requests == 0


# -- the failure behind the refusals ----------------------------------------------------------------------------------


def open_during_a_retry(slow: Registry, opener: Registry, upstream: Upstream) -> None:
    """``slow`` sends a GET whose 503 is retried after a second; meanwhile ``opener`` opens the breaker with POSTs
    (never retried), so the retry is refused: the last error is then a refusal, ``CircuitOpenError``."""
    refused: list[Exception] = []

    def call() -> None:
        try:
            slow.session("api").get("status/503")
        except outbound.CircuitOpenError as error:
            refused.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    assert wait_until(lambda: upstream.hits_by_path["/status/503"] == 1)
    for _ in range(2):
        with contextlib.suppress(outbound.CircuitOpenError):
            opener.session("api").post("status/503")
    thread.join(timeout=10)
    assert refused, "the retry was refused by the open breaker"


RETRIED_LATE = {"total": 1, "backoff_factor": 1.0, "backoff_jitter": 0}


def test_the_failure_that_opened_the_fleets_breaker_stays_visible_next_to_the_refusals(
    fleet: Callable[..., Registry], upstream: Upstream
) -> None:
    a, b = fleet(retry=RETRIED_LATE), fleet(retry=RETRIED_LATE)
    for worker in (a, b):
        worker.session("api").get("ok")
    open_during_a_retry(a, b, upstream)  # b's second POST is the fleet's third failure: it opens for everyone
    shell = fleet()
    assert wait_until(lambda: shell.health()["services"]["api"]["last_error"]["type"] == "CircuitOpenError", 3)
    for worker in (a, b, shell):
        api = worker.health()["services"]["api"]
        assert api["last_error"]["type"] == "CircuitOpenError"  # the newest error in the fleet: a refusal...
        opened_by = api["breaker"]["opened_by"]  # ...and what opened the breaker, the upstream's 503
        assert (opened_by["type"], opened_by["message"]) == ("HTTPStatus", "HTTP 503")
    text = cli.status(shell).text
    assert "api: breaker opened by HTTPStatus: HTTP 503 (at " in text
    assert text.count("HTTP 503") == 1
    assert all(len(line) <= 100 for line in text.splitlines()), text
    page = render_page(shell.health())
    assert "Breaker opened by" in page
    assert "HTTP 503" in page


# -- the same answer whatever the backend ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_the_call_whose_failure_opens_the_breaker_gets_the_upstreams_answer(
    backend: str, redis_url: str, upstream: Upstream
) -> None:
    # Two failures open the breaker; one came from elsewhere (another worker, or another call of this one). The next
    # call's first attempt is the second failure: in one process its retry is denied and the 503 returned; in a fleet
    # the opening used to arrive after the retry was decided, which then met the open breaker (CircuitOpenError,
    # counted as a rejection, though the upstream answered).
    service = {
        "base_url": upstream.url,
        "breaker": {"fail_max": 2, "reset_timeout": 30},
        "retry": {"total": 1, "backoff_factor": 0, "backoff_jitter": 0},
    }
    state = {"backend": "redis", "url": redis_url, "prefix": "same", "sync_interval": 0.2}
    mapping = {"services": {"api": service}, **({"state": state} if backend == "redis" else {})}
    with Registry.from_mapping(mapping) as worker, Registry.from_mapping(mapping) as other:
        elsewhere = other if backend == "redis" else worker
        elsewhere.session("api").get("status/503", retries=False)  # the first failure
        before = upstream.hits
        response = worker.session("api").get("status/503")
        assert response.status_code == 503
        assert upstream.hits - before == 1  # the retry was denied, not sent and not refused
        assert _state(worker) == "open"
        stats = worker["api"].policy.stats
        assert stats.short_circuited == 0
        assert stats.last_error is not None
        assert stats.last_error.type == "HTTPStatus"
