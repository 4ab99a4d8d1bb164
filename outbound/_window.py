"""The failure-rate and slow-call window behind ``breaker.mode: "rate"``: a ring of buckets with running totals.

Recording a call is O(1) under one short lock: a count window overwrites the oldest of its ``size`` slots, a time
window adds to the current one-second bucket after retiring the buckets that fell out of the last ``seconds``; the
totals (calls, failures, slow calls) are kept as they change, so reading the rates never scans. The lock makes the
totals exact under any number of threads (no lost update).

The window is per process, also in a fleet: it judges the calls this process made, and an opening it decides is
shared like any other transition.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from ._config import BreakerConfig

# Slot states of a count window: nothing yet, a success, a slow success, a failure, a slow failure.
_EMPTY, _OK, _SLOW, _FAILED, _SLOW_FAILED = 0, 1, 2, 3, 4


class FailureRate:
    """Opens the breaker when, over the window and with at least ``minimum_calls`` calls in it, the failure rate
    reaches ``failure_rate`` or the slow-call rate reaches ``slow_call_rate`` (Resilience4j's rule)."""

    fleet_counts = False  # the window is this process's; a fleet shares the openings it decides

    def __init__(self, config: BreakerConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._slow = config.slow_call_duration
        self._lock = threading.Lock()
        window = config.window
        self._count_based = window.type == "count"
        self._size = window.size if self._count_based else max(1, math.ceil(window.seconds))
        self._clock = clock
        self._clear()

    def _clear(self) -> None:
        """Empty the window: fresh slots (a count window) or buckets (a time window), zero totals."""
        if self._count_based:
            self._slots = bytearray(self._size)
            self._next = 0
        else:
            self._bucket_calls = [0] * self._size
            self._bucket_failures = [0] * self._size
            self._bucket_slow = [0] * self._size
            self._last_second = -(2**62)  # no second seen yet
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def failure(self, seconds: float) -> bool:
        return self._record(True, seconds)

    def success(self, seconds: float) -> bool:
        return self._record(False, seconds)

    def _record(self, failed: bool, seconds: float) -> bool:
        slow = self._slow is not None and seconds >= self._slow
        with self._lock:
            if self._count_based:
                self._put_slot(failed, slow)
            else:
                self._put_bucket(failed, slow)
            return self._tripped()

    def _put_slot(self, failed: bool, slow: bool) -> None:
        old = self._slots[self._next]
        if old != _EMPTY:
            self.calls -= 1
            self.failures -= old in (_FAILED, _SLOW_FAILED)
            self.slow -= old in (_SLOW, _SLOW_FAILED)
        self._slots[self._next] = (_SLOW_FAILED if slow else _FAILED) if failed else (_SLOW if slow else _OK)
        self._next = (self._next + 1) % len(self._slots)
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def _put_bucket(self, failed: bool, slow: bool) -> None:
        index = self._current_bucket()
        self._bucket_calls[index] += 1
        self._bucket_failures[index] += failed
        self._bucket_slow[index] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def _current_bucket(self) -> int:
        # When the second moves on, retire the buckets of the seconds that went by since the last one seen (each
        # bucket once: at most the ring's size however long the quiet was), so a record stays O(1) on average.
        second = int(self._clock())
        size = len(self._bucket_calls)
        index = second % size
        last = self._last_second
        if second != last:
            for passed in range(max(last + 1, second - size + 1), second + 1):
                self._retire(passed % size)
            self._last_second = second
        return index

    def _retire(self, index: int) -> None:
        self.calls -= self._bucket_calls[index]
        self.failures -= self._bucket_failures[index]
        self.slow -= self._bucket_slow[index]
        self._bucket_calls[index] = self._bucket_failures[index] = self._bucket_slow[index] = 0

    def _tripped(self) -> bool:
        if self.calls < self._config.minimum_calls:
            return False
        if self.failures >= self._config.failure_rate * self.calls:
            return True
        return self._slow_tripped(self.calls)

    def _slow_tripped(self, calls: int) -> bool:
        return self._slow is not None and self.slow >= self._config.slow_call_rate * calls

    def reset(self) -> None:
        with self._lock:
            self._clear()

    def describe(self) -> str:
        calls = max(1, self.calls)
        failure = f"a failure rate of {self.failures / calls:.0%}"
        if self._slow_tripped(calls):
            return f"a slow-call rate of {self.slow / calls:.0%} (calls over {self._slow:g}s) in {self.calls} calls"
        return f"{failure} in {self.calls} calls"

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            if not self._count_based:
                self._current_bucket()  # forget what aged out, even without new calls
            calls, failures, slow = self.calls, self.failures, self.slow
        rates: dict[str, Any] = {
            "calls": calls,
            "failure_rate": round(failures / calls, 4) if calls else None,
        }
        if self._slow is not None:
            rates["slow_call_rate"] = round(slow / calls, 4) if calls else None
        return {"failures": failures, **rates}

    def reset_after_fork(self, lock: threading.Lock) -> None:
        self._lock = threading.Lock()  # its own lock, not the breaker's: success() records without the breaker's
