"""Per-service counters, a bounded window of recent latencies and the last minute's calls and errors in one-second
buckets: the observer behind ``registry.health()``."""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import NamedTuple

from ._events import CallRejected, Observer, RetryScheduled
from ._outcome import Kind
from .health import RECENT_SECONDS, LastError, LatencySnapshot, RecentCalls, StatsSnapshot

# An interrupted call and one cut short by our own shutdown say nothing about the upstream.
_NOT_ERRORS = frozenset({Kind.CANCELLED, Kind.CLOSED})
LATENCY_WINDOW = 1024  # recent calls kept for percentiles: bounded memory, recent enough to mean "now"

# Upper bounds (ms) of the buckets a fleet merges latencies in: percentiles averaged across processes are meaningless,
# bucket counts add up. Steps of 10 % from 0.5 ms to one day keep a merged percentile within 10 % of the true one.
LATENCY_BUCKETS_MS: tuple[float, ...] = tuple(0.5 * 1.1**i for i in range(int(math.log(86_400_000 / 0.5, 1.1)) + 2))
PERCENTILES = (0.50, 0.95, 0.99)
_NO_SECOND = -(2**62)  # the second of a recent-window bucket that has counted nothing yet
_RECENT_BUCKETS = math.ceil(RECENT_SECONDS)  # one per second


def _percentile(ordered: list[float], fraction: float) -> float:
    # Nearest-rank percentile on an already sorted, non-empty list.
    index = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return round(ordered[index], 3)


def histogram(latencies_ms: list[float]) -> dict[int, int]:
    """Counts per bucket index (only the non-empty buckets) of ``latencies_ms``."""
    counts: dict[int, int] = {}
    for value in latencies_ms:
        index = min(bisect.bisect_left(LATENCY_BUCKETS_MS, value), len(LATENCY_BUCKETS_MS) - 1)
        counts[index] = counts.get(index, 0) + 1
    return counts


def latency_from_histogram(counts: dict[int, int]) -> LatencySnapshot:
    """Percentiles of merged bucket counts: each reported as its bucket's upper bound (nearest rank)."""
    total = sum(counts.values())
    if not total:
        return LatencySnapshot()
    ordered = sorted(counts.items())
    values = []
    for fraction in PERCENTILES:
        rank, seen = max(1, math.ceil(fraction * total)), 0
        for index, count in ordered:
            seen += count
            if seen >= rank:
                values.append(round(LATENCY_BUCKETS_MS[index], 3))
                break
    return LatencySnapshot(*values)


class Stats(Observer):
    """Thread-safe counters fed by the policy's events. Every method is O(1) except ``snapshot()`` and ``export()``,
    which run only for health reports and a fleet's publishes.

    Args:
        clock: seconds, for the recent window's buckets (``time.monotonic``; a fake one in tests).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.in_flight = 0
        self.clear()

    def clear(self) -> None:
        """Zero every counter and forget the latencies and the last error (calls in flight stay counted)."""
        with self._lock:
            self.requests = 0
            self.errors = 0
            self.retries = 0
            self.short_circuited = 0
            self.rejected: dict[str, int] = {}
            self.pool_timeouts = 0
            self.last_error: LastError | None = None
            self._latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
            # The recent window: bucket i counts the calls and errors of the second _second[i] (one of the last
            # RECENT_SECONDS when it is still counted); a bucket from an older second is reused, not retired.
            self._second = [_NO_SECOND] * _RECENT_BUCKETS
            self._calls = [0] * _RECENT_BUCKETS
            self._errors = [0] * _RECENT_BUCKETS

    # The policy calls these two itself, without building an event (they are on every call's path).

    def started(self) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1

    def finished(self, kind: Kind, seconds: float, error_type: str | None, error_message: str | None) -> None:
        second = int(self._clock())
        with self._lock:
            self.in_flight -= 1
            self._latencies_ms.append(seconds * 1000.0)
            if kind is Kind.POOL_TIMEOUT:
                self.pool_timeouts += 1
            if kind in _NOT_ERRORS or (kind is Kind.REFUSED and error_type is None):
                # No verdict on the upstream (a call refused before it sent anything among them): not an error,
                # and not a call of the recent window either.
                return
            index = second % _RECENT_BUCKETS
            if self._second[index] != second:
                self._second[index], self._calls[index], self._errors[index] = second, 0, 0
            self._calls[index] += 1
            if error_type is not None:
                self._errors[index] += 1
                self.errors += 1
                self.last_error = LastError(type=error_type, message=error_message or "", at=datetime.now(timezone.utc))

    def retry_scheduled(self, event: RetryScheduled) -> None:
        with self._lock:
            self.retries += 1

    def call_rejected(self, event: CallRejected) -> None:
        with self._lock:
            if event.reason == "circuit_open":
                self.short_circuited += 1
            else:
                self.rejected[event.reason] = self.rejected.get(event.reason, 0) + 1

    def snapshot(self) -> StatsSnapshot:
        counters, rejected, recent, latencies, _ = self._read()
        # Sorted outside the lock: a call finishing meanwhile waits for a copy, not for the sort.
        latencies.sort()
        latency = LatencySnapshot(
            *(_percentile(latencies, fraction) if latencies else None for fraction in PERCENTILES)
        )
        return StatsSnapshot(**counters._asdict(), rejected=rejected, recent=recent, latency_ms=latency)

    def reset_after_fork(self) -> None:
        """In a forked child: a new lock (the parent's may have been held by a thread that does not exist here),
        and no calls in flight (those belonged to the parent's threads)."""
        self._lock = threading.Lock()
        self.in_flight = 0

    def export(self) -> StatsExport:
        """The counters, the last error and the recent latencies as mergeable bucket counts, read under one lock
        (what a fleet publishes: no percentiles, so no sort)."""
        counters, rejected, recent, latencies, last_error = self._read()
        return StatsExport(*counters, rejected, recent, histogram(latencies), last_error)

    def _read(self) -> tuple[_Counters, dict[str, int], RecentCalls, list[float], LastError | None]:
        # One instant's figures, copied under the lock; whatever is computed from them is computed outside it.
        oldest = int(self._clock()) - _RECENT_BUCKETS + 1
        with self._lock:
            counters = _Counters(self.requests, self.errors, self.retries, self.short_circuited, self.pool_timeouts)
            counted = [index for index, second in enumerate(self._second) if second >= oldest]
            recent = RecentCalls(
                calls=sum(self._calls[index] for index in counted),
                errors=sum(self._errors[index] for index in counted),
            )
            return counters, dict(self.rejected), recent, list(self._latencies_ms), self.last_error


class _Counters(NamedTuple):
    requests: int
    errors: int
    retries: int
    short_circuited: int
    pool_timeouts: int


class StatsExport(NamedTuple):
    """What ``Stats.export()`` read at one instant; ``latency`` holds bucket counts (``LATENCY_BUCKETS_MS``)."""

    requests: int
    errors: int
    retries: int
    short_circuited: int
    pool_timeouts: int
    rejected: dict[str, int]
    recent: RecentCalls
    latency: dict[int, int]
    last_error: LastError | None
