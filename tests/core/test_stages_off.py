"""A capability configured but off builds the service a service without its key gets (round 3's rule).

The cases are row 16's (``benchmarks/_stages.py``): each capability adds one. The *shape* compared here is every
object of outbound's own reachable from the service's policy and from its managed clients — stages, send gates,
observers, transport layers and what they hold — by type and attribute, settings objects left out (those differ by
definition). Equal shapes mean the call walks the same code; the row times what this proves.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import outbound
from benchmarks._stages import BASE_URL, CASES, StageCase, absent, configured_off

CLIENTS = ("requests", "httpx", "async")


def shape(root: object, depth: int = 8) -> object:
    """The structure of outbound's objects reachable from ``root``: types and attribute names, not values."""
    seen: set[int] = set()

    def walk(value: object, left: int) -> object:
        if isinstance(value, tuple | list | frozenset | set):
            return (type(value).__name__, tuple(walk(item, left) for item in value))
        if isinstance(value, dict):
            return ("dict", tuple((str(key), walk(item, left)) for key, item in value.items()))
        if callable(value) and hasattr(value, "__self__"):  # a bound method: what it is bound to is what runs
            return ("method", getattr(value, "__name__", "?"), walk(value.__self__, left))
        kind = type(value)
        if not kind.__module__.startswith("outbound") or kind.__module__ == "outbound._config":
            return (
                kind.__qualname__ if kind.__module__.startswith(("outbound", "httpx", "httpcore", "urllib3")) else None
            )
        if id(value) in seen or left == 0:
            return kind.__qualname__
        seen.add(id(value))
        names = sorted({*getattr(value, "__dict__", {}), *_slots(kind)})
        return (kind.__qualname__, tuple((name, walk(getattr(value, name, None), left - 1)) for name in names))

    return walk(root, depth)


def _slots(kind: type) -> list[str]:
    return [name for klass in kind.__mro__ for name in getattr(klass, "__slots__", ())]


def service_shape(settings: dict[str, Any], client: str) -> object:
    kind = "requests" if client == "requests" else "httpx"
    services = {name: {**service, "client": kind} for name, service in settings["services"].items()}
    registry = outbound.Registry.from_mapping({**settings, "services": services})
    try:
        if client == "requests":
            managed: object = registry.session("s")
        elif client == "httpx":
            managed = registry.client("s")
        else:

            async def make() -> object:
                return registry.async_client("s")

            managed = asyncio.run(make())
        return shape(registry["s"].policy), shape(managed)
    finally:
        registry.close()


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.key)
def test_a_capability_configured_off_builds_what_its_absence_builds(case: StageCase, client: str) -> None:
    assert service_shape(configured_off(case), client) == service_shape(absent(case), client)


ON = (
    StageCase(key="bulkhead", name="a bulkhead", off={"bulkhead": {"max_in_flight": 5}}),
    StageCase(key="hedge", name="hedging", off={"hedge": {"delay": "p95"}}),
    StageCase(key="cache", name="a cache", off={"cache": {"ttl": 1}}),
    StageCase(key="fallback", name="a fallback", off={"fallback": {"status": 200}}),
    StageCase(key="prometheus", name="Prometheus metrics", off={}, top={"metrics": {"prometheus": True}}),
    StageCase(
        key="chaos",
        name="chaos allowed (its layer is built, ready for a game day)",
        off={"chaos": {"enabled": False}},
        top={"chaos": {"allow": True}},
    ),
    StageCase(key="observe", name="an observe-only breaker", off={"breaker": {"enforce": False}}),
    StageCase(key="sdk", name="the SDK layer", off={"sdk": {}}),
    StageCase(
        key="endpoints", name="two endpoints", off={"base_url": None, "endpoints": [BASE_URL, "http://b.invalid/"]}
    ),
    StageCase(key="concurrency", name="the adaptive concurrency limit", off={"concurrency": {}}),
    StageCase(key="throttle", name="client-side throttling", off={"throttle": {}}),
    StageCase(key="tokens", name="retry tokens", off={"retry": {"tokens": {}}}),
    StageCase(key="history", name="a service history", off={}, top={"health": {"history": True}}),
    StageCase(
        key="fleet-limit",
        name="a fleet rate limit (leased permits)",
        off={"rate_limit": {"rate": "5/second", "scope": "fleet"}},
        top={"state": {"backend": "redis", "url": "redis://127.0.0.1:1/0"}},
    ),
)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", ON, ids=lambda case: case.key)
def test_the_comparison_sees_a_capability_that_is_on(case: StageCase, client: str) -> None:
    """The check can fail: a stage, a plan or an observer that is present changes the shape."""
    assert service_shape(configured_off(case), client) != service_shape(absent(case), client)
