"""Waiting for a slot, first come, first served: the queue the bulkhead (``_bulkhead.py``) and the adaptive
concurrency limit (``_adaptive.py``) share.

A call that may wait is told to ``Wait`` on an event of its own (kept in ``call.waits`` under the stage); a freed
slot is handed to the longest-waiting call by setting its event (the slot stays counted as taken), so a newcomer can
never take it first. A thread sleeps on the event; a coroutine looks at it every few milliseconds; either gives up at
the stage's ``max_wait`` or at its deadline, and then leaves the queue (``forget``), handing on a slot it was given
meanwhile and will not take.

A stage using it holds ``_lock`` and ``_waiters`` and says in ``_hand_over`` what a freed slot does when nobody can
take it (the bulkhead: it is free again; the adaptive limit: also when the limit shrank below the calls in flight).
Every method here runs under the stage's lock, except ``forget``, which takes it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

from ._outcome import Wait

if TYPE_CHECKING:
    from ._stage import CallView, Waits


class SlotQueue:
    _lock: threading.Lock
    _waiters: deque[threading.Event]

    def _hand_over(self) -> None:
        """A slot was freed (under the lock): hand it to the longest-waiting call, or free it."""
        raise NotImplementedError

    def _handed(self, waits: Waits, wake: threading.Event | None) -> bool:
        """Whether a slot was handed to this waiting call (it stops waiting and holds it)."""
        if wake is not None and wake.is_set():
            waits.stop(self)
            return True
        return False

    def _wait(self, waits: Waits, wake: threading.Event | None, left: float) -> Wait:
        """Wait up to ``left`` seconds more for a slot: in the queue from the first time, in the same place after."""
        if wake is None:
            wake = threading.Event()
            waits.set_wake_event(self, wake)
            self._waiters.append(wake)
        return Wait(left, wake)

    def forget(self, call: CallView) -> None:
        """A waiting call gave up (interrupted, or refused by a later stage): it leaves the queue."""
        with self._lock:
            self._leave(call)

    def _leave(self, call: CallView) -> None:
        waits = call.waits
        wake = waits.wake_event(self)
        waits.stop(self)
        if wake is None:
            return
        if wake.is_set():
            self._hand_over()  # it was handed a slot it will not take: the next in line gets it
        else:
            self._waiters.remove(wake)
