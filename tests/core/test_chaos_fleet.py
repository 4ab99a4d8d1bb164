"""The fleet's game-day switches (issue 28 items 1 and 4): `outbound chaos` and `outbound enforce` through a real
Redis, ended by Redis's clock; a bad record is skipped, never injected."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import outbound
from outbound import Registry, cli
from outbound._state.switches import chaos_key
from tests.redis_server import RedisServer
from tests.upstream import Upstream, wait_until


@pytest.fixture
def workers(redis_url: str, upstream: Upstream) -> Iterator[Callable[..., Registry]]:
    made: list[Registry] = []

    def worker(allow: bool = True, **service: Any) -> Registry:
        registry = Registry.from_mapping(
            {
                "chaos": {"allow": allow},
                "state": {"backend": "redis", "url": redis_url, "prefix": "gd", "sync_interval": 0.2},
                "services": {"api": {"base_url": upstream.url, "retry": {"total": 0}, **service}},
            }
        )
        made.append(registry)
        return registry

    yield worker
    for registry in made:
        registry.close()


def injected(registry: Registry) -> int:
    chaos = registry["api"].policy.chaos
    return sum(chaos.state().injected.values()) if chaos is not None else 0


def test_a_game_day_reaches_every_worker_and_ends_by_itself(workers: Callable[..., Registry]) -> None:
    fleet = [workers() for _ in range(3)]
    for registry in fleet:
        assert registry.session("api").get("ok").status_code == 200  # first use starts the follower
    operator = workers()
    out = cli.chaos(operator, "api", kind="status", rate=1.0, seconds=1.5, status=502)
    assert out.code == 0, out.text
    for registry in fleet:
        wait_until(lambda r=registry: r.session("api").get("ok").status_code == 502, timeout=3.0)
    assert all(registry.report().services["api"].chaos["source"] == "fleet" for registry in fleet)
    ended = time.monotonic() + 1.6
    wait_until(lambda: time.monotonic() > ended, timeout=3.0)
    for registry in fleet:
        assert registry.session("api").get("ok").status_code == 200  # over, without --off, on every worker


def test_off_ends_it_early(workers: Callable[..., Registry]) -> None:
    worker = workers(breaker={"fail_max": 1000})
    worker.session("api").get("ok")
    operator = workers()
    assert cli.chaos(operator, "api", kind="connect_error", rate=1.0, seconds=600).code == 0

    def failing() -> bool:
        try:
            worker.session("api").get("ok")
        except outbound.ConnectError:
            return True
        return False

    wait_until(failing, timeout=3.0)
    assert cli.chaos(operator, None, off=True).code == 0
    wait_until(lambda: not failing(), timeout=3.0)


def test_a_worker_that_does_not_allow_chaos_never_injects(workers: Callable[..., Registry]) -> None:
    worker = workers(allow=False)
    worker.session("api").get("ok")
    operator = workers()
    assert cli.chaos(operator, "api", kind="status", rate=1.0, seconds=600).code == 0
    time.sleep(1.0)  # two polls of a follower, were there one
    assert worker.session("api").get("ok").status_code == 200
    assert worker["api"].policy.chaos is None


def test_a_bad_record_is_skipped(workers: Callable[..., Registry], redis_server: RedisServer) -> None:
    worker = workers()
    worker.session("api").get("ok")
    client = redis_server.client()
    for bad in (
        b"not json",
        b'{"faults": [{"kind": "explode", "rate": 1}]}',
        b'{"faults": [{"kind": "status", "rate": 7}]}',
    ):
        client.set(chaos_key("gd", "api"), bad, px=60_000)
        time.sleep(0.7)
        assert worker.session("api").get("ok").status_code == 200
    client.set(chaos_key("gd", "api"), b'{"faults": [{"kind": "status", "rate": 1}]}')  # no time to live: never
    time.sleep(0.7)
    assert worker.session("api").get("ok").status_code == 200
    assert injected(worker) == 0


def test_enforce_switches_observing_workers_without_a_restart(workers: Callable[..., Registry]) -> None:
    worker = workers(breaker={"fail_max": 1, "enforce": False, "reset_timeout": 60})
    worker.session("api").get("status/503")
    assert worker.session("api").get("status/503").status_code == 503  # observed: not refused
    assert worker.report().services["api"].observing == ("breaker",)
    operator = workers(breaker={"enforce": False})
    assert cli.enforce(operator, "api").code == 0

    def refused() -> bool:
        try:
            worker.session("api").get("status/503")
        except outbound.CircuitOpenError:
            return True
        return False

    wait_until(refused, timeout=3.0)
    assert worker.report().services["api"].observing == ()
    assert cli.enforce(operator, "api", off=True).code == 0
    wait_until(lambda: not refused(), timeout=3.0)


def test_the_commands_refuse_without_a_fleet(upstream: Upstream) -> None:
    with Registry.from_mapping({"services": {"api": {"base_url": upstream.url}}}) as registry:
        assert cli.chaos(registry, "api").code == cli.CONFIG_ERROR_EXIT_CODE
        assert cli.enforce(registry, "api").code == cli.CONFIG_ERROR_EXIT_CODE


def test_a_bad_fault_is_refused(workers: Callable[..., Registry]) -> None:
    operator = workers()
    out = cli.chaos(operator, "api", kind="explode")
    assert out.code == cli.CONFIG_ERROR_EXIT_CODE
    assert "kind" in out.text
    assert cli.chaos(operator, "nope").code == cli.CONFIG_ERROR_EXIT_CODE


@pytest.mark.parametrize(("text", "seconds"), [("5s", 5.0), ("10m", 600.0), ("2h", 7200.0), ("90", 90.0)])
def test_durations(text: str, seconds: float) -> None:
    assert cli.duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-1m", "25h", "soon", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        cli.duration(text)
