"""The bulkhead stage: at most ``max_in_flight`` logical calls of a service in flight, across threads and tasks.

The pool bounds sockets; the bulkhead bounds callers. Without it, 500 tasks calling a slow upstream through a pool
of 20 connections all queue inside httpcore's pool; with it, the 21st... 500th call is refused at once (or after
``max_wait``) with ``BulkheadFullError``, which like a pool timeout says *this process* is saturated and never counts
against the upstream.

A call holds its slot from its first attempt until its response arrives (retries included; a streamed body is read
after). A call that may wait is told to ``Wait`` in the queue the adaptive limit uses too (``_slots.py``): a slot is
handed to it first come, first served, and it gives up at ``max_wait`` or at its deadline, whichever comes first.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from ._config import BulkheadConfig
from ._outcome import Outcome, Reason, Rejection
from ._slots import SlotQueue
from .health import BulkheadSnapshot

if TYPE_CHECKING:
    from ._stage import CallView


class Bulkhead(SlotQueue):
    """A policy stage held for the whole call.

    A freed slot is handed to the longest-waiting call (its event is set, ``in_flight`` stays), so a newcomer can
    never take it first: while anyone waits, ``in_flight`` is at ``max_in_flight``.
    """

    def __init__(self, config: BulkheadConfig) -> None:
        self.config = config
        self.in_flight = 0
        self._lock = threading.Lock()
        self._waiters: deque[threading.Event] = deque()

    def admit(self, call: CallView) -> Any:
        with self._lock:
            waits = call.waits
            wake = waits.wake_event(self)
            if self._handed(waits, wake):
                return True
            if wake is None and self.in_flight < self.config.max_in_flight:
                self.in_flight += 1
                return True
            left = waits.left(self, self.config.max_wait) if self.config.max_wait else 0.0
            if left <= 0:
                self._leave(call)
                detail = f"{self.config.max_in_flight} calls in flight"
                if self.config.max_wait:
                    detail += f", none ended within {self.config.max_wait:g}s"
                return Rejection(Reason.BULKHEAD_FULL, 0.0, detail)
            return self._wait(waits, wake, left)

    def record(self, permit: Any, outcome: Outcome, seconds: float) -> None:
        pass  # held for the call, released at its end

    def release(self, permit: Any) -> None:
        with self._lock:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()
        else:
            self.in_flight -= 1

    def snapshot(self) -> BulkheadSnapshot:
        return BulkheadSnapshot(
            max_in_flight=self.config.max_in_flight, in_flight=self.in_flight, waiting=len(self._waiters)
        )

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self._waiters = deque()
