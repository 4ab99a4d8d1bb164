"""Metrics: observers that record the policy's events for Prometheus and OpenTelemetry (``metrics`` settings).

The client libraries are imported only for the switches that are on (the settings parser has checked that they
are installed): ``prometheus`` adds ``PrometheusObserver``; ``otel`` adds ``OpenTelemetryObserver`` (metrics) and
``SpanObserver`` (outbound's facts on the current span).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._config import MetricsConfig
from .._events import Observer

if TYPE_CHECKING:
    from .._registry import Registry


def metric_observers(config: MetricsConfig, registry: Registry) -> list[Observer]:
    """The observers ``config`` asks for, recording the events of every service of ``registry``."""
    observers: list[Observer] = []
    if config.prometheus:
        from .prometheus import PrometheusObserver

        observers.append(PrometheusObserver(registry))
    if config.otel:
        from .otel import OpenTelemetryObserver
        from .tracing import SpanObserver

        observers += [OpenTelemetryObserver(registry), SpanObserver(registry)]
    return observers
