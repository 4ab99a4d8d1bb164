"""What the network layer needs of the attempt running in this thread or task, in one context variable.

The policy decides around an attempt; inside it, the libraries do the I/O: urllib3's pools, httpcore's streams,
aiohttp's session. Three things must reach down there, and ``Attempt`` carries them all:

- the call's deadline on the real clock (``real_deadline``), which httpcore's reads and writes are cut to and
  aiohttp's awaits are bounded by (``_deadline.py``), and the watchdog's ``watch`` for requests;
- for requests, the attempt's wait for a pooled connection (``pool_wait``, ``timeout.pool`` cut to the deadline):
  requests passes none to urllib3;
- the send gates (``_stage.SendGate``): the network layer asks them once, with the connection in hand and nothing
  written yet (``pass_gates`` / ``apass_gates``) — in urllib3's ``_get_conn``, httpcore's first write, aiohttp's
  pool slot. A gate may make the attempt wait there, or refuse it: ``SendRefused`` then unwinds the library call,
  and the backend reports the attempt as ``Kind.REFUSED``. A transport that never reaches the network (a mock, a
  test's transport) is gated when it answers instead (``gated_after``).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .._outcome import Kind, Outcome, Rejection, Wait

if TYPE_CHECKING:
    from .._call import Call
    from ._deadline import Watch


class SendRefused(Exception):
    """A send gate refused the attempt as it was about to be written; nothing was sent."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.detail)
        self.rejection = rejection


@dataclass(slots=True)
class Attempt:
    """The attempt running in this thread or task. ``call`` is set until its send gates have been asked."""

    call: Call | None
    permits: list[Any]
    real_deadline: float | None
    pool_wait: float | None = None
    watch: Watch | None = None


ATTEMPT: ContextVar[Attempt | None] = ContextVar("outbound_attempt", default=None)


def begin(call: Call, permits: list[Any] | None = None, pool_wait: float | None = None, watch: Any = None) -> Any:
    """Make ``call``'s next attempt (with ``permits``: a hedge's own; the call's by default) the running one; returns
    the token to ``ATTEMPT.reset`` when it ends."""
    deadline = call.deadline
    gated = call if call.gated else None
    permits = call.permits if permits is None else permits
    return ATTEMPT.set(Attempt(gated, permits, deadline.real_at if deadline else None, pool_wait, watch))


def pass_gates(attempt: Attempt) -> None:
    """Ask the send gates on this thread: sleep out a ``Wait`` (``close()`` wakes it), raise ``SendRefused``."""
    call, attempt.call = attempt.call, None  # asked once per attempt
    while call is not None:
        answer = call.at_send(attempt.permits)
        if answer is None:
            return
        if type(answer) is Wait:
            call.closing.wait(answer.seconds)
            continue
        raise SendRefused(answer)  # type: ignore[arg-type]


async def apass_gates(attempt: Attempt) -> None:
    """``pass_gates`` for a coroutine (asyncio or trio)."""
    call, attempt.call = attempt.call, None
    while call is not None:
        answer = call.at_send(attempt.permits)
        if answer is None:
            return
        if type(answer) is Wait:
            await anyio.sleep(answer.seconds)
            continue
        raise SendRefused(answer)  # type: ignore[arg-type]


def gated_after(attempt: Attempt) -> Outcome | None:
    """For a transport that answered without reaching the network layer (a mock): ask the gates now. ``None`` when
    they let it pass (or were asked already), else the refused attempt's outcome (its answer is then discarded)."""
    if attempt.call is None:
        return None
    try:
        pass_gates(attempt)
    except SendRefused as refused:
        return refused_outcome(refused)
    return None


async def agated_after(attempt: Attempt) -> Outcome | None:
    """``gated_after`` for a coroutine."""
    if attempt.call is None:
        return None
    try:
        await apass_gates(attempt)
    except SendRefused as refused:
        return refused_outcome(refused)
    return None


def refused_outcome(refused: SendRefused) -> Outcome:
    return Outcome(Kind.REFUSED, error=refused, refusal=refused.rejection)


def cut(timeout: float | None, error: type[Exception], attempt: Attempt | None) -> float | None:
    """``timeout`` cut to what is left of the running attempt's deadline; ``error`` (the library's timeout class)
    once nothing is left."""
    if attempt is None or attempt.real_deadline is None:
        return timeout
    left = attempt.real_deadline - time.monotonic()
    if left <= 0:
        raise error(DEADLINE_MESSAGE)
    return left if timeout is None or timeout > left else timeout


DEADLINE_MESSAGE = "the call's total deadline expired"
