"""Row 20 (a service's history): the memory check measures what it claims and fails on a history that grows."""

from __future__ import annotations

from collections import deque

from benchmarks._harness import Row
from benchmarks._scenarios import QUICK
from benchmarks._trends import AT_MOST_64_KB, _Clock, _memory, full_history
from outbound._events import BreakerTransition
from outbound.health import HistoryMark


def test_the_memory_row_measures_a_full_history() -> None:
    row = _memory(QUICK)
    assert isinstance(row, Row)
    assert row.key == "20a"
    assert 30 <= row.median <= 64, row.median  # the arrays alone are ~43 KB: the row saw them
    assert AT_MOST_64_KB.met(row.median)


def test_the_memory_check_fails_on_a_history_whose_marks_are_not_bounded() -> None:
    history = full_history(_Clock())
    assert AT_MOST_64_KB.met(history.memory() / 1024)
    # A broken variant: the marks kept without a bound (a flapping breaker's every transition).
    unbounded: deque[HistoryMark] = deque(history._marks)
    history._marks = unbounded
    for index in range(500):
        history.breaker_transition(BreakerTransition("s", "open", "closed", f"trial {index} succeeded", 0.0))
    assert not AT_MOST_64_KB.met(history.memory() / 1024), history.memory()
