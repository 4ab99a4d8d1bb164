"""Row 16 (issue 23): what a capability costs a call when its settings configure it but leave it off.

Round 3's rule is that a stage that is off costs nothing: ``_pipeline.compose`` leaves it out of the service's tuples
and the backend leaves its layer out of the transport, so the call path is the one of a service without the key. Two
checks hold each capability to it, over the same ``CASES``:

- ``tests/core/test_stages_off.py`` compares the built service's *shape* (its stages, send gates, observers and
  transport layers) with the off settings and without the key: equal, or the test fails. It is the exact check.
- This row times it: sequential GETs through an httpx service on an in-memory transport (no network, so the
  client's and outbound's own work is the whole call and a microsecond shows), one call to the service with the off
  settings and one to the service without the key, back to back, a few thousand pairs a round
  (``paired_difference``). A round keeps the median of its pairs' differences, and the row the median of the rounds
  (target <= 1 us).

A case adds one ``StageCase`` below: its name and the service settings that configure the capability but leave it
off (``top``: top-level settings of that variant; ``common``: top-level settings both variants need).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

import outbound
from benchmarks._harness import Row, Target, paired_difference

if TYPE_CHECKING:
    from benchmarks._harness import UpstreamProcess
    from benchmarks._scenarios import Settings

MEASUREMENT = 16
BASE_URL = "http://stages.invalid/"  # never resolved: the in-memory transport answers every request


@dataclass(frozen=True, slots=True, kw_only=True)
class StageCase:
    """One capability, configured but off."""

    key: str  # the row's suffix, e.g. "16a"
    name: str
    off: Mapping[str, Any]  # service settings that configure it and leave it off
    top: Mapping[str, Any] = field(default_factory=dict)  # top-level settings of the off variant, beside ``services``
    common: Mapping[str, Any] = field(default_factory=dict)  # top-level settings both variants need


# Each capability of round 3 adds its case here (and nothing else: the row and the shape test read this list).
CASES: tuple[StageCase, ...] = (
    StageCase(key="16a", name="round 2's optional stages written out as off", off={"bulkhead": None, "hedge": None}),
    StageCase(
        key="16b", name="metrics written out as off", off={}, top={"metrics": {"prometheus": False, "otel": False}}
    ),
    StageCase(
        key="16c",
        name="the SDK layer written out as off",
        off={"sdk": {"answer_refusals": False, "final_responses": False}},
    ),
    StageCase(
        key="16d",
        name="fleet topology settings written out, memory backend",
        off={},
        top={"state": {"backend": "memory", "cluster": False, "url": "redis+sentinel://127.0.0.1:26379/primary/0"}},
    ),
    StageCase(key="16e", name="the cache and fallback written out as off", off={"cache": None, "fallback": None}),
    StageCase(
        key="16f",
        name="chaos configured but disabled (and not allowed)",
        off={"chaos": {"enabled": False, "faults": [{"kind": "status", "rate": 0.1}]}},
        top={"chaos": {"allow": False}},
    ),
    StageCase(
        key="16g",
        name="enforce: true written out (the default)",
        off={"enforce": True, "breaker": {"enforce": True}, "bulkhead": None, "rate_limit": None},
    ),
    StageCase(key="16h", name="a service history written out as off", off={}, top={"health": {"history": False}}),
    StageCase(
        key="16i",
        # balance and outlier without endpoints (one endpoint is base_url itself: tests/core/test_endpoints.py; it is
        # not written here, as row 17's app merges these settings into services of its own base_url)
        name="endpoints' balance and outlier written out, one base_url",
        off={"balance": "round_robin", "outlier": {"consecutive_failures": 3, "base_ejection": 10}},
    ),
    StageCase(key="16j", name="the adaptive concurrency limit written out as off", off={"concurrency": None}),
    StageCase(key="16k", name="client-side throttling written out as off", off={"throttle": None}),
    StageCase(key="16l", name="retry tokens written out as off", off={"retry": {"tokens": None}}),
    StageCase(
        key="16m", name="the breaker's growing open period written out as off", off={"breaker": {"backoff": None}}
    ),
)
ROW_KEYS = tuple(case.key for case in CASES)
AT_MOST_1_US = Target("<=", 1.0, "<= 1 us")


class _Answer(httpx.BaseTransport):
    """The upstream in memory: a 2-byte 200 for every request."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"ok", request=request)


def absent(case: StageCase) -> dict[str, Any]:
    """The settings of a service without the capability's key."""
    return {**case.common, "services": {"s": {"base_url": BASE_URL, "client": "httpx"}}}


def configured_off(case: StageCase) -> dict[str, Any]:
    """The settings of the same service with the capability configured but off."""
    return {**case.common, **case.top, "services": {"s": {"base_url": BASE_URL, "client": "httpx", **case.off}}}


def every_capability_off() -> tuple[dict[str, Any], dict[str, Any]]:
    """Service settings and top-level settings configuring every capability of ``CASES`` off, merged (row 17's app
    runs with them: a healthy app pays nothing for what it leaves off)."""
    service: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for case in CASES:
        merge(service, case.off)
        merge(top, {**case.common, **case.top})
    return service, top


def merge(into: dict[str, Any], settings: Mapping[str, Any]) -> None:
    """Merge ``settings`` into ``into``, mappings key by key."""
    for key, value in settings.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def stages(up: UpstreamProcess, s: Settings) -> list[Row]:
    del up  # the in-memory transport answers: the network would only add noise to a microsecond
    return [_measure(case, s) for case in CASES]


# Pairs per round at most (a round of the full run: ~0.5 s of calls).
PAIRS = 4_000


def _measure(case: StageCase, s: Settings) -> Row:
    from benchmarks._scenarios import warm_up

    registries = [
        outbound.Registry.from_mapping(settings, transports={"s": _Answer()})
        for settings in (configured_off(case), absent(case))
    ]
    try:
        clients = [registry.client("s") for registry in registries]

        def call_off() -> None:
            clients[0].get("ok").raise_for_status()

        def call_absent() -> None:
            clients[1].get("ok").raise_for_status()

        warm_up(s.warmup_calls, call_off, call_absent)
        pairs = min(PAIRS, s.slices * s.slice_calls)
        seconds = 2 * s.slices * s.slice_seconds
        differences, per_call = [], []
        for _ in range(s.rounds):
            difference, absent_call = paired_difference(call_off, call_absent, pairs=pairs, max_seconds=seconds)
            differences.append(difference)
            per_call.append(absent_call)
    finally:
        for registry in registries:
            registry.close()
    return Row(
        case.key,
        f"{case.name}: configured off vs absent, per call (in-memory httpx transport)",
        "us",
        differences,
        AT_MOST_1_US,
        f"a call without the key takes {statistics.median(per_call):.1f} us here; "
        f"off settings {dict(case.off) or dict(case.top)}",
        digits=2,
    )
