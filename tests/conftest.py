"""Fixtures shared by every test package: the one real test upstream, and registries that are always closed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from outbound import Registry
from tests.upstream import Upstream


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture
def upstream(upstream_server: Upstream) -> Iterator[Upstream]:
    """The shared upstream on 127.0.0.1, healthy and with zeroed counters for each test."""
    upstream_server.reset()
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
