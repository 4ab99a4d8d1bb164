"""The ``failing`` status: a service whose recent calls mostly fail while its breaker stays closed.

The rule (unit tests on the snapshots and on ``Stats`` with a fake clock), then real upstreams failing in the ways a
breaker does not catch at once: timeouts under a rate breaker short of ``minimum_calls``, pool timeouts (never a
breaker failure), failures between successes; the report, the HTTP status, the CLI and its exit code.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

import outbound
from outbound import cli
from outbound._outcome import Kind
from outbound._stats import Stats
from outbound.health import (
    FAILING_ERROR_RATE,
    FAILING_MINIMUM_CALLS,
    RECENT_SECONDS,
    STATUS_EXIT_CODES,
    STATUSES,
    BreakerSnapshot,
    PoolSnapshot,
    RecentCalls,
    ServiceHealth,
    StatsSnapshot,
    build_report,
    http_status,
    service_status,
    status_exit_code,
    worst,
)
from tests.conftest import FakeClock, RegistryFactory
from tests.core.conftest import SYNC_KINDS
from tests.upstream import Upstream

POOL = PoolSnapshot(max_connections=10)
FAILING = RecentCalls(calls=8, errors=8)
QUIET = RecentCalls()


# -- the rule ---------------------------------------------------------------------------------------------------------


def test_the_vocabulary_is_ordered_and_complete() -> None:
    assert STATUSES == ("ok", "degraded", "failing", "down")
    assert set(STATUS_EXIT_CODES) == set(STATUSES)
    assert STATUS_EXIT_CODES["failing"] == 0  # a failing dependency is reported, not a reason to fail a script
    assert worst("ok", "failing", "degraded") == "failing"
    assert worst("failing", "down") == "down"


@pytest.mark.parametrize(
    ("calls", "errors", "failing"),
    [
        (0, 0, False),
        (FAILING_MINIMUM_CALLS - 1, FAILING_MINIMUM_CALLS - 1, False),  # too few calls to judge
        (FAILING_MINIMUM_CALLS, FAILING_MINIMUM_CALLS, True),
        (10, 5, True),  # exactly half
        (10, 4, False),
        (1000, 499, False),
        (1000, 1000, True),
    ],
)
def test_failing_is_at_least_half_of_enough_recent_calls(calls: int, errors: int, failing: bool) -> None:
    assert FAILING_ERROR_RATE == 0.5
    recent = RecentCalls(calls=calls, errors=errors)
    assert recent.failing is failing
    assert (service_status("closed", POOL, recent=recent) == "failing") is failing


def test_failing_ranks_between_degraded_and_down() -> None:
    waiting = PoolSnapshot(max_connections=10, in_use=10, waiting=2)
    assert service_status("closed", POOL, recent=FAILING) == "failing"
    assert service_status("half-open", POOL, recent=FAILING) == "failing"
    assert service_status("closed", waiting, paused=True, recent=FAILING) == "failing"
    assert service_status("open", POOL, recent=FAILING) == "down"
    assert service_status("isolated", POOL, recent=FAILING) == "down"
    assert service_status("half-open", POOL, recent=QUIET) == "degraded"
    assert service_status("closed", POOL, recent=QUIET) == "ok"


def health(name: str, status: Any, *, critical: bool) -> ServiceHealth:
    return ServiceHealth(
        name=name,
        status=status,
        client="requests",
        base_url=f"https://{name}.internal/",
        critical=critical,
        breaker=BreakerSnapshot(
            state="open" if status == "down" else "closed", failures=0, opened_at=None, retry_in=None
        ),
        pool=POOL,
        stats=StatsSnapshot(recent=FAILING if status == "failing" else QUIET),
        last_error=None,
    )


def test_a_failing_service_makes_the_report_degraded_even_a_critical_one() -> None:
    # "Health reports, it doesn't kill": only a critical service that is down answers 503.
    report = build_report([health("payments", "failing", critical=True), health("search", "ok", critical=False)])
    assert report.status == "degraded"
    assert http_status(report) == 200
    assert status_exit_code(report) == 0
    down = build_report([health("payments", "failing", critical=True), health("orders", "down", critical=True)])
    assert down.status == "down"


# -- the recent window ------------------------------------------------------------------------------------------------


def test_the_window_counts_the_last_minute_and_forgets_what_is_older() -> None:
    clock = FakeClock(start=100.0)
    stats = Stats(clock=clock)

    def finish(kind: Kind, error: str | None) -> None:
        stats.started()
        stats.finished(kind, 0.01, error, "it failed" if error else None)

    for _ in range(5):
        finish(Kind.READ_TIMEOUT, "ReadTimeout")
    clock.advance(30)
    finish(Kind.RESPONSE, None)
    finish(Kind.CANCELLED, "CancelledError")  # says nothing about the upstream: not in the window
    finish(Kind.CLOSED, "RegistryClosedError")
    assert stats.snapshot().recent == RecentCalls(calls=6, errors=5)
    assert stats.export().recent == RecentCalls(calls=6, errors=5)  # what a fleet worker publishes
    assert stats.snapshot().as_dict()["recent"] == {
        "seconds": RECENT_SECONDS,
        "calls": 6,
        "errors": 5,
        "error_rate": 0.8333,
    }

    clock.advance(RECENT_SECONDS - 30 - 0.5)  # 59.5 s after the timeouts: still the last minute
    assert stats.snapshot().recent == RecentCalls(calls=6, errors=5)
    clock.advance(0.5)  # a minute after them: they age out, without a call to push them
    assert stats.snapshot().recent == RecentCalls(calls=1, errors=0)
    clock.advance(3600)  # an hour of quiet: every bucket is stale, none is counted again
    assert stats.snapshot().recent == RecentCalls()
    finish(Kind.RESPONSE, None)
    assert stats.snapshot().recent == RecentCalls(calls=1, errors=0)

    stats.requests, stats.errors = 8, 5
    stats.clear()
    assert stats.snapshot().recent == RecentCalls()


def test_the_window_is_exact_under_threads() -> None:
    stats = Stats(clock=lambda: 500.0)

    def calls() -> None:
        for index in range(500):
            stats.started()
            stats.finished(Kind.RESPONSE, 0.001, "HTTPStatus" if index % 2 else None, None)

    threads = [threading.Thread(target=calls) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stats.snapshot().recent == RecentCalls(calls=4000, errors=2000)


# -- real upstreams ---------------------------------------------------------------------------------------------------


def call(registry: outbound.Registry, kind: str, path: str) -> None:
    try:
        if kind == "requests":
            registry.session("api").get(path)
        else:
            registry.client("api").get(path)
    except outbound.OutboundError:
        pass


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_timeouts_under_a_rate_breaker_short_of_its_minimum_calls(
    upstream: Upstream, make_registry: RegistryFactory, kind: str
) -> None:
    # Every call times out; the rate breaker has not seen its minimum_calls yet, so it stays closed: "ok" before.
    registry = make_registry(
        api={
            "base_url": upstream.url,
            "client": kind,
            "retry": None,
            "timeout": {"connect": 2.0, "read": 0.1},
            "breaker": {"mode": "rate", "minimum_calls": 20},
        }
    )
    for _ in range(FAILING_MINIMUM_CALLS):
        call(registry, kind, "hold?seconds=2")
    report = registry.health()
    api = report["services"]["api"]
    assert api["breaker"]["state"] == "closed"
    assert api["status"] == "failing"
    assert api["stats"]["recent"] == {"seconds": 60, "calls": 5, "errors": 5, "error_rate": 1.0}
    assert api["last_error"]["type"] in ("ReadTimeoutError", "ReadTimeout")
    assert report["status"] == "degraded"
    assert outbound.health.http_status(report) == 200

    # Recovered: once successes are more than half of the last minute's calls, the service is ok again.
    for _ in range(FAILING_MINIMUM_CALLS + 1):
        call(registry, kind, "ok")
    assert registry.health()["services"]["api"]["status"] == "ok"


def test_pool_timeouts_fail_calls_without_ever_opening_the_breaker(
    upstream: Upstream, make_registry: RegistryFactory
) -> None:
    # A pool timeout is ours, never a breaker failure; every call but the one holding the connection fails.
    registry = make_registry(
        api={
            "base_url": upstream.url,
            "retry": None,
            "pool": {"max_connections": 1},
            "timeout": {"pool": 0.05, "read": 5.0},
            "breaker": {"fail_max": 1},
            "critical": True,
        }
    )
    holder = threading.Thread(target=call, args=(registry, "requests", "slow?delay=1.0"))
    holder.start()
    assert upstream.wait_for(lambda: upstream.hits_by_path["/slow"] == 1)
    for _ in range(FAILING_MINIMUM_CALLS):
        call(registry, "requests", "ok")
    holder.join()
    report = registry.report()
    api = report.services["api"]
    assert (api.breaker.state, api.stats.pool_timeouts) == ("closed", FAILING_MINIMUM_CALLS)
    assert api.status == "failing"
    assert api.stats.recent == RecentCalls(calls=6, errors=5)
    assert report.status == "degraded"  # critical, and failing: still not a 503

    output = cli.status(registry)
    assert output.code == 0
    row = next(line for line in output.text.splitlines() if line.startswith("api *"))
    assert row.split()[3:6] == ["failing", "closed", "0/1"]
    assert "5/6 failed" in row
    assert output.text.splitlines()[-1].startswith("overall: degraded")
    as_json = cli.status(registry, as_json=True)
    assert json.loads(as_json.text)["services"]["api"]["status"] == "failing"
    assert as_json.code == 0


def test_failures_between_successes_never_open_a_consecutive_breaker(
    upstream: Upstream, make_registry: RegistryFactory
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "retry": None, "breaker": {"fail_max": 2}})
    for _ in range(4):
        call(registry, "requests", "status/500")
        call(registry, "requests", "ok")
    api = registry.report().services["api"]
    assert (api.breaker.state, api.stats.recent) == ("closed", RecentCalls(calls=8, errors=4))
    assert api.status == "failing"
    assert registry.report(service="api").status == "degraded"
