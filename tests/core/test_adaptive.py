"""Adaptive protection (issue 32) against real servers on 127.0.0.1: the adaptive concurrency limit, client-side
throttling, retry tokens, the breaker's growing open period, criticality, and their configuration errors."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import outbound
from benchmarks._capacity import CapacityServer
from outbound._adaptive import ConcurrencyLimit
from outbound._criticality import current, request_finished, request_started
from outbound._throttle import Throttle
from outbound.testing import no_waits
from tests.conftest import RegistryFactory
from tests.upstream import Upstream


def stage(registry: outbound.Registry, cls: type) -> Any:
    found = [stage for stage in registry["s"].policy.stages if type(stage) is cls]
    assert len(found) == 1, registry["s"].policy.stages
    return found[0]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < ends, "timed out"
        time.sleep(0.01)


@pytest.fixture
def capacity() -> Iterator[CapacityServer]:
    with CapacityServer(capacity=2, service=0.02) as server:
        yield server


def background(work: Callable[[], Any], count: int) -> list[threading.Thread]:
    """``work`` in ``count`` threads, each in a copy of the caller's context (its criticality)."""
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


# -- the adaptive concurrency limit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_an_attempt_over_the_limit_is_refused_with_concurrency_limited_error(
    make_registry: RegistryFactory, upstream: Upstream, client: str
) -> None:
    registry = make_registry(
        s={"base_url": upstream.url, "client": client, "concurrency": {"initial": 2, "min": 1, "max": 2}}
    )
    limit = stage(registry, ConcurrencyLimit)
    call = (registry.session if client == "requests" else registry.client)("s")
    with outbound.criticality("critical"):
        threads = background(lambda: call.get("slow?delay=0.4"), 2)
        wait_for(lambda: limit.in_flight == 2)
        with pytest.raises(outbound.ConcurrencyLimitedError) as caught:
            call.get("ok")
    assert isinstance(caught.value, outbound.RejectedError)
    assert "the adaptive limit is 2" in str(caught.value)
    assert upstream.recent("/ok") == []  # nothing was sent
    for thread in threads:
        thread.join(timeout=5)
    assert limit.in_flight == 0
    assert call.get("ok").status_code == 200


def test_a_critical_call_waits_up_to_max_wait_for_a_slot(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make_registry(
        s={"base_url": upstream.url, "concurrency": {"initial": 1, "min": 1, "max": 1, "max_wait": 5}}
    )
    limit = stage(registry, ConcurrencyLimit)
    session = registry.session("s")
    with outbound.criticality("critical"):
        threads = background(lambda: session.get("slow?delay=0.2"), 1)
        wait_for(lambda: limit.in_flight == 1)
        assert session.get("ok").status_code == 200  # waited for the slow call's slot
    for thread in threads:
        thread.join(timeout=5)
    assert limit.in_flight == 0


def test_a_sheddable_call_is_refused_first_and_never_waits(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make_registry(
        s={"base_url": upstream.url, "concurrency": {"initial": 4, "min": 4, "max": 4, "max_wait": 5}}
    )
    limit = stage(registry, ConcurrencyLimit)
    session = registry.session("s")
    with outbound.criticality("critical"):
        threads = background(lambda: session.get("slow?delay=0.4"), 3)
        wait_for(lambda: limit.in_flight == 3)
        started = time.monotonic()
        with outbound.criticality("sheddable"), pytest.raises(outbound.ConcurrencyLimitedError) as caught:
            session.get("ok")  # three quarters of the limit are in flight: the last quarter is for critical calls
        assert time.monotonic() - started < 0.3  # refused at once, not after max_wait
        assert "sheddable" in str(caught.value)
        assert session.get("ok").status_code == 200  # a critical call takes the last slot
    for thread in threads:
        thread.join(timeout=5)


@pytest.mark.parametrize("algorithm", ["gradient2", "vegas"])
def test_the_limit_comes_down_towards_a_small_upstreams_capacity(
    make_registry: RegistryFactory, capacity: CapacityServer, algorithm: str
) -> None:
    """An upstream that works on 2 requests at once, 12 callers: the limit leaves its initial 20."""
    registry = make_registry(
        s={
            "base_url": capacity.url,
            "client": "httpx",
            "pool": {"max_connections": 32},
            "retry": {"total": 0},
            "concurrency": {"algorithm": algorithm, "initial": 20},
        }
    )
    limit = stage(registry, ConcurrencyLimit)
    client = registry.client("s")
    stop = threading.Event()

    def work() -> None:
        with outbound.criticality("critical"):
            while not stop.is_set():
                try:
                    client.get("x")
                except outbound.ConcurrencyLimitedError as error:
                    stop.wait(max(0.02, error.retry_in))

    threads = background(work, 12)
    try:
        wait_for(lambda: limit.limit < 12, timeout=60)  # vegas needs longer on a loaded machine
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
    assert limit.config.min <= limit.limit < 12
    assert limit.in_flight == 0


@pytest.mark.parametrize("algorithm", ["gradient2", "vegas", "aimd"])
def test_answers_that_say_too_much_shrink_the_limit(
    make_registry: RegistryFactory, upstream: Upstream, algorithm: str
) -> None:
    registry = make_registry(
        s={
            "base_url": upstream.url,
            "retry": None,
            "breaker": {"fail_max": 1000},
            "concurrency": {"algorithm": algorithm, "initial": 20},
        }
    )
    limit = stage(registry, ConcurrencyLimit)
    session = registry.session("s")
    ends = time.monotonic() + 5
    while limit.limit >= 20 and time.monotonic() < ends:
        assert session.get("status/503").status_code == 503  # a drop, even with one call in flight
        time.sleep(0.01)
    assert limit.limit < 20


def test_the_limit_holds_while_the_caller_sends_little(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make_registry(s={"base_url": upstream.url, "concurrency": {"initial": 20}})
    limit = stage(registry, ConcurrencyLimit)
    session = registry.session("s")
    for _ in range(40):
        assert session.get("ok").status_code == 200
    assert limit.limit == 20  # one call in flight at a time says nothing about the upstream's capacity


# -- throttling -----------------------------------------------------------------------------------------------------


def test_throttling_refuses_most_first_attempts_to_an_upstream_that_fails(
    make_registry: RegistryFactory, upstream: Upstream
) -> None:
    registry = make_registry(
        s={"base_url": upstream.url, "retry": None, "breaker": {"fail_max": 1000}, "throttle": {"k": 2}}
    )
    session = registry.session("s")
    throttled: list[outbound.ThrottledError] = []
    for _ in range(200):
        try:
            assert session.get("status/503").status_code == 503
        except outbound.ThrottledError as error:
            throttled.append(error)
    assert all(error.retry_in > 0 for error in throttled)
    sent = len(upstream.recent("/status/503"))
    assert len(throttled) + sent == 200
    assert len(throttled) > 100  # k=2 against an upstream that accepts nothing: most are refused here
    assert sent >= 2  # but it keeps being asked: a recovery is noticed


def test_throttling_never_refuses_calls_to_a_healthy_upstream(
    make_registry: RegistryFactory, upstream: Upstream
) -> None:
    registry = make_registry(s={"base_url": upstream.url, "throttle": {"k": 1}})
    session = registry.session("s")
    for _ in range(200):
        assert session.get("ok").status_code == 200
    throttle = stage(registry, Throttle)
    assert throttle.probability() == 0.0
    assert throttle.snapshot()["accepts"] == 200


def test_throttling_sheds_sheddable_calls_first() -> None:
    clock = [100.0]
    throttle = Throttle(outbound.ThrottleConfig(k=2.0), frozenset({503}), clock=lambda: clock[0])
    throttle.requests, throttle.accepts = 100, 30
    assert throttle.probability(critical=False) == pytest.approx(40 / 101)
    assert throttle.probability(critical=True) == 0.0


# -- retry tokens ---------------------------------------------------------------------------------------------------


def test_retry_tokens_stop_retries_to_an_upstream_that_fails(
    make_registry: RegistryFactory, upstream: Upstream
) -> None:
    retry = {"total": 3, "backoff_factor": 0, "backoff_jitter": 0, "budget": None, "respect_retry_after": False}
    registry = make_registry(
        s={
            "base_url": upstream.url,
            "retry": {**retry, "tokens": {"max": 4, "ratio": 0.1}},
            "breaker": {"fail_max": 1000},
        },
        bare={"base_url": upstream.url, "retry": retry, "breaker": {"fail_max": 1000}},
    )
    with no_waits():
        for _ in range(20):
            assert registry.session("s").get("status/503").status_code == 503
        with_tokens = len(upstream.recent("/status/503"))
        for _ in range(20):
            assert registry.session("bare").get("status/503").status_code == 503
        without = len(upstream.recent("/status/503")) - with_tokens
    assert without == 80  # every call retried three times
    assert with_tokens <= 20 + 2  # the first failures spent the pool: 2 retries, then none


def test_retry_tokens_allow_retries_while_most_attempts_succeed(
    make_registry: RegistryFactory, upstream: Upstream
) -> None:
    registry = make_registry(
        s={
            "base_url": upstream.url,
            "retry": {"total": 2, "backoff_factor": 0, "budget": None, "tokens": {"max": 10}},
        }
    )
    session = registry.session("s")
    with no_waits():
        for index in range(3):
            for _ in range(20):
                assert session.get("ok").status_code == 200  # each success gives back 0.1 token
            assert session.get(f"fail-then-ok?fails=1&key=tokens-{index}").status_code == 200  # retried


# -- the breaker's growing open period ------------------------------------------------------------------------------


def test_each_failed_trial_doubles_the_open_period_until_a_close_resets_it(
    make_registry: RegistryFactory, upstream: Upstream
) -> None:
    registry = make_registry(
        s={
            "base_url": upstream.url,
            "retry": None,
            "breaker": {"fail_max": 1, "reset_timeout": 0.1, "backoff": {"factor": 2, "max": 0.3}},
        }
    )
    session = registry.session("s")
    breaker = registry["s"].policy.breaker
    assert session.get("status/503").status_code == 503
    assert breaker.state == "open"
    opened = []
    for _ in range(3):
        opened.append(breaker.open_seconds())
        time.sleep((breaker.retry_in() or 0) + 0.01)
        assert session.get("status/503").status_code == 503  # the trial fails
    assert opened == [0.1, 0.2, 0.3]  # 0.1, then 0.2, then capped at 0.3
    assert breaker.open_seconds() == pytest.approx(0.3)
    time.sleep((breaker.retry_in() or 0) + 0.01)
    assert session.get("ok").status_code == 200  # the trial succeeds: closed
    assert breaker.state == "closed"
    assert breaker.open_seconds() == 0.1


def test_without_backoff_every_opening_lasts_reset_timeout(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make_registry(
        s={"base_url": upstream.url, "retry": None, "breaker": {"fail_max": 1, "reset_timeout": 0.05}}
    )
    session = registry.session("s")
    breaker = registry["s"].policy.breaker
    for _ in range(3):
        time.sleep((breaker.retry_in() or 0) + 0.01)
        assert session.get("status/503").status_code == 503
        assert breaker.open_seconds() == 0.05


# -- criticality ----------------------------------------------------------------------------------------------------


def test_criticality_scopes_nest_and_default_to_sheddable_outside_a_request() -> None:
    assert current() == "sheddable"
    with outbound.criticality("critical"):
        assert current() == "critical"
        with outbound.criticality("sheddable"):
            assert current() == "sheddable"
        assert current() == "critical"
    assert current() == "sheddable"
    with pytest.raises(ValueError, match="'critical' or 'sheddable'"):
        outbound.criticality("urgent")  # type: ignore[arg-type]


def test_a_request_makes_its_calls_critical_until_it_ends() -> None:
    token = request_started()
    assert current() == "critical"
    with outbound.criticality("sheddable"):
        assert current() == "sheddable"
    request_finished(token)
    assert current() == "sheddable"


def test_a_flask_request_is_critical_and_code_outside_it_sheddable(upstream: Upstream) -> None:
    flask = pytest.importorskip("flask")
    from outbound_flask import Outbound

    app = flask.Flask(__name__)
    app.config["OUTBOUND"] = {"services": {"s": {"base_url": upstream.url}}}
    Outbound(app)

    @app.route("/level")
    def level() -> str:
        return current()

    assert app.test_client().get("/level").text == "critical"
    assert current() == "sheddable"


# -- configuration --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "key", "words"),
    [
        ({"concurrency": {"min": 10, "max": 5}}, "concurrency.min", "must be <= max (5)"),
        ({"concurrency": {"algorithm": "bbr"}}, "concurrency.algorithm", "'gradient2' or 'vegas' or 'aimd'"),
        ({"concurrency": {"initial": 500, "max": 100}}, "concurrency.initial", "between min (1) and max (100)"),
        ({"concurrency": {"limit": 10}}, "concurrency.limit", "'adaptive'"),
        ({"throttle": {"k": 0.5}}, "throttle.k", "must be >= 1"),
        ({"throttle": {"window": 0.5}}, "throttle.window", "from 1 to 3600"),
        ({"retry": {"tokens": {"max": 0.5}}}, "retry.tokens.max", "must be >= 1"),
        ({"breaker": {"backoff": {"factor": 0.5}}}, "breaker.backoff.factor", "must be >= 1"),
        ({"breaker": {"backoff": {"max": 0}}}, "breaker.backoff.max", "> 0"),
    ],
)
def test_bad_settings_are_config_errors_naming_service_and_key(settings: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(outbound.ConfigError) as caught:
        outbound.parse_config({"services": {"billing": {"base_url": "http://127.0.0.1:1/", **settings}}})
    error = caught.value
    assert (error.service, error.key) == ("billing", key)
    assert words in str(error)


def test_the_settings_parse_with_their_defaults() -> None:
    config = outbound.parse_config(
        {
            "services": {
                "s": {
                    "base_url": "http://127.0.0.1:1/",
                    "concurrency": {},
                    "throttle": {},
                    "retry": {"tokens": {}},
                    "breaker": {"backoff": {}},
                }
            }
        }
    ).services["s"]
    assert config.concurrency == outbound.ConcurrencyConfig()
    assert (config.concurrency.algorithm, config.concurrency.initial) == ("gradient2", 20)
    assert config.throttle == outbound.ThrottleConfig(k=2.0, window=120.0)
    assert config.retry.tokens == outbound.TokensConfig(max=10.0, ratio=0.1)
    assert config.breaker.backoff == outbound.BreakerBackoffConfig(factor=2.0, max=300.0)


def test_refusals_are_answered_503_with_retry_after() -> None:
    for cls, reason in (
        (outbound.ConcurrencyLimitedError, "concurrency_limited"),
        (outbound.ThrottledError, "throttled"),
    ):
        error = cls("refused")
        error.retry_in = 1.5
        answer = outbound.error_answer(error)
        assert answer is not None
        assert (answer.status, answer.reason) == (503, reason)


def test_a_grown_open_period_holds_across_the_fleet(redis_url: str, upstream: Upstream) -> None:
    """breaker.backoff with a fleet: a worker that sees another's failed trial keeps the grown open period (a remote
    opening is capped at backoff.max, not at reset_timeout)."""
    service = {
        "base_url": upstream.url,
        "retry": None,
        "breaker": {"fail_max": 1, "reset_timeout": 0.3, "backoff": {"factor": 10, "max": 30}},
    }
    state = {"backend": "redis", "url": redis_url, "prefix": "backoff", "sync_interval": 0.1}
    workers = [outbound.Registry.from_mapping({"services": {"api": service}, "state": state}) for _ in range(2)]
    try:
        breakers = [worker["api"].policy.breaker for worker in workers]
        for worker in workers:
            assert worker.session("api").get("ok").status_code == 200
        assert workers[0].session("api").get("status/503").status_code == 503
        wait_for(lambda: all(breaker.state == "open" for breaker in breakers))
        time.sleep((breakers[1].retry_in() or 0) + 0.05)
        assert workers[1].session("api").get("status/503").status_code == 503  # the trial fails: open for 3 s
        assert breakers[1].open_seconds() == pytest.approx(3.0)
        wait_for(lambda: (breakers[0].retry_in() or 0) > 1.0)  # not cut to reset_timeout's 0.3 s
    finally:
        for worker in workers:
            worker.close()


def test_the_async_client_meets_the_limit_and_a_reset_forgets_what_was_learned(
    make_registry: RegistryFactory, upstream: Upstream
) -> None:
    import asyncio

    import httpx

    registry = make_registry(
        s={"base_url": upstream.url, "client": "httpx", "concurrency": {"initial": 1, "min": 1, "max": 1}}
    )
    limit = stage(registry, ConcurrencyLimit)

    async def main() -> list[Any]:
        client = registry.async_client("s")
        with outbound.criticality("critical"):
            return await asyncio.gather(
                client.get("slow?delay=0.3"), client.get("slow?delay=0.3"), return_exceptions=True
            )

    outcomes = asyncio.run(main())
    refused = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    assert len(refused) == 1
    assert isinstance(refused[0], outbound.ConcurrencyLimitedError)
    assert isinstance(refused[0], httpx.TransportError)  # what an httpx caller already catches
    assert limit.in_flight == 0
    limit.limit = 0.5
    registry.reset("s")
    assert limit.limit == 1.0  # back to initial


# -- the fleet-wide adaptive limit (concurrency.scope: "fleet") ------------------------------------------------------


def fleet_workers(url: str, redis_url: str, count: int, concurrency: dict[str, Any]) -> list[outbound.Registry]:
    """``count`` registries on one Redis: each its own worker of the fleet, as processes of a gunicorn app are."""
    service = {"base_url": url, "client": "httpx", "retry": {"total": 0}, "pool": {"max_connections": 32}}
    service["concurrency"] = {"scope": "fleet", "sync_interval": 0.05, **concurrency}
    state = {"backend": "redis", "url": redis_url, "prefix": "adaptive"}
    return [outbound.Registry.from_mapping({"services": {"s": service}, "state": state}) for _ in range(count)]


def fleet_stage(registry: outbound.Registry) -> Any:
    from outbound._state.concurrency import FleetConcurrencyLimit

    return stage(registry, FleetConcurrencyLimit)


def critical_callers(clients: list[Any], per_client: int, path: str, stop: threading.Event) -> list[threading.Thread]:
    def work(client: Any) -> None:
        with outbound.criticality("critical"):
            while not stop.is_set():
                try:
                    client.get(path)
                except outbound.ConcurrencyLimitedError as error:
                    stop.wait(max(0.01, error.retry_in))

    threads = [
        threading.Thread(target=work, args=(client,), daemon=True) for client in clients for _ in range(per_client)
    ]
    for thread in threads:
        thread.start()
    return threads


def test_a_fleet_limit_is_shared_out_so_the_fleets_calls_in_flight_stay_within_it(
    redis_url: str, upstream: Upstream
) -> None:
    """Three workers, three callers each, a fleet limit held at 4: the fleet never has more than the limit in flight
    (and a slot of slack while a shrinking share's calls end), where three per-process limits of 4 would let 9 in."""
    workers = fleet_workers(upstream.url, redis_url, 3, {"initial": 4, "min": 4, "max": 4})
    limits = [fleet_stage(worker) for worker in workers]
    clients = [worker.client("s") for worker in workers]
    stop = threading.Event()
    threads = critical_callers(clients, 3, "slow?delay=0.1", stop)
    try:
        wait_for(lambda: all(limit.following and limit.workers == 3 for limit in limits))
        time.sleep(0.3)  # the workers that synced first took the room the others had not claimed yet: let it settle
        counts = []
        ends = time.monotonic() + 2.0
        while time.monotonic() < ends:
            counts.append(sum(limit.in_flight for limit in limits))
            time.sleep(0.005)
        assert len(counts) > 50
        # Never the 9 three limits of their own admit; one more than the limit for a moment while a share that moved
        # to another worker still has its call in flight (two on a machine that delays a sync thread).
        assert max(counts) <= 6, max(counts)
        assert sum(counts) / len(counts) <= 4.5, sum(counts) / len(counts)
        assert all(limit.limit == 4 for limit in limits)
        assert all(0 <= limit.slots <= 4 for limit in limits)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        for worker in workers:
            worker.close()


def test_the_fleet_learns_one_limit_from_every_workers_answers(redis_url: str, capacity: CapacityServer) -> None:
    """An upstream that works on 2 requests at once, 3 workers of 4 callers: the fleet's one limit leaves its
    initial 20, and every worker holds the same limit (the learner's), each admitting a share of it."""
    workers = fleet_workers(capacity.url, redis_url, 3, {"initial": 20})
    limits = [fleet_stage(worker) for worker in workers]
    stop = threading.Event()
    threads = critical_callers([worker.client("s") for worker in workers], 4, "x", stop)
    try:
        wait_for(lambda: max(limit.limit for limit in limits) < 12, timeout=60)
        wait_for(lambda: len({round(limit.limit, 3) for limit in limits}) == 1, timeout=5)
        assert all(limit.following for limit in limits)
        assert sum(limit.slots for limit in limits) <= int(limits[0].limit) + 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        for worker in workers:
            worker.close()
    assert all(limit.in_flight == 0 for limit in limits)


def test_with_redis_unreachable_a_fleet_limit_holds_per_process_with_one_warning(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    caplog.set_level("WARNING", logger="outbound.fleet")
    (worker,) = fleet_workers(upstream.url, dead, 1, {"initial": 2, "min": 1, "max": 2})
    try:
        limit = fleet_stage(worker)
        session = worker.client("s")
        for _ in range(5):
            assert session.get("ok").status_code == 200
        wait_for(lambda: limit._daemon.running)
        time.sleep(0.3)  # several syncs, each failing
        assert not limit.following
        assert limit.slots == 2  # the limit of its own: as with scope "process"
        # One WARNING for the process, whichever of the fleet's users met the outage first (the backend, this
        # limit), naming state.url and saying the limits hold per process.
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, [record.getMessage() for record in warnings]
        assert f"state.url {dead}" in warnings[0].getMessage()
        assert "limits" in warnings[0].getMessage()
    finally:
        worker.close()


def test_hostile_records_in_redis_are_skipped_never_fatal(
    redis_url: str, redis_server: Any, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """Anything under the fleet's keys: a learner lease without expiry, a limit that is not a number, counts that
    are not numbers, worker records that are not three numbers or are out of range. The worker follows the fleet
    all the same, takes the learner's lease, and reads only the valid records."""
    client = redis_server.client()
    key = "adaptive:concurrency:s"
    client.set(f"{key}:learner", "ghost")  # no expiry: it would stop the fleet from learning forever
    client.hset(
        key,
        mapping={
            "limit": "not a number",
            "n": "xyz",
            "s": "-5",
            "d": "1e400",
            "w:torn": "1:2",
            "w:words": "a:b:c",
            "w:huge": f"9999999:1:{10**15}",
            "w:neg": "-1:1:99999999999999",
        },
    )
    caplog.set_level("WARNING", logger="outbound.fleet")
    (worker,) = fleet_workers(upstream.url, redis_url, 1, {"initial": 3, "min": 1, "max": 10})
    try:
        limit = fleet_stage(worker)
        limit.sync()
        assert limit.following
        assert limit.limit == 3.0  # the bad limit ignored: the initial one
        assert limit.workers == 1  # only this worker's record counted
        assert limit.slots == 3
        assert client.get(f"{key}:learner") == limit.worker.encode()  # the lease without expiry was cleared
        fields = client.hgetall(key)
        assert b"w:torn" not in fields
        assert b"w:words" not in fields
        assert b"w:neg" not in fields
        assert worker.client("s").get("ok").status_code == 200
        client.delete(key)
        client.set(key, "a string where a hash belongs")
        limit.sync()
        assert limit.following
        assert client.type(key) == b"hash"
        assert any("skipped" in record.getMessage() for record in caplog.records)
    finally:
        worker.close()


def test_shares_follow_demand_and_add_up_to_the_limit() -> None:
    from outbound._state.concurrency import shares

    assert shares(10, {"a": 2, "b": 1}) == {"a": 2 + 4, "b": 1 + 3} or shares(10, {"a": 2, "b": 1}) == {
        "a": 2 + 3,
        "b": 1 + 4,
    }  # both get what they want; the room left is split evenly
    wanted = shares(8, {"a": 12, "b": 6, "c": 6})
    assert wanted == {"a": 4, "b": 2, "c": 2}
    for rotation in range(20):
        split = shares(3, {"a": 5, "b": 5, "c": 5, "d": 5}, rotation)
        assert sum(split.values()) == 3
        assert max(split.values()) == 1
    losers = {next(w for w, n in shares(3, dict.fromkeys("abcd", 5), r).items() if n == 0) for r in range(40)}
    assert len(losers) > 1  # a tie does not always go against the same worker
    assert shares(5, {}) == {}


@pytest.mark.parametrize(
    ("settings", "key", "words"),
    [
        ({"concurrency": {"scope": "fleet"}}, "concurrency.scope", "state.backend: 'redis'"),
        ({"concurrency": {"scope": "region"}}, "concurrency.scope", "'process' or 'fleet'"),
        ({"concurrency": {"sync_interval": 0}}, "concurrency.sync_interval", "> 0"),
        ({"retry": {"tokens": {"scope": "fleet"}}}, "retry.tokens.scope", "state.backend: 'redis'"),
        ({"retry": {"tokens": {"sync_interval": -1}}}, "retry.tokens.sync_interval", ">"),
    ],
)
def test_bad_fleet_settings_are_config_errors(settings: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(outbound.ConfigError) as caught:
        outbound.parse_config({"services": {"billing": {"base_url": "http://127.0.0.1:1/", **settings}}})
    assert (caught.value.service, caught.value.key) == ("billing", key)
    assert words in str(caught.value)


def test_the_health_report_shows_what_the_adaptive_stages_learned(
    make_registry: RegistryFactory, upstream: Upstream
) -> None:
    registry = make_registry(
        s={
            "base_url": upstream.url,
            "retry": {"total": 0, "tokens": {"max": 4, "ratio": 0.1}},
            "breaker": {"fail_max": 1000},
            "concurrency": {"initial": 5},
            "throttle": {"k": 2.0},
        },
        plain={"base_url": upstream.url},
    )
    session = registry.session("s")
    sent = 0
    for _ in range(3):
        try:
            session.get("status/503")
        except outbound.ThrottledError:
            continue  # the throttle refuses some of them already (at random, with the probability it shows)
        sent += 1
    report = registry.report()
    learned = report.services["s"].adaptive
    assert learned is not None
    concurrency = learned["concurrency"]
    assert (concurrency["in_flight"], concurrency["waiting"]) == (0, 0)
    assert 1 <= concurrency["limit"] <= 5  # 503s are drops: the limit shrinks from its initial 5 once a window ends
    throttle = learned["throttle"]
    assert (throttle["requests"], throttle["accepts"]) == (3, 0)
    assert throttle["probability"] == pytest.approx(0.75)  # (3 - 2 * 0) / (3 + 1): what it refuses now
    assert throttle["probability_critical"] == pytest.approx(0.75)
    assert learned["retry_tokens"] == {"tokens": 4.0 - sent, "max": 4.0, "retries_allowed": sent < 2}
    assert report.services["plain"].adaptive is None  # nothing configured, nothing shown
    shown = report.as_dict()["services"]
    assert shown["s"]["adaptive"]["retry_tokens"]["tokens"] == 4.0 - sent
    assert "adaptive" not in shown["plain"]
    from outbound import _page

    page = _page.render_page(registry.health())
    assert "<caption>Adaptive</caption>" in page
    assert "Retry tokens · Tokens" in page  # the status page shows the pool left, as a table of the card
    from outbound.cli import render_status

    table = render_status(registry.report())
    assert "s: adaptive: limit " in table
    assert "retry tokens " in table
    assert "plain: adaptive" not in table


# -- the fleet-wide retry token pool (retry.tokens.scope: "fleet") ---------------------------------------------------


def token_workers(url: str, redis_url: str, count: int) -> list[outbound.Registry]:
    service = {
        "base_url": url,
        "breaker": {"fail_max": 1000},
        "retry": {"total": 3, "backoff_factor": 0, "tokens": {"max": 4, "ratio": 0.1, "scope": "fleet"}},
    }
    state = {"backend": "redis", "url": redis_url, "prefix": "tokens"}
    return [outbound.Registry.from_mapping({"services": {"s": service}, "state": state}) for _ in range(count)]


def pool_of(registry: outbound.Registry) -> Any:
    from outbound._state.tokens import FleetRetryTokens

    return stage(registry, FleetRetryTokens)


def test_a_fleet_pool_stops_every_workers_retries_once_the_fleet_spent_it(redis_url: str, upstream: Upstream) -> None:
    """Pool 4, retries above half: worker A's failing call spends two tokens (a first attempt and one retry); worker
    B, which has not failed once, then retries nothing, where a pool of its own would let it retry once."""
    first, second = token_workers(upstream.url, redis_url, 2)
    try:
        pools = [pool_of(first), pool_of(second)]
        assert first.session("s").get("status/503").status_code == 503
        assert first["s"].health().stats.retries == 1
        pools[0].sync(force=True)
        pools[1].sync(force=True)
        assert pools[1].tokens == pytest.approx(2.0)
        assert pools[1].following
        assert second.session("s").get("status/503").status_code == 503
        assert second["s"].health().stats.retries == 0  # the fleet's pool is at half: no retry
        pools[1].sync(force=True)
        pools[0].sync(force=True)
        assert pools[0].tokens == pytest.approx(1.0)  # both workers' failures, in both views
        for _ in range(10):
            assert second.session("s").get("ok").status_code == 200  # ten successes give back one token
        pools[1].sync(force=True)
        pools[0].sync(force=True)
        assert pools[0].tokens == pytest.approx(2.0)
        assert pools[0].snapshot()["scope"] == "fleet"
    finally:
        first.close()
        second.close()


def test_a_fleet_pool_with_redis_unreachable_or_hostile_holds_per_process(
    redis_url: str, redis_server: Any, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    client = redis_server.client()
    client.hset("tokens:tokens:s", "a", "hash where a number belongs")
    (worker,) = token_workers(upstream.url, redis_url, 1)
    try:
        pool = pool_of(worker)
        pool.sync(force=True)
        assert pool.following  # the hash was no Redis error
        assert pool.tokens == 4.0  # ... and was replaced: a full pool
        client.set("tokens:tokens:s", "banana")
        assert worker.session("s").get("status/503").status_code == 503
        pool.sync(force=True)
        assert pool.tokens == pytest.approx(2.0)  # "banana" read as a full pool, then two failures
        assert float(client.get("tokens:tokens:s") or b"nan") == pytest.approx(2.0)
        client.set("tokens:tokens:s", "-7")  # a pool no worker wrote: read as a full one
        pool.sync(force=True)
        assert pool.tokens == 4.0
    finally:
        worker.close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    caplog.set_level("WARNING", logger="outbound.fleet")
    (alone,) = token_workers(upstream.url, dead, 1)
    try:
        pool = pool_of(alone)
        for _ in range(3):
            pool.sync(force=True)
        assert alone.session("s").get("status/503").status_code == 503
        assert alone["s"].health().stats.retries == 1  # its own pool of 4: one retry, as with scope "process"
        assert not pool.following
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]  # one for the process (see above)
        assert len(warnings) == 1, [record.getMessage() for record in warnings]
        assert f"state.url {dead}" in warnings[0].getMessage()
        assert "retry tokens" in warnings[0].getMessage()
    finally:
        alone.close()
