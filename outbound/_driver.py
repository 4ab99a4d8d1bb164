"""The attempt loop, written once per flavour: ``drive`` (threads) and ``adrive`` (asyncio and trio).

Every backend runs its calls through here (httpx's auth flows are the model: the logic in one place, the sync and
async variants only drive it). A backend supplies an ``Exchange``: how to make one attempt, how to give a response
back, and which exceptions its refusals and failures become. The loop::

    admit -> (refused: raise | wait: wait, admit again) -> attempt -> record -> done: return / raise
                                                                              -> retry: discard, sleep, again
    any exception on the way (KeyboardInterrupt, cancellation, a bug of ours) -> abandon, re-raise

Waits are the only I/O here: ``threading.Event.wait`` (so ``close()`` wakes a sleeping retry at once) or
``anyio.sleep`` (asyncio or trio, whichever runs the call).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol, TypeVar

import anyio

from ._call import Call
from ._hedge import Hedge
from ._outcome import Outcome, Rejection, Wait

Request = TypeVar("Request", contravariant=True)
Response = TypeVar("Response")
# Invariant: an async exchange also makes requests (a hedge's copy).
AsyncRequest = TypeVar("AsyncRequest")

# How long an async call that waits for a freed bulkhead slot sleeps between looks: event loops cannot block on the
# threading.Event that wakes waiting threads.
ASYNC_WAKE_POLL = 0.005
# How often an async call sleeping before a retry looks whether the registry closed (threads are woken at once).
ASYNC_CLOSE_POLL = 0.05
# How often a thread waiting for a bulkhead slot looks whether the registry closed (its event is the bulkhead's).
SYNC_CLOSE_POLL = 0.05


class Exchange(Protocol[Request, Response]):
    """What a backend does for the driver, for one request."""

    def attempt(self, call: Call, request: Request) -> tuple[Response | None, Outcome]:
        """Make one attempt (timeouts from ``call.attempt_timeouts``): the response, or ``None`` and why."""

    def discard(self, response: Response) -> None:
        """Release a response that will be retried (give its connection back)."""

    def deliver(self, call: Call, request: Request, response: Response) -> Response:
        """The response to return to the caller (a streamed body wrapped so its errors stay outbound's)."""

    def rejected(self, call: Call, request: Request, rejection: Rejection) -> Exception:
        """The exception a refusal becomes."""

    def failed(self, call: Call, request: Request, outcome: Outcome) -> Exception:
        """The exception a failed final attempt becomes."""


class AsyncExchange(Protocol[AsyncRequest, Response]):
    """``Exchange`` for async backends, which also copy a request for a hedge."""

    async def attempt(
        self, call: Call, request: AsyncRequest, hedge: Hedge | None = None
    ) -> tuple[Response | None, Outcome]:
        """One attempt, the call's own or ``hedge``'s (admitted with its own permits)."""

    def copy(self, request: AsyncRequest) -> AsyncRequest:
        """A request like ``request`` for a hedge to send alongside it (the attempts must not share mutable state)."""

    async def discard(self, response: Response) -> None: ...

    def deliver(self, call: Call, request: AsyncRequest, response: Response) -> Response: ...

    def rejected(self, call: Call, request: AsyncRequest, rejection: Rejection) -> Exception: ...

    def failed(self, call: Call, request: AsyncRequest, outcome: Outcome) -> Exception: ...


def drive(call: Call, exchange: Exchange[Request, Response], request: Request) -> Response:
    """Run ``call`` to its end on this thread: the response, or the exception the policy settled on."""
    closing = call.closing
    while True:
        try:
            refusal = call.admit()
            if refusal is not None:
                if type(refusal) is Wait:
                    _wait(refusal, closing)
                    continue
                raise exchange.rejected(call, request, refusal)  # type: ignore[arg-type]
            response, outcome = exchange.attempt(call, request)
            delay = _retry_delay(call, exchange, request, response, outcome)
            if delay is None:
                return exchange.deliver(call, request, response)  # type: ignore[arg-type]
            if response is not None:
                exchange.discard(response)
            if delay > 0:
                closing.wait(delay)  # close() sets it: the retry is then refused at admit()
        except BaseException:
            call.abandon()  # interrupted (or our own bug): free what the call holds, end it; no-op if it ended
            raise


def _retry_delay(
    call: Call,
    exchange: Exchange[Any, Any] | AsyncExchange[Any, Any],
    request: Any,
    response: Any,
    outcome: Outcome,
) -> float | None:
    """Record the attempt's ``outcome``: the seconds to wait before the call's next attempt, or ``None`` when the call
    ends with ``response`` (never ``None`` then: a call that ends without one raises here, see below)."""
    decision = call.record(outcome)
    if decision.retry:
        return decision.delay
    if response is None:
        raise _ended_without_answer(exchange, call, request, outcome)
    return None


def _ended_without_answer(
    exchange: Exchange[Any, Any] | AsyncExchange[Any, Any], call: Call, request: Any, outcome: Outcome
) -> Exception:
    """The exception a call whose last attempt got no response ends with: the refusal of a send gate, or the
    failure (raised ``from`` the backend's own exception)."""
    if outcome.refusal is not None:
        error = exchange.rejected(call, request, outcome.refusal)
        error.__suppress_context__ = True  # the internal SendRefused is not the caller's business
        return error
    error = exchange.failed(call, request, outcome)
    error.__cause__ = outcome.error
    return error


def _wait(wait: Wait, closing: threading.Event) -> None:
    """Sleep out ``wait`` on this thread: woken by the stage's event (a bulkhead slot handed over) or by close()."""
    if wait.wake is None:
        closing.wait(wait.seconds)
        return
    ends = time.monotonic() + wait.seconds
    while not wait.wake.wait(min(SYNC_CLOSE_POLL, max(0.0, ends - time.monotonic()))):
        if closing.is_set() or time.monotonic() >= ends:
            return


async def adrive(call: Call, exchange: AsyncExchange[AsyncRequest, Response], request: AsyncRequest) -> Response:
    """``drive`` for a coroutine; asyncio or trio (through anyio, as httpx itself)."""
    while True:
        try:
            refusal = call.admit()
            if refusal is not None:
                if type(refusal) is Wait:
                    await anyio.sleep(min(refusal.seconds, ASYNC_WAKE_POLL) if refusal.wake else refusal.seconds)
                    continue
                raise exchange.rejected(call, request, refusal)  # type: ignore[arg-type]
            delay = call.hedge_delay()
            if delay is None:
                response, outcome = await exchange.attempt(call, request)
            else:
                # Through a variable of its own: unpacked straight into ``response`` (typed ``Response | None`` by
                # the branch above), mypy would solve _hedged's ``Response`` as ``Response | None`` and reject it.
                raced = await _hedged(call, exchange, request, delay)
                response, outcome = raced
            retry_in = _retry_delay(call, exchange, request, response, outcome)
            if retry_in is None:
                return exchange.deliver(call, request, response)  # type: ignore[arg-type]
            if response is not None:
                await exchange.discard(response)
            if retry_in > 0:
                await _sleep_until_closed(call, retry_in)
        except BaseException:  # cancellation among them: never a verdict on the upstream
            call.abandon()
            raise


async def _hedged(
    call: Call, exchange: AsyncExchange[AsyncRequest, Response], request: AsyncRequest, delay: float
) -> tuple[Response | None, Outcome]:
    """One attempt, raced by a hedge (up to ``hedge.max``) each time ``delay`` passes without an answer.

    The first response wins, whatever its status (``record`` then judges it as any answer); a failure waits for the
    attempts still running, and only when all failed does the first failure stand. The losers are cancelled, which
    makes httpcore discard their connections, and a loser that answered too is closed. Only the winner's outcome
    reaches the breaker and the stats: a loser says nothing certain about the upstream.
    """
    finished: list[tuple[int, Response | None, Outcome]] = []
    hedges: dict[int, Hedge] = {}
    answered = anyio.Event()

    async def run(index: int, attempt_request: AsyncRequest) -> None:
        response, outcome = await exchange.attempt(call, attempt_request, hedges.get(index))
        finished.append((index, response, outcome))
        if response is not None or len(finished) == len(hedges) + 1:
            answered.set()

    async with anyio.create_task_group() as group:
        group.start_soon(run, 0, request)
        while True:
            with anyio.move_on_after(delay):
                await answered.wait()
            if answered.is_set():
                break
            hedge = call.hedge(delay * (len(hedges) + 1))  # how long the first attempt has gone unanswered
            if hedge is None:
                await answered.wait()
                break
            hedges[len(hedges) + 1] = hedge
            group.start_soon(run, len(hedges), exchange.copy(request))
        group.cancel_scope.cancel()
    answers = [entry for entry in finished if entry[1] is not None]
    winner, response, outcome = answers[0] if answers else finished[0]
    # The permits first (no await: a cancellation cannot come in between), then the losers' connections, shielded
    # from a cancellation of this task so that none is left checked out of the pool.
    for index, hedge in hedges.items():
        if index == winner:
            call.adopt(hedge)
        else:
            call.drop(hedge)
    losers = [loser for index, loser, _ in finished if index != winner and loser is not None]
    if losers:
        with anyio.CancelScope(shield=True):
            for loser in losers:
                await exchange.discard(loser)
    return response, outcome


async def _sleep_until_closed(call: Call, seconds: float) -> None:
    # An event loop cannot wait on the threading.Event that close() sets: sleep in slices and look between them, so
    # a retry waiting out a long backoff is refused soon after close(), not when the backoff ends.
    deadline = anyio.current_time() + seconds
    while not call.closing.is_set() and (left := deadline - anyio.current_time()) > 0:
        await anyio.sleep(min(left, ASYNC_CLOSE_POLL))
