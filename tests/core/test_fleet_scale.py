"""A fleet past one machine's worth of workers (issue 26, item 7), simulated with a real Redis and fake worker keys.

One real registry publishes its stats; they are copied under W made-up worker ids, as W live workers would publish
them. A report of a large fleet reads one merged record (O(services)), not every worker's stats; an idle worker
costs Redis at most a couple of commands per sync interval. Bytes and commands are Redis's own counters
(``INFO stats``, ``INFO commandstats``: every command a script runs counts).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import outbound
from outbound import Registry
from outbound._state import redis as fleet_redis
from tests.upstream import Upstream, wait_until

SERVICES = 5
PREFIX = "scale"


def _mapping(redis_url: str, upstream: Upstream, sync_interval: float) -> dict[str, Any]:
    return {
        "services": {f"s{i}": {"base_url": upstream.url, "retry": None} for i in range(SERVICES)},
        # The merge reads every live worker's stats (1.4 MB for 1,000): more than the default 50 ms of socket time on
        # a loaded machine, as in a large fleet (docs/fleet.md: raise state.timeout past a few hundred workers).
        "state": {
            "backend": "redis",
            "url": redis_url,
            "prefix": PREFIX,
            "sync_interval": sync_interval,
            "timeout": 2.0,
        },
    }


@pytest.fixture
def worker(redis_url: str, upstream: Upstream) -> Iterator[Registry]:
    registry = Registry.from_mapping(_mapping(redis_url, upstream, sync_interval=0.1))
    for i in range(SERVICES):
        registry.session(f"s{i}").get("ok")
    yield registry
    registry.close()


def copy_worker(client: redis.Redis, registry: Registry, workers: int) -> None:
    """Copy ``registry``'s published stats under ``workers`` made-up worker ids, live for a minute."""
    state = registry._state  # type: ignore[attr-defined]
    key = f"{PREFIX}:stats:{state.worker}"
    current = json.dumps(state._published_stats())
    assert wait_until(lambda: client.get(key) == current.encode(), timeout=5)  # its latest calls published
    record = client.get(key)
    pipeline = client.pipeline(transaction=False)
    for n in range(workers):
        fake = f"fake-{n}:{n + 1}:{n:06x}"
        pipeline.set(f"{PREFIX}:stats:{fake}", record, px=60_000)
        pipeline.zadd(f"{PREFIX}:workers", {fake: int(time.time() * 1000)})
    pipeline.execute()


def bytes_of_report(client: redis.Redis, registry: Registry) -> tuple[int, dict[str, Any]]:
    """Bytes Redis sent for one ``health()`` (nothing else talks to it meanwhile: the next sync is far off)."""
    before = client.info("stats")["total_net_output_bytes"]
    report = registry.health()
    after = client.info("stats")["total_net_output_bytes"]
    return after - before, report  # the first INFO's answer counts too: small next to the bound


def test_a_large_fleets_report_reads_one_merged_record(redis_url: str, upstream: Upstream) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    registry = Registry.from_mapping(_mapping(redis_url, upstream, sync_interval=30))  # no sync during the test
    try:
        for i in range(SERVICES):
            registry.session(f"s{i}").get("ok")
        registry._state._sync()  # type: ignore[attr-defined]  # publish once, as the fleet thread does
        copy_worker(client, registry, 1000)
        first = registry.health()  # no merged record yet: this report merges (once)
        assert first["workers"] == 1001
        assert first["services"]["s0"]["stats"]["requests"] == 1001  # 1,000 copies and this process's own
        read, report = bytes_of_report(client, registry)
        assert report == first
        assert read <= 20_000, read  # O(services), not 1,000 x the stats of one worker
    finally:
        registry.close()


def test_the_check_fails_when_every_worker_is_read(
    redis_url: str, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broken variant: every report reads every worker's stats (as before issue 26).
    monkeypatch.setattr(fleet_redis, "SMALL_FLEET", 10**6)
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    registry = Registry.from_mapping(_mapping(redis_url, upstream, sync_interval=30))
    try:
        registry.session("s0").get("ok")
        registry._state._sync()  # type: ignore[attr-defined]
        copy_worker(client, registry, 1000)
        read, report = bytes_of_report(client, registry)
        assert report["workers"] == 1001
        assert read > 20_000
    finally:
        registry.close()


def test_a_large_fleets_report_follows_new_calls_within_a_few_sync_intervals(worker: Registry, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    copy_worker(client, worker, 50)
    before = worker.health()["services"]["s1"]["stats"]["requests"]
    for _ in range(3):
        worker.session("s1").get("ok")
    # The merged record is rewritten by a fleet thread once a report finds it older than a sync interval (0.1 s).
    assert wait_until(lambda: worker.health()["services"]["s1"]["stats"]["requests"] == before + 3, timeout=5)
    assert worker.health()["workers"] == 51


def test_a_reset_clears_a_large_fleets_stats_at_once(worker: Registry, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    copy_worker(client, worker, 50)
    assert worker.health()["services"]["s2"]["stats"]["requests"] == 51
    worker.reset("s2")
    assert worker.health()["services"]["s2"]["stats"]["requests"] == 0  # the merge predates the reset: not counted


def test_bad_merged_records_are_skipped(worker: Registry, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    copy_worker(client, worker, 20)
    for junk in (b"not json", json.dumps({"s0": {"requests": -5}}).encode(), json.dumps([1, 2]).encode()):
        client.set(f"{PREFIX}:merged", junk, px=60_000)
        report = worker.health()
        assert report["state_backend"]["status"] == "ok"
        assert report["services"]["s0"]["stats"]["requests"] >= 0
    client.delete(f"{PREFIX}:merged")
    client.hset(f"{PREFIX}:merged", "s0", "1")  # a key of the wrong type
    assert worker.health()["state_backend"]["status"] == "ok"


def _commands(client: redis.Redis) -> int:
    return sum(int(entry["calls"]) for entry in client.info("commandstats").values())


def test_an_idle_worker_is_nearly_silent(redis_url: str, upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_redis, "_THOROUGH_EVERY", 10**6)  # the once-a-minute full sync aside
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    interval = 0.05
    registry = Registry.from_mapping(_mapping(redis_url, upstream, sync_interval=interval))
    try:
        for i in range(SERVICES):
            registry.session(f"s{i}").get("ok")
        time.sleep(1.0)  # its stats written, its calls out of the recent window's change
        before, start = _commands(client), time.monotonic()
        time.sleep(2.0)
        used, elapsed = _commands(client) - before - 2, time.monotonic() - start  # INFO itself counts, once each
        per_sync = used / (elapsed / interval)
        assert per_sync <= 2.0, per_sync  # GET of the fleet's version; every other sync, a PEXPIRE
        assert per_sync > 0.5, per_sync  # it does still follow the fleet
        # And it still follows the fleet: a decision elsewhere reaches it.
        with Registry.from_mapping(_mapping(redis_url, upstream, sync_interval=interval)) as other:
            other.isolate("s3")
            assert wait_until(lambda: registry["s3"].policy.breaker.state == "isolated", timeout=3)
    finally:
        registry.close()


def test_an_idle_worker_still_catches_a_decision_whose_message_it_missed(worker: Registry, redis_url: str) -> None:
    # A decision written without a message (as if the listener missed it): the version moved, the sync re-reads.
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    client.hset(f"{PREFIX}:breaker:s4", mapping={"state": "isolated", "opened": int(time.time() * 1000)})
    client.incr(f"{PREFIX}:version")
    assert wait_until(lambda: worker["s4"].policy.breaker.state == "isolated", timeout=3)
    with pytest.raises(outbound.CircuitOpenError):
        worker.session("s4").get("ok")


def test_a_merge_asked_for_while_cut_off_can_be_asked_for_again(worker: Registry) -> None:
    state = worker._state  # type: ignore[attr-defined]
    state._merge_queued = True
    state._reachable = False  # as when Redis went away between the report that asked and the fleet thread
    state._apply_op(fleet_redis.Merge())
    assert state._merge_queued is False  # the next report that finds the record stale asks again
    state._reachable = True
