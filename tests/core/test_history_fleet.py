"""A fleet's history: every live worker's buckets summed by number, through a real Redis; a bad one skipped."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import outbound
from outbound import Registry
from tests.upstream import Upstream, wait_until

PREFIX = "history"


@pytest.fixture
def fleet(redis_url: str, upstream: Upstream) -> Iterator[Callable[[], Registry]]:
    made: list[Registry] = []

    def worker() -> Registry:
        registry = Registry.from_mapping(
            {
                "health": {"history": {"interval": 60.0, "buckets": 5}},
                "services": {"api": {"base_url": upstream.url, "retry": None, "breaker": {"fail_max": 3}}},
                "state": {"backend": "redis", "url": redis_url, "prefix": PREFIX, "sync_interval": 0.1},
            }
        )
        made.append(registry)
        return registry

    yield worker
    for registry in made:
        registry.close()


def _history(registry: Registry) -> dict[str, Any]:
    history: dict[str, Any] = registry.report(history=True).as_dict()["services"]["api"]["history"]
    return history


def test_the_fleet_history_sums_every_worker_and_marks_an_opening_once(fleet: Callable[[], Registry]) -> None:
    one, two = fleet(), fleet()
    for registry, calls in ((one, 3), (two, 4)):
        for _ in range(calls):
            registry.session("api").get("ok")
    # Both workers' buckets of this minute (a minute: the calls of this test fall in one or two of them).
    assert wait_until(lambda: sum(_history(one)["calls"]) == 7, timeout=5.0)
    assert sum(_history(two)["calls"]) == 7
    for _ in range(3):
        with contextlib.suppress(outbound.CircuitOpenError):
            one.session("api").get("status/503")
    assert wait_until(lambda: two["api"].policy.breaker.state == "open", timeout=5.0)
    assert wait_until(lambda: sum(_history(two)["errors"]) == 3, timeout=5.0)
    # Each worker marked the opening (one decided it, the other followed): the fleet's history shows it once.
    assert [mark["state"] for mark in _history(two)["marks"]] == ["open"]


def test_a_bad_history_is_skipped_and_the_stats_beside_it_kept(
    fleet: Callable[[], Registry], redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    own = fleet()
    own.session("api").get("ok")
    bucket = int(time.time() // 60.0)
    good = {
        "requests": 5,
        "history": {"interval": 60.0, "buckets": [[bucket, [5, 1, 0, 0, 1], {"30": 5}]], "marks": []},
    }
    bad = [
        {"requests": 2, "history": {"interval": 10.0, "buckets": []}},  # another interval
        {"requests": 2, "history": {"interval": 60.0, "buckets": [[bucket, [1, 2, 3], {}]]}},
        {"requests": 2, "history": {"interval": 60.0, "buckets": [[bucket, [1, 0, 0, 0, 0], {"7": -1}]]}},
        {"requests": 2, "history": "x" * 1000},
        {"requests": 2, "history": {"interval": 60.0, "buckets": [[bucket, [1, 0, 0, 0, -1], {}]]}},  # stale < 0
        {"requests": 2, "history": {"interval": 60.0, "buckets": [[bucket, [1, 0, 0, 0, 0.5], {}]]}},
    ]
    client = redis.Redis.from_url(redis_url)
    live = int(time.time() * 1000) + 60_000
    for index, record in enumerate([good, *bad]):
        worker = f"fake-{index}:1:{index:06x}"
        client.set(f"{PREFIX}:stats:{worker}", json.dumps({"api": record}), px=60_000)
        client.zadd(f"{PREFIX}:workers", {worker: live})
    with caplog.at_level(logging.WARNING, logger="outbound.fleet"):
        report = own.report(history=True).as_dict()["services"]["api"]
    assert report["stats"]["requests"] == 1 + 5 + 2 * len(bad)  # every record's stats were counted
    assert sum(report["history"]["calls"]) == 1 + 5  # the good histories alone
    assert sum(report["history"]["errors"]) == 1
    assert sum(report["history"]["stale"]) == 1  # the good record's stale answer, none of the bad ones'
    assert any("skipped a worker's history of 'api'" in record.getMessage() for record in caplog.records)
