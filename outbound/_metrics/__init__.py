"""Metrics: observers that record the policy's events for Prometheus and OpenTelemetry (``metrics`` settings)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._config import MetricsConfig
from .._events import Observer

if TYPE_CHECKING:
    from .._registry import Registry


def metric_observers(config: MetricsConfig, registry: Registry) -> list[Observer]:
    """The observers ``config`` asks for, recording the events of every service of ``registry``."""
    return []
