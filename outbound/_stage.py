"""The stage contract: what every admission gate of a service's pipeline is, and what it may ask of a call.

A stage is one resilience feature that can refuse or delay a call before anything is sent — the bulkhead, a pause
the upstream asked for, the rate limit, the breaker, and each later one — written against this module alone, never
against the call loop (``_policy.Call``) or another stage. The pipeline (``_pipeline.py``) puts a stage in a
service's tuples only when its settings turn it on, so a stage that is off costs nothing: no branch, no lookup.

    admit(call)                 -> a permit (any object; None is a fine one) | Rejection | Wait
    record(permit, outcome, s)  the attempt the permit admitted ended so, after ``s`` seconds
    release(permit)             give back what the permit holds, without a verdict (interrupted, refused later)
    at_send(call, permit)       -> None | Rejection | Wait: asked again with the connection in hand, just before
                                   the first byte is written (``SendGate``s only)
    reset_after_fork()          in a forked child: new locks, nothing held by the parent's threads

Stages are admitted in the pipeline's order, and a refusal stops the walk: the permits given so far are released.
A call stage (the bulkhead) is admitted once for the whole call and released when it ends; an attempt stage for
every attempt (a retry is one more request to the upstream). A send gate is also asked as the request is written,
after the pool wait and the connect, so that what it promises holds *at the upstream*: the rate limit's permits are
taken there (calls queued for a connection would otherwise arrive bunched), and the breaker refuses there an attempt
admitted before it opened (a call queued in the pool behind a failing upstream must not become an extra trial).

A stage that must wait (a full bulkhead, the next rate-limit permit, a pause about to end) answers ``Wait``; the
driver sleeps and asks again. ``Waits`` keeps, per call, when it started waiting for each stage, so ``max_wait``
counts from the first ask and never runs past the call's deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from ._outcome import Outcome, Rejection, Wait


class CallView(Protocol):
    """What a stage may read of the call it admits."""

    @property
    def method(self) -> str: ...

    @property
    def attempts(self) -> int:
        """Attempts admitted so far (0 while the first is being admitted)."""

    @property
    def waits(self) -> Waits:
        """The call's waiting state (made on first use)."""


class Stage(Protocol):
    """One admission gate of a service's pipeline."""

    def admit(self, call: CallView) -> Any:
        """A permit (any object, handed back to ``record`` / ``release``), a ``Rejection`` or a ``Wait``."""

    def record(self, permit: Any, outcome: Outcome, seconds: float) -> None:
        """The attempt ``permit`` admitted ended with ``outcome`` after ``seconds`` (attempt stages only)."""

    def release(self, permit: Any) -> None:
        """Give back what ``permit`` holds without a verdict."""

    def reset_after_fork(self) -> None:
        """In a forked child: new locks, and nothing held by the parent's threads."""


class SendGate(Protocol):
    """An attempt stage that is asked once more as the request is written (see the module's docstring)."""

    def at_send(self, call: CallView, permit: Any) -> Rejection | Wait | None:
        """``None`` to send now, a ``Wait`` to ask again after it, or a ``Rejection``: nothing is sent."""


class _Waiting:
    """When a call started waiting for one stage, and the event that stage wakes it with."""

    __slots__ = ("since", "wake")

    def __init__(self, since: float) -> None:
        self.since = since
        self.wake: threading.Event | None = None


class Waits:
    """One call's waits for its stages: since when it waits for each, and the events that wake it.

    ``deadline`` is the call's deadline on ``clock`` (``None``: none); a wait never leaves less than ``min_time``
    of it for the attempt that follows.
    """

    __slots__ = ("_clock", "_deadline", "_entries", "_min_time")

    def __init__(self, clock: Callable[[], float], deadline: float | None, min_time: float) -> None:
        self._clock = clock
        self._deadline = deadline
        self._min_time = min_time
        self._entries: dict[object, _Waiting] = {}

    def left(self, stage: object, max_wait: float) -> float:
        """Seconds the call may still wait for ``stage``: ``max_wait`` from when it first waited for it, never past
        the deadline. The first ask starts the clock; 0.0 or less means "no more waiting"."""
        entry = self._entry(stage)
        now = self._clock()
        left = entry.since + max_wait - now
        if self._deadline is not None:
            # The attempt after the wait must still have deadline.min_time: a wait that leaves less is refused now.
            left = min(left, self._deadline - now - self._min_time)
        return left

    def before_deadline(self) -> float | None:
        """Seconds the call may still wait at all and leave ``min_time`` for its attempt (``None``: no deadline)."""
        return None if self._deadline is None else self._deadline - self._clock() - self._min_time

    def wake_event(self, stage: object) -> threading.Event | None:
        """The event ``stage`` wakes this call with, or ``None`` when it does not wait for ``stage`` with one."""
        entry = self._entries.get(stage)
        return entry.wake if entry is not None else None

    def set_wake_event(self, stage: object, wake: threading.Event) -> None:
        """This call waits for ``stage`` until ``wake`` is set."""
        self._entry(stage).wake = wake

    def stop(self, stage: object) -> None:
        """The call no longer waits for ``stage`` (admitted, or refused)."""
        self._entries.pop(stage, None)

    def stages(self) -> list[object]:
        """The stages the call still waits for."""
        return list(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def _entry(self, stage: object) -> _Waiting:
        entry = self._entries.get(stage)
        if entry is None:
            entry = self._entries[stage] = _Waiting(self._clock())
        return entry
