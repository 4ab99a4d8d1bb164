"""Row 13 (issue 12, metrics): what recording outbound's metrics costs a call.

Sequential GETs through a service with ``metrics.prometheus`` (on prometheus_client's default registry) or
``metrics.otel`` (through an OpenTelemetry SDK ``MeterProvider`` with an in-memory reader, so the SDK does its real
work: aggregation, exemplars) against the same service with metrics off, alternated in slices as row 1; requests
and httpx. Target >= 0.97 of metrics off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import outbound
from benchmarks._harness import Row, Target, UpstreamProcess, interleave, ratios

if TYPE_CHECKING:
    from benchmarks._scenarios import Settings

MEASUREMENT = 13
ROW_KEYS = ("13a", "13b", "13c", "13d")
AT_LEAST_97 = Target(">=", 0.97, ">= 0.97")


def metrics(up: UpstreamProcess, s: Settings) -> list[Row]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from benchmarks._scenarios import expect_ok, overhead_detail, sliced, warm_up
    from outbound._metrics import otel

    services = {
        "req": {"base_url": up.url},
        "hx": {"base_url": up.url, "client": "httpx"},
    }
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    otel.use_meter_provider(provider)
    try:
        registries = {
            "off": outbound.Registry.from_mapping({"services": services}),
            "prometheus": outbound.Registry.from_mapping({"services": services, "metrics": {"prometheus": True}}),
            "otel": outbound.Registry.from_mapping({"services": services, "metrics": {"otel": True}}),
        }
    finally:
        otel.use_meter_provider(None)
    rows = []
    try:
        for client, key, letters in (("requests", "req", "ab"), ("httpx", "hx", "cd")):
            calls = {name: _caller(registry, key, client, expect_ok) for name, registry in registries.items()}
            warm_up(s.warmup_calls, *calls.values())
            sequence = {"rounds": s.rounds, "slices": s.slices}
            for letter, exporter in zip(letters, ("prometheus", "otel"), strict=True):
                runs = interleave([sliced(s, calls[exporter]), sliced(s, calls["off"])], **sequence)
                what = "Prometheus" if exporter == "prometheus" else "OpenTelemetry (SDK meter provider)"
                rows.append(
                    Row(
                        f"13{letter}",
                        f"sequential GETs, {client}: metrics through {what} / metrics off",
                        "x",
                        ratios(*runs),
                        AT_LEAST_97,
                        overhead_detail(runs),
                    )
                )
    finally:
        for registry in registries.values():
            registry.close()
        provider.shutdown()
    return sorted(rows, key=lambda row: row.key)


def _caller(
    registry: outbound.Registry, name: str, client: str, expect_ok: Callable[[object], None]
) -> Callable[[], None]:
    if client == "requests":
        session = registry.session(name)
        return lambda: expect_ok(session.get("ok"))
    httpx_client = registry.client(name)
    return lambda: expect_ok(httpx_client.get("ok"))
