"""The fleet rate limit leases permits in batches (issue 26, item 5): no Redis round trip per call, and never above
the limit at the upstream, with worker processes offering twice the limit."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

import outbound
from outbound import Registry
from tests.fleet_limit import busiest, run_workers
from tests.upstream import Upstream, wait_until

RATE = 100
WORKERS = 4


def _settings(upstream: Upstream, redis_url: str, rate: str, *, max_wait: float = 0) -> dict[str, object]:
    return {
        "services": {
            "api": {
                "base_url": upstream.url,
                "retry": None,
                "rate_limit": {"rate": rate, "scope": "fleet", "max_wait": max_wait},
            }
        },
        "state": {"backend": "redis", "url": redis_url, "prefix": f"limit-{uuid.uuid4().hex[:6]}"},
    }


def _lease_scripts(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_sequential_calls_lease_permits_in_batches(upstream: Upstream, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    settings = _settings(upstream, redis_url, "1000000/minute")  # a lease lives 2 s (5 % of the window, at most 2 s)
    settings["state"]["sync_interval"] = 60  # type: ignore[index]  # no fleet sync during the count
    with Registry.from_mapping(settings) as registry:
        session = registry.session("api")
        session.get("ok")
        before = _lease_scripts(client)
        for _ in range(400):
            assert session.get("ok").status_code == 200
        scripts = _lease_scripts(client) - before
    # The batch doubles while leases are spent before they expire: 1, 2, 4 ... 256, 512 (one per call before).
    assert scripts <= 12, scripts


def _worst_window(upstream: Upstream, redis_url: str, *, broken: bool) -> tuple[int, int]:
    settings = _settings(upstream, redis_url, f"{RATE}/second")
    start = time.monotonic()
    # Each worker offers RATE / 2 calls a second: twice the limit together.
    results = run_workers(settings, workers=WORKERS, seconds=3.0, interval=WORKERS / (2 * RATE), broken=broken)
    arrivals = upstream.arrived("/limited", since=start)
    assert sum(result["sent"] for result in results) == len(arrivals)
    return busiest(arrivals, 1.0), len(arrivals)


def test_four_workers_at_twice_the_limit_never_exceed_it_at_the_upstream(upstream: Upstream, redis_url: str) -> None:
    worst, sent = _worst_window(upstream, redis_url, broken=False)
    assert worst <= RATE * 1.03, worst
    assert sent >= RATE * 3 * 0.5, sent  # and the fleet still gets much of what it may send (about 0.93 unloaded)


def test_the_window_check_fails_for_a_lease_window_shorter_than_the_limits(upstream: Upstream, redis_url: str) -> None:
    worst, _ = _worst_window(upstream, redis_url, broken=True)
    assert worst > RATE * 1.03, worst


def test_a_small_limit_is_exact_across_workers(upstream: Upstream, redis_url: str) -> None:
    settings = _settings(upstream, redis_url, "10/minute")
    with Registry.from_mapping(settings) as a, Registry.from_mapping(settings) as b:
        sent, waits = 0, []
        for _ in range(8):
            for worker in (a, b):
                try:
                    worker.session("api").get("ok")
                    sent += 1
                except outbound.RateLimitedError as refused:
                    waits.append(refused.retry_in)
        assert sent == 10
        # The window, the send margin and a lease's life (5 % of it, at most 2 s): when the first lease leaves it.
        assert all(55 < wait <= 64 for wait in waits), waits


def test_a_refusal_whose_room_comes_at_once_is_still_a_refusal(
    upstream: Upstream, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis says when the window has room (at least 1 ms on); a round trip longer than that leaves "0 s from now"
    # by the time the call reads it. That is a refused permit all the same, never one sent without a permit.
    from outbound._state import lease

    monkeypatch.setattr(lease.LeasedPermits, "next_in", lambda self: 0.0)
    settings = _settings(upstream, redis_url, "1/minute")
    start = time.monotonic()
    # Two registries, as two worker processes: the second's own send gate has sent nothing, so only the lease's
    # refusal stands between its call and the upstream.
    with Registry.from_mapping(settings) as one, Registry.from_mapping(settings) as other:
        assert one.session("api").get("limited").status_code == 200
        with pytest.raises(outbound.RateLimitedError):
            other.session("api").get("limited")
    assert len(upstream.arrived("/limited", since=start)) == 1


def test_a_wrong_key_type_is_replaced_not_fatal(
    upstream: Upstream, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(upstream, redis_url, "5/second")
    prefix = settings["state"]["prefix"]  # type: ignore[index]
    redis.Redis.from_url(redis_url).set(f"{prefix}:ratelimit:api", "junk")
    with Registry.from_mapping(settings) as registry:
        assert registry.session("api").get("ok").status_code == 200
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_close_leaves_no_connection_to_redis(upstream: Upstream, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    before = len(client.client_list())
    with Registry.from_mapping(_settings(upstream, redis_url, "5/second")) as registry:
        registry.session("api").get("ok")
        assert len(client.client_list()) > before  # the lease's connection (and the fleet's)
    assert wait_until(lambda: len(client.client_list()) == before, timeout=5)


def _leases_by_thread(upstream: Upstream, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    # Calls at a steady pace through leases of 50 ms (5 % of a 1 s window): (leases asked for by the calling thread,
    # leases in all), counted where the script is run.
    import threading

    from outbound._state import lease

    asked: list[str] = []
    run = lease.LeasedPermits._run

    def counted(self: lease.LeasedPermits, *args: Any) -> tuple[int, int, int]:
        asked.append(threading.current_thread().name)
        return run(self, *args)

    monkeypatch.setattr(lease.LeasedPermits, "_run", counted)
    with Registry.from_mapping(_settings(upstream, redis_url, "1000000/second")) as registry:
        session = registry.session("api")
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert session.get("ok").status_code == 200
            time.sleep(0.002)
    return sum(1 for name in asked if name != "outbound-lease"), len(asked)


def test_a_steady_caller_switches_leases_without_a_round_trip(
    upstream: Upstream, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 26 item 5: the next lease is fetched ahead, off the calling thread; the calls only ask themselves while
    # the batch grows to their pace (1, 2, 4...), or when a lease thread was late.
    on_calls, total = _leases_by_thread(upstream, redis_url, monkeypatch)
    assert total >= 15, total  # 1.5 s of 50 ms leases: the leases did roll over
    assert on_calls <= total // 3, (on_calls, total)


def test_without_leases_fetched_ahead_every_lease_is_a_round_trip_of_a_call(
    upstream: Upstream, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from outbound._state import lease

    monkeypatch.setattr(lease, "RENEW_AT", 2.0)  # never ahead: the broken variant
    on_calls, total = _leases_by_thread(upstream, redis_url, monkeypatch)
    assert on_calls == total >= 15
