"""Fixtures shared by every test package: the one real test upstream, registries that are always closed, a fake
clock, and the ``real_server`` marker on every test that talks to a server (``-m "not real_server"`` runs the pure
unit tests alone)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from outbound import Registry
from tests.redis_server import RedisServer
from tests.redis_topologies import Cluster, SentinelGroup
from tests.upstream import Upstream, UpstreamProcess, wait_until

pytest_plugins = ["pytester"]  # tests/test_testing_kit.py runs small pytest sessions of its own


class FakeClock:
    """A monotonic clock a test moves by hand: ``clock.advance(10)`` instead of sleeping 10 s."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def open_breaker(registry: Registry, name: str, *, status: int = 503) -> None:
    """Open ``name``'s breaker the way a failing upstream does: calls through its public client to the test upstream's
    ``/status/<status>`` (a failure status) until it opens, at most ``fail_max`` of them."""
    service = registry[name]
    client: Any = registry.session(name) if service.config.client == "requests" else registry.client(name)
    for _ in range(service.config.breaker.fail_max):
        client.get(f"status/{status}")
        if service.policy.breaker.state == "open":
            return
    raise AssertionError(f"the breaker of {name!r} did not open")


@pytest.fixture
def fake_clock() -> FakeClock:
    """A ``FakeClock`` to pass as ``Registry.from_mapping(..., clock=fake_clock)``."""
    return FakeClock()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests of pool, timeout, retry and breaker behaviour run against real servers; say so, so they can be told apart.
    for item in items:
        if {"upstream", "upstream_server", "upstream_process", "blackhole"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_server)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the test session's own (never the machine's shared one)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-node Redis Cluster of the session's own (``tests/redis_topologies.py``)."""
    with Cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A primary, a replica and 3 Sentinels of the session's own; a test may kill the primary (they fail over)."""
    with SentinelGroup(tmp_path_factory.mktemp("sentinel")) as group:
        yield group


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    if redis_server.process is None:  # a test stopped it and failed before restarting it
        redis_server.start()
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture(scope="session")
def upstream_process_server() -> Iterator[UpstreamProcess]:
    with UpstreamProcess() as server:
        yield server


@pytest.fixture
def upstream_process(upstream_process_server: UpstreamProcess) -> UpstreamProcess:
    """The same upstream in a process of its own, healthy, with zeroed counters: for tests that measure what
    arrives at the upstream, and when, without the server's work competing with the calls for this process's GIL."""
    upstream_process_server.reset()
    return upstream_process_server


@pytest.fixture
def upstream(upstream_server: Upstream) -> Iterator[Upstream]:
    """The shared upstream on 127.0.0.1, healthy, with zeroed counters and no connection left by an earlier test."""
    upstream_server.reset()
    wait_until(lambda: upstream_server.live_connections == 0, timeout=2.0)
    yield upstream_server
    upstream_server.reset()


RegistryFactory = Callable[..., Registry]


@pytest.fixture
def make_registry() -> Iterator[RegistryFactory]:
    """Build registries from service settings; every one is closed after the test.

    ``make_registry(billing={"base_url": ...}, health={...}, defaults={...})``
    """
    made: list[Registry] = []

    def make(
        *, health: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None, **services: Any
    ) -> Registry:
        mapping: dict[str, Any] = {"services": services}
        if health is not None:
            mapping["health"] = health
        if defaults is not None:
            mapping["defaults"] = defaults
        registry = Registry.from_mapping(mapping)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()
