"""Per-service counters and a bounded window of recent latencies, read by ``Registry.health()``."""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

LATENCY_WINDOW = 1024  # recent calls kept for percentiles: bounded memory, recent enough to mean "now"


@dataclass(frozen=True, slots=True)
class LastError:
    type: str
    message: str
    at: datetime

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "at": self.at.isoformat()}


def _percentile(ordered: list[float], fraction: float) -> float:
    # Nearest-rank percentile on an already sorted, non-empty list.
    index = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return round(ordered[index], 3)


class Stats:
    """Thread-safe counters. Every method is O(1) except ``snapshot()``, which runs only for health reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.retries = 0
        self.short_circuited = 0
        self.pool_timeouts = 0
        self.in_flight = 0
        self.last_error: LastError | None = None
        self._latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def call_started(self) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1

    def call_finished(self, seconds: float, error: tuple[str, str] | None, *, pool_timeout: bool = False) -> None:
        with self._lock:
            self.in_flight -= 1
            self._latencies_ms.append(seconds * 1000.0)
            if pool_timeout:
                self.pool_timeouts += 1
            if error is not None:
                self.errors += 1
                self.last_error = LastError(type=error[0], message=error[1], at=datetime.now(timezone.utc))

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def rejected(self) -> None:
        with self._lock:
            self.short_circuited += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            ordered = sorted(self._latencies_ms)
            counters: dict[str, Any] = {
                "requests": self.requests,
                "errors": self.errors,
                "retries": self.retries,
                "short_circuited": self.short_circuited,
                "pool_timeouts": self.pool_timeouts,
            }
        counters["latency_ms"] = {
            name: _percentile(ordered, fraction) if ordered else None
            for name, fraction in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
        }
        return counters

    def reset_after_fork(self) -> None:
        """In a forked child: a new lock (the parent's may have been held by a thread that does not exist here),
        and no calls in flight (those belonged to the parent's threads)."""
        self._lock = threading.Lock()
        self.in_flight = 0
