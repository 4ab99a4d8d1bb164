"""The stats shapes: what a report shows (``StatsSnapshot``) and what a fleet shares (``StatsRecord``), each read back
by its own ``from_dict``; the sorted latency window against a plain sort."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbound._outcome import Kind
from outbound._parse import INVALID
from outbound._stats import COUNTERS, LATENCY_WINDOW, PERCENTILES, Stats, StatsRecord, histogram
from outbound.health import LastError, LatencySnapshot, RecentCalls, StatsSnapshot
from tests.conftest import FakeClock

ERROR = LastError(
    type="ReadTimeout", message="read timeout on GET http://h/x", at=datetime(2026, 12, 1, tzinfo=timezone.utc)
)


def test_the_shapes_share_their_counters() -> None:
    snapshot = {f.name for f in dataclasses.fields(StatsSnapshot)}
    record = {f.name for f in dataclasses.fields(StatsRecord)}
    assert set(COUNTERS) == {"requests", "errors", "retries", "short_circuited", "pool_timeouts"}
    assert set(COUNTERS) <= snapshot
    assert set(COUNTERS) <= record


def test_a_record_reads_back_what_it_wrote_and_merges_by_summing() -> None:
    one = StatsRecord(
        requests=5,
        errors=2,
        rejected={"rate_limited": 1},
        recent=RecentCalls(calls=4, errors=2),
        latency={3: 4, 10: 1},
        last_error=ERROR,
    )
    assert StatsRecord.from_dict(one.as_dict()) == one
    later = dataclasses.replace(ERROR, at=datetime(2026, 12, 2, tzinfo=timezone.utc))
    two = StatsRecord(requests=1, rejected={"rate_limited": 2}, latency={3: 1}, last_error=later)
    merged = StatsRecord.merge([one, two])
    assert (merged.requests, merged.errors) == (6, 2)
    assert merged.rejected == {"rate_limited": 3}
    assert merged.latency == {3: 5, 10: 1}
    assert merged.recent == RecentCalls(calls=4, errors=2)
    assert merged.last_error == later
    snapshot = merged.snapshot()
    assert snapshot.requests == 6
    assert snapshot.latency_ms.p50 is not None


@pytest.mark.parametrize(
    "bad",
    [
        {"requests": -1},
        {"requests": 1.5},
        {"requests": "3"},
        {"rejected": {"x": True}},
        {"rejected": {str(i): 1 for i in range(100)}},
        {"latency": {"9999": 1}},
        {"latency": {"a": 1}},
        {"recent": []},
        {"last_error": {"type": "X", "message": "m", "at": "not a time"}},
    ],
)
def test_a_bad_record_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(INVALID):
        StatsRecord.from_dict({**StatsRecord().as_dict(), **bad})


def test_a_snapshot_reads_back_what_it_wrote() -> None:
    snapshot = StatsSnapshot(
        requests=3,
        errors=1,
        rejected={"bulkhead_full": 2},
        recent=RecentCalls(calls=3, errors=1),
        latency_ms=LatencySnapshot(1.0, 2.0, 3.0),
    )
    assert StatsSnapshot.from_dict(snapshot.as_dict()) == snapshot
    assert LastError.from_dict(ERROR.as_dict()) == ERROR


def _nearest_rank(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)], 3)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1, max_size=3 * LATENCY_WINDOW))
def test_the_sorted_window_gives_the_percentiles_a_sort_of_the_last_calls_would(seconds: list[float]) -> None:
    stats = Stats(clock=FakeClock())
    for value in seconds:
        stats.started()
        stats.finished(Kind.RESPONSE, value, None, None)
    window = [value * 1000.0 for value in seconds[-LATENCY_WINDOW:]]
    latency = stats.snapshot().latency_ms
    assert (latency.p50, latency.p95, latency.p99) == tuple(_nearest_rank(window, f) for f in PERCENTILES)
    # The fleet's buckets hold the same window.
    assert sum(stats.export().latency.values()) == len(window)
    assert stats.export().latency == histogram(sorted(window))
