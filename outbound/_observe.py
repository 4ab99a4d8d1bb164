"""Observe-only protections (``enforce: false``): every decision is made and counted, none is enforced.

A breaker, bulkhead or rate limit whose settings say ``enforce: false`` is put in the pipeline wrapped in
``Observed``: the wrapped stage decides exactly as it would (its state, windows and trials move as they would), and
where it would refuse or make a call wait the wrapper counts a *would-reject* (by reason), logs it and lets the call
through. "What would these settings have refused on yesterday's traffic?" is then a number in the health report,
on the status page and in the CLI, before anyone is refused.

What differs from enforcing, on purpose: a call the breaker would have refused goes to the upstream, and its outcome
is not fed to the open breaker (an enforcing breaker would never have seen it), so the breaker opens, half-opens and
closes on the same schedule as an enforcing one on the same failures. An observed bulkhead counts only the calls it
admitted, so it reports the calls that found it full (as an enforcing one would have refused them).

The stages know nothing of this module; the pipeline wraps them only when a setting asks (``_pipeline.compose``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._outcome import Outcome, Rejection, Wait
from ._stage import CallView, Stage

logger = logging.getLogger("outbound.observe")


class _Observed:
    """The permit of a call a stage would have refused: nothing is held."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OBSERVED"


OBSERVED = _Observed()


HOUR_BUCKETS = 60  # the last hour's would-rejects, a minute a bucket


class WouldReject:
    """One service's would-reject counts, by protection and reason, and in the last hour."""

    def __init__(self, service: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._minutes: list[tuple[int, int]] = [(-1, 0)] * HOUR_BUCKETS  # (minute, count) in a ring
        self.protections: list[str] = []
        # Switched on at run time by the fleet (``outbound enforce NAME``): the observed protections enforce again,
        # without a restart.
        self.enforcing = False

    def add(self, protection: str, answer: Rejection | Wait) -> None:
        key = f"{protection}:{answer.reason.value}" if isinstance(answer, Rejection) else f"{protection}:wait"
        minute = int(self._clock() // 60)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            slot = minute % HOUR_BUCKETS
            held, count = self._minutes[slot]
            self._minutes[slot] = (minute, count + 1 if held == minute else 1)
        logger.debug(
            "observe-only: the %s of service %r would have %s a call",
            protection,
            self.service,
            "refused" if isinstance(answer, Rejection) else "delayed",
            extra={"outbound_service": self.service, "outbound_would_reject": protection},
        )

    def counts(self) -> Mapping[str, int]:
        """Would-rejects so far: ``{"breaker:circuit_open": 3, "bulkhead:wait": 1, ...}``."""
        with self._lock:
            return dict(self._counts)

    def last_hour(self) -> int:
        """Would-rejects in the last hour (by whole minutes)."""
        now = int(self._clock() // 60)
        with self._lock:
            return sum(count for minute, count in self._minutes if now - HOUR_BUCKETS < minute <= now)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self._minutes = [(-1, 0)] * HOUR_BUCKETS

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()


class Observed:
    """A stage decided but not enforced (see the module's docstring)."""

    def __init__(self, stage: Stage, protection: str, counts: WouldReject) -> None:
        self.stage = stage
        self.protection = protection
        self.counts = counts
        counts.protections.append(protection)

    def admit(self, call: CallView) -> Any:
        answer = self.stage.admit(call)
        if isinstance(answer, Rejection | Wait) and not self.counts.enforcing:
            self._give_up_waiting(call)
            self.counts.add(self.protection, answer)
            return OBSERVED
        return answer

    def record(self, permit: Any, outcome: Outcome, seconds: float) -> None:
        if permit is not OBSERVED:
            self.stage.record(permit, outcome, seconds)

    def release(self, permit: Any) -> None:
        if permit is not OBSERVED:
            self.stage.release(permit)

    def reset_after_fork(self) -> None:
        self.stage.reset_after_fork()
        self.counts.reset_after_fork()

    def _give_up_waiting(self, call: CallView) -> None:
        forget = getattr(self.stage, "forget", None)
        if forget is not None:
            forget(call)  # a bulkhead's queue must not keep a call that went on without it
        call.waits.stop(self.stage)


class ObservedGate(Observed):
    """An observed send gate: asked again as the request is written, and not enforced there either."""

    def at_send(self, call: CallView, permit: Any) -> Rejection | Wait | None:
        if permit is OBSERVED:
            return None
        answer = self.stage.at_send(call, permit)  # type: ignore[attr-defined]
        if answer is not None and self.counts.enforcing:
            return answer  # type: ignore[no-any-return]
        if answer is not None:
            call.waits.stop(self.stage)
            self.counts.add(self.protection, answer)
        return None


def observed(stage: Any, protection: str, counts: WouldReject) -> Any:
    """``stage`` wrapped to observe only."""
    return ObservedGate(stage, protection, counts) if hasattr(stage, "at_send") else Observed(stage, protection, counts)


def observed_breaker(breaker_class: type, counts: WouldReject) -> type:
    """A ``Breaker`` subclass that decides as the breaker does and refuses nothing: the same object for health
    reports, operator actions and the fleet, and every ``refusal()`` asked before the stages walk answers "go on"."""

    class ObservedBreaker(breaker_class):  # type: ignore[misc]
        def refusal(self) -> Rejection | None:
            if counts.enforcing:
                return super().refusal()  # type: ignore[no-any-return]
            return None  # the attempt stages' walk asks admit(), which counts the would-reject

        def admit(self, call: object = None) -> Any:
            answer = super().admit(call)
            if isinstance(answer, Rejection) and not counts.enforcing:
                counts.add("breaker", answer)
                return OBSERVED
            return answer

        def at_send(self, call: object, permit: Any) -> Rejection | None:
            if permit is OBSERVED:
                return None
            answer = super().at_send(call, permit)
            if answer is not None and not counts.enforcing:
                counts.add("breaker", answer)
                return None
            return answer  # type: ignore[no-any-return]

        def record(self, permit: Any, outcome: Outcome, seconds: float) -> None:
            if permit is not OBSERVED:  # an enforcing breaker would never have seen the call
                super().record(permit, outcome, seconds)

        def release(self, permit: Any) -> None:
            if permit is not OBSERVED:
                super().release(permit)

    counts.protections.append("breaker")
    return ObservedBreaker
