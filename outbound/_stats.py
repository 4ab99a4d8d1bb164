"""Per-service counters, a bounded window of recent latencies and the last minute's calls and errors in one-second
buckets: the observer behind ``registry.health()``.

Two shapes, each with its ``as_dict`` and ``from_dict``:

- ``health.StatsSnapshot``, what a report shows: counters, the recent window, latency percentiles;
- ``StatsRecord``, what a fleet shares: the same counters, with latencies as bucket counts (``LATENCY_BUCKETS_MS``),
  because bucket counts add up across processes and percentiles do not. ``StatsRecord.merge`` sums records,
  ``snapshot()`` turns one into a report's ``StatsSnapshot``.

The latency window is kept sorted as calls finish (a binary search and a list move, under a microsecond), so a report
reads its percentiles by index rather than sorting a thousand values per service on every health request.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ._events import CallRejected, Observer, RetryScheduled
from ._outcome import Kind
from ._parse import MAX_NAME, MAX_REASONS, bad, digits, error, whole
from .health import COUNTERS, RECENT_SECONDS, CallCounts, LastError, LatencySnapshot, RecentCalls, StatsSnapshot

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


def histogram(ordered_ms: list[float]) -> dict[int, int]:
    """Counts per bucket index (only the non-empty buckets) of the sorted latencies ``ordered_ms``."""
    counts: dict[int, int] = {}
    start, last = 0, len(LATENCY_BUCKETS_MS) - 1
    while start < len(ordered_ms):
        index = min(bisect.bisect_left(LATENCY_BUCKETS_MS, ordered_ms[start]), last)
        # Every later value up to this bucket's bound is in it: one search per bucket, not per value.
        end = len(ordered_ms) if index == last else bisect.bisect_right(ordered_ms, LATENCY_BUCKETS_MS[index], start)
        counts[index] = end - start
        start = end
    return counts


def latency_from_histogram(counts: Mapping[int, int]) -> LatencySnapshot:
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


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsRecord(CallCounts):
    """One process's stats of one service as a fleet shares them (see the module's docstring)."""

    latency: Mapping[int, int] = field(default_factory=dict)  # calls per LATENCY_BUCKETS_MS index
    last_error: LastError | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in COUNTERS},
            "rejected": dict(self.rejected),
            "recent": {"calls": self.recent.calls, "errors": self.recent.errors},
            "latency": {str(index): count for index, count in self.latency.items()},
            "last_error": self.last_error.as_dict() if self.last_error is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StatsRecord:
        """``as_dict()`` read back from outside, every value checked and bounded (``_parse``).

        Raises:
            ValueError, TypeError, _parse.Invalid...: one of ``_parse.INVALID``, for a record to skip.
        """
        # Absent or null is empty; anything else must be the JSON object as_dict writes.
        rejected, latency, recent = (
            {} if data.get(key) is None else data[key] for key in ("rejected", "latency", "recent")
        )
        last = data.get("last_error")
        if not isinstance(rejected, Mapping) or len(rejected) > MAX_REASONS:
            bad("rejected is not a small JSON object")
        if not isinstance(latency, Mapping) or len(latency) > len(LATENCY_BUCKETS_MS):
            bad("latency is not a JSON object of buckets")
        if not isinstance(recent, Mapping):
            bad("recent is not a JSON object")
        last_bucket = len(LATENCY_BUCKETS_MS) - 1
        return cls(
            **{name: whole(data.get(name, 0)) for name in COUNTERS},
            rejected={_reason(reason): whole(count) for reason, count in rejected.items()},
            recent=RecentCalls(calls=whole(recent.get("calls", 0)), errors=whole(recent.get("errors", 0))),
            latency={digits(index, 0, last_bucket): whole(count) for index, count in latency.items()},
            last_error=error(last) if last is not None else None,
        )

    @classmethod
    def merge(cls, records: Iterable[StatsRecord]) -> StatsRecord:
        """The records of several processes as one: counters and bucket counts summed, the latest last error."""
        counters = dict.fromkeys(COUNTERS, 0)
        rejected: dict[str, int] = {}
        latency: dict[int, int] = {}
        recent_calls = recent_errors = 0
        last_error: LastError | None = None
        for record in records:
            for name in COUNTERS:
                counters[name] += getattr(record, name)
            for reason, count in record.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + count
            for index, count in record.latency.items():
                latency[index] = latency.get(index, 0) + count
            recent_calls += record.recent.calls
            recent_errors += record.recent.errors
            error = record.last_error
            if error is not None and (last_error is None or error.at > last_error.at):
                last_error = error
        return cls(
            **counters,
            rejected=rejected,
            recent=RecentCalls(calls=recent_calls, errors=recent_errors),
            latency=latency,
            last_error=last_error,
        )

    def snapshot(self) -> StatsSnapshot:
        """As a report shows it: latency percentiles from the bucket counts."""
        return StatsSnapshot(
            **{name: getattr(self, name) for name in COUNTERS},
            rejected=self.rejected,
            recent=self.recent,
            latency_ms=latency_from_histogram(self.latency),
        )


def _reason(reason: Any) -> str:
    # A rejection reason read back: a short name, as _outcome.Reason spells them.
    if not isinstance(reason, str) or not reason or len(reason) > MAX_NAME:
        bad("a rejection reason is not a short text")
    return reason


class Stats(Observer):
    """Thread-safe counters fed by the policy's events. Every method is O(1) but for ``snapshot()`` and
    ``export()``, which run for health reports and a fleet's publishes, and are O(services' window) at most.

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
            # The latency window, twice: in the order calls finished (a ring: the next one replaces the oldest) and
            # sorted (what the percentiles are read from).
            self._ring: list[float] = []
            self._next = 0
            self._sorted: list[float] = []
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

    def also_record(self, record: Callable[[Kind, float, str | None], None]) -> None:
        """Feed ``record`` (a service's history) every finished call too, as the call feeds these statistics: with no
        event built, and nothing on the call path of a service that sets none (the bound method is replaced)."""
        plain = self.finished

        def finished(kind: Kind, seconds: float, error_type: str | None, error_message: str | None) -> None:
            plain(kind, seconds, error_type, error_message)
            record(kind, seconds, error_type)

        self.finished = finished  # type: ignore[method-assign]

    def finished(self, kind: Kind, seconds: float, error_type: str | None, error_message: str | None) -> None:
        second = int(self._clock())
        ms = seconds * 1000.0
        with self._lock:
            self.in_flight -= 1
            ring, ordered = self._ring, self._sorted
            if len(ring) < LATENCY_WINDOW:
                ring.append(ms)
            else:
                oldest = ring[self._next]
                del ordered[bisect.bisect_left(ordered, oldest)]
                ring[self._next] = ms
                self._next = (self._next + 1) % LATENCY_WINDOW
            bisect.insort(ordered, ms)
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
        """The counters, the recent window and the latency percentiles (of the last ``LATENCY_WINDOW`` calls)."""
        oldest = int(self._clock()) - _RECENT_BUCKETS + 1
        with self._lock:
            ordered = self._sorted
            latency = LatencySnapshot(
                *(_percentile(ordered, fraction) if ordered else None for fraction in PERCENTILES)
            )
            return StatsSnapshot(
                requests=self.requests,
                errors=self.errors,
                retries=self.retries,
                short_circuited=self.short_circuited,
                pool_timeouts=self.pool_timeouts,
                rejected=dict(self.rejected),
                recent=self._recent(oldest),
                latency_ms=latency,
            )

    def export(self) -> StatsRecord:
        """This process's record for the fleet, read at one instant (the bucket counts computed outside the lock)."""
        oldest = int(self._clock()) - _RECENT_BUCKETS + 1
        with self._lock:
            recent = self._recent(oldest)
            counters = {name: getattr(self, name) for name in COUNTERS}
            rejected, ordered, last_error = dict(self.rejected), list(self._sorted), self.last_error
        return StatsRecord(
            **counters,
            rejected=rejected,
            recent=recent,
            latency=histogram(ordered),
            last_error=last_error,
        )

    def reset_after_fork(self) -> None:
        """In a forked child: a new lock (the parent's may have been held by a thread that does not exist here),
        and no calls in flight (those belonged to the parent's threads)."""
        self._lock = threading.Lock()
        self.in_flight = 0

    def _recent(self, oldest: int) -> RecentCalls:
        # Lock held.
        counted = [index for index, second in enumerate(self._second) if second >= oldest]
        return RecentCalls(
            calls=sum(self._calls[index] for index in counted),
            errors=sum(self._errors[index] for index in counted),
        )
