"""The send gates, measured at the upstream: what a stage promises must hold where the requests arrive.

Calls wait for a pooled connection after they are admitted. A rate limit counted at admission then lets the calls
that queued arrive bunched; a breaker that opens while calls queue lets them through as extra "trials". Both are
asked again as each request is written (``_stage.SendGate``), so here the upstream's own arrival times are the
judge: the most requests in any one-second window, and what reaches an upstream while its breaker is open or
half-open.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import outbound
from outbound import Registry
from tests.conftest import RegistryFactory
from tests.core.conftest import SYNC_KINDS
from tests.upstream import Upstream, UpstreamProcess


def busiest_window(arrivals: list[float], seconds: float = 1.0) -> int:
    """The most arrivals in any window of ``seconds`` (a sliding window over the sorted times)."""
    times = sorted(arrivals)
    most = start = 0
    for end, at in enumerate(times):
        while at - times[start] >= seconds:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_busiest_window_counts_what_a_window_holds() -> None:
    assert busiest_window([]) == 0
    assert busiest_window([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert busiest_window([0.0, 0.1, 2.0]) == 2
    assert busiest_window([0.0] * 5) == 5


# -- the rate limit holds at the upstream ---------------------------------------------------------------------------

RATE = 50  # per second
CALLS = 150  # three seconds' worth at the rate
# The upstream notes an arrival when its thread reads the request: on a machine busy with other work, that can lag
# the write by more than the margin the client spaces its writes with (tens of milliseconds), and a request of one
# window then counts in the next. A tenth of the rate is allowed for that at the upstream (the pool's queue used to
# bunch 8 to 20 more); where the requests are written, the rate holds exactly.
JITTER = RATE // 10


class _Sends(outbound.Observer):
    """When each attempt passed its send gates: the moment before its first byte is written."""

    def __init__(self) -> None:
        self.at: list[float] = []

    def attempt_sending(self, event: outbound.AttemptSending) -> None:
        self.at.append(time.monotonic())


def _limited(upstream: UpstreamProcess, client: str, transport: str = "httpcore") -> dict[str, Any]:
    return {
        "base_url": upstream.url,
        "client": client,
        "transport": transport,
        # Waits up to 5 s for a permit: every call is admitted sooner or later, so the callers offer far more than
        # the rate and the pool (20 connections) queues them.
        "rate_limit": {"rate": f"{RATE}/second", "max_wait": 5},
        "timeout": {"total": 10, "pool": 10},
        "retry": {"total": 0},
    }


@pytest.mark.parametrize("client", SYNC_KINDS)
def test_threads_never_get_more_than_the_rate_to_the_upstream(
    upstream_process: UpstreamProcess, make_registry: RegistryFactory, client: str
) -> None:
    # The upstream runs in a process of its own: in this one, 64 calling threads would delay when it notes an
    # arrival by as much as they hold the GIL.
    upstream = upstream_process
    registry = make_registry(api=_limited(upstream, client))
    sends = _Sends()
    registry.add_observer(sends)
    get = registry.session("api").get if client == "requests" else registry.client("api").get
    sent = iter(range(CALLS))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if next(sent, None) is None:
                    return
            get("slow", params={"delay": 0.05})

    threads = [threading.Thread(target=worker) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    arrivals = upstream.arrived("/slow")
    assert len(arrivals) == CALLS
    # Not the near-double the pool's queue used to bunch up: never more than the rate.
    assert busiest_window(sends.at) <= RATE
    assert busiest_window(arrivals) <= RATE + JITTER


@pytest.mark.parametrize("transport", ["httpcore", "aiohttp"])
def test_tasks_never_get_more_than_the_rate_to_the_upstream(
    upstream_process: UpstreamProcess, make_registry: RegistryFactory, transport: str, library: str
) -> None:
    upstream = upstream_process
    registry = make_registry(api=_limited(upstream, library, transport))
    sends = _Sends()
    registry.add_observer(sends)

    async def main() -> None:
        client = registry.async_client("api")
        await asyncio.gather(*(client.get("slow", params={"delay": 0.05}) for _ in range(CALLS)))

    asyncio.run(main())
    arrivals = upstream.arrived("/slow")
    assert len(arrivals) == CALLS
    assert busiest_window(sends.at) <= RATE
    assert busiest_window(arrivals) <= RATE + JITTER


# -- an open breaker lets nothing through that queued before it opened ----------------------------------------------


class _Transitions(outbound.Observer):
    """When the breaker opened, turned half-open and closed (the first time each), on the monotonic clock, and when
    each attempt passed its send gates (the moment before its first byte is written); and, as the breaker opens, the
    upstream turns healthy but slow, so the trial takes a second."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.at: dict[str, float] = {}
        self.sent: list[float] = []

    def attempt_sending(self, event: outbound.AttemptSending) -> None:
        self.sent.append(time.monotonic())

    def breaker_transition(self, event: outbound.BreakerTransition) -> None:
        if event.new == "open" and "open" not in self.at:
            self.upstream.set_mode("slow", delay=1.0)
        self.at.setdefault(event.new, time.monotonic())


def _herd(upstream: Upstream, client: str) -> dict[str, Any]:
    return {
        "base_url": upstream.url,
        "client": client,
        "breaker": {"fail_max": 5, "reset_timeout": 0.5, "half_open_max_calls": 1},
        "timeout": {"pool": 5, "total": 10},
        "retry": {"total": 0},
    }


def _trial_period_sends(transitions: _Transitions) -> list[float]:
    # The attempts written from the opening to the moment the trial's answer closed the breaker. Counted where they
    # are written, not where they arrive: the in-process upstream may read a request written just before the opening
    # well after it on a loaded machine, and that request was no extra trial.
    assert {"open", "half-open", "closed"} <= set(transitions.at), transitions.at
    return [at for at in transitions.sent if transitions.at["open"] <= at <= transitions.at["closed"]]


def test_async_tasks_queued_for_a_connection_are_no_extra_trials(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    upstream.set_mode("failing", status=503)
    registry = make_registry(api={**_herd(upstream, library), "transport": async_transport})
    transitions = _Transitions(upstream)
    registry.add_observer(transitions)

    async def caller(stop: float) -> None:
        client = registry.async_client("api")
        while time.monotonic() < stop and "closed" not in transitions.at:
            with contextlib.suppress(outbound.CallError):
                await client.get("work")
            await asyncio.sleep(0.01)

    async def main() -> None:
        stop = time.monotonic() + 8
        await asyncio.gather(*(caller(stop) for _ in range(200)))

    asyncio.run(main())
    assert len(_trial_period_sends(transitions)) == 1  # the trial, and nothing queued before it


def test_threads_queued_for_a_connection_are_no_extra_trials(
    upstream: Upstream, make_registry: RegistryFactory, kind: str
) -> None:
    upstream.set_mode("failing", status=503)
    registry = make_registry(api=_herd(upstream, kind))
    transitions = _Transitions(upstream)
    registry.add_observer(transitions)
    get: Callable[[str], Any] = registry.session("api").get if kind == "requests" else registry.client("api").get
    stop = time.monotonic() + 8

    def caller() -> None:
        while time.monotonic() < stop and "closed" not in transitions.at:
            with contextlib.suppress(outbound.CallError):
                get("work")
            time.sleep(0.01)

    threads = [threading.Thread(target=caller) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert len(_trial_period_sends(transitions)) == 1


def test_a_refusal_at_the_connection_sends_nothing_and_is_a_rejection(
    upstream: Upstream, make_registry: RegistryFactory, kind: str
) -> None:
    # An attempt admitted while the breaker was closed, whose connection came after it opened: refused as it is
    # written, as a CircuitOpenError saying nothing was sent; counted as a rejection, not an error.
    registry: Registry = make_registry(api={"base_url": upstream.url, "client": kind, "pool": {"max_connections": 1}})
    get: Callable[..., Any] = registry.session("api").get if kind == "requests" else registry.client("api").get
    holder = threading.Thread(target=get, args=("slow",), kwargs={"params": {"delay": 0.3}})
    holder.start()
    assert upstream.wait_for(lambda: upstream.hits_by_path["/slow"] == 1)
    errors: list[BaseException] = []

    def queued() -> None:
        try:
            get("ok")
        except outbound.CallError as error:
            errors.append(error)

    waiting = threading.Thread(target=queued)
    waiting.start()
    time.sleep(0.05)  # admitted, and waiting for the one connection
    registry.isolate("api", 60)
    holder.join(timeout=5)
    waiting.join(timeout=5)
    [error] = errors
    assert isinstance(error, outbound.CircuitOpenError)
    assert "nothing was sent" in str(error)
    assert upstream.hits_by_path["/ok"] == 0
    stats = registry["api"].policy.stats
    assert stats.errors == 0
    assert stats.short_circuited == 1
