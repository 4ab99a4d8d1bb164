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

from typing import Protocol, TypeVar

import anyio

from ._outcome import Outcome, Rejection, Wait
from ._policy import Call

Request = TypeVar("Request", contravariant=True)
Response = TypeVar("Response")

# How long an async call that waits for a freed bulkhead slot sleeps between looks: event loops cannot block on the
# threading.Event that wakes waiting threads.
ASYNC_WAKE_POLL = 0.005
# How often an async call sleeping before a retry looks whether the registry closed (threads are woken at once).
ASYNC_CLOSE_POLL = 0.05


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


class AsyncExchange(Protocol[Request, Response]):
    """``Exchange`` for async backends."""

    async def attempt(self, call: Call, request: Request) -> tuple[Response | None, Outcome]: ...

    async def discard(self, response: Response) -> None: ...

    def deliver(self, call: Call, request: Request, response: Response) -> Response: ...

    def rejected(self, call: Call, request: Request, rejection: Rejection) -> Exception: ...

    def failed(self, call: Call, request: Request, outcome: Outcome) -> Exception: ...


def drive(call: Call, exchange: Exchange[Request, Response], request: Request) -> Response:
    """Run ``call`` to its end on this thread: the response, or the exception the policy settled on."""
    closing = call.closing
    while True:
        refusal = call.admit()
        if refusal is not None:
            if type(refusal) is Wait:
                (refusal.wake or closing).wait(refusal.seconds)
                continue
            raise exchange.rejected(call, request, refusal)  # type: ignore[arg-type]
        try:
            response, outcome = exchange.attempt(call, request)
            decision = call.record(outcome)
            if not decision.retry:
                if response is None:
                    raise exchange.failed(call, request, outcome) from outcome.error
                return exchange.deliver(call, request, response)
            if response is not None:
                exchange.discard(response)
            if decision.delay > 0:
                closing.wait(decision.delay)  # close() sets it: the retry is then refused at admit()
        except BaseException:
            call.abandon()  # interrupted (or our own bug): free what the call holds, end it; no-op if it ended
            raise


async def adrive(call: Call, exchange: AsyncExchange[Request, Response], request: Request) -> Response:
    """``drive`` for a coroutine; asyncio or trio (through anyio, as httpx itself)."""
    while True:
        refusal = call.admit()
        if refusal is not None:
            if type(refusal) is Wait:
                await anyio.sleep(min(refusal.seconds, ASYNC_WAKE_POLL) if refusal.wake else refusal.seconds)
                continue
            raise exchange.rejected(call, request, refusal)  # type: ignore[arg-type]
        try:
            response, outcome = await exchange.attempt(call, request)
            decision = call.record(outcome)
            if not decision.retry:
                if response is None:
                    raise exchange.failed(call, request, outcome) from outcome.error
                return exchange.deliver(call, request, response)
            if response is not None:
                await exchange.discard(response)
            if decision.delay > 0:
                await _sleep_until_closed(call, decision.delay)
        except BaseException:  # cancellation among them: never a verdict on the upstream
            call.abandon()
            raise


async def _sleep_until_closed(call: Call, seconds: float) -> None:
    # An event loop cannot wait on the threading.Event that close() sets: sleep in slices and look between them, so
    # a retry waiting out a long backoff is refused soon after close(), not when the backoff ends.
    deadline = anyio.current_time() + seconds
    while not call.closing.is_set() and (left := deadline - anyio.current_time()) > 0:
        await anyio.sleep(min(left, ASYNC_CLOSE_POLL))
