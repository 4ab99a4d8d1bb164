"""A service's policy at run time: its pipeline, retry rule, stats and observers, and how a call starts.

``Policy.start`` begins a call (``_call.Call``, the per-call state a driver runs: see that module for the loop).
What runs on the calls is the service's pipeline, composed from its settings in ``_pipeline.py``: its call stages,
attempt stages and send gates, each following the contract in ``_stage.py``. The retry budget is not a stage — it
never refuses a first attempt — so the retry rule (``_retry.RetryRule``) consults it directly.
"""

from __future__ import annotations

import random as _random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._call import Call
from ._config import DeadlineConfig, ServiceConfig, StateConfig
from ._events import CallRejected, Hooks, Observer
from ._logging import LOG_OBSERVER
from ._outcome import Reason, Rejection
from ._pipeline import compose
from ._retry import RETRY_AFTER_STATUSES, RetryRule
from ._state import LOCAL, ServiceLink
from ._stats import Stats

__all__ = ["Call", "Policy"]


class Policy:
    """One service's pipeline, retry budget, stats and observers, and the rules that combine them."""

    def __init__(
        self,
        config: ServiceConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
        observers: Iterable[Observer] = (),
        state: StateConfig | None = None,
        min_time: float = DeadlineConfig().min_time,
        link: ServiceLink = LOCAL,
    ) -> None:
        self.config = config
        self.min_time = min_time  # deadline.min_time: less left of a scope's deadline than this, and a call is refused
        self.name = config.name
        self.clock = clock
        self.real_clock = clock is time.monotonic  # then a deadline needs one clock read, not two
        self.random = random
        self.stats = Stats(clock=clock)
        # The statistics and the call log of a call's start and end are fed directly by the call (see _end): no
        # event is built for them; their other events come through the hooks.
        self.hooks = Hooks((self.stats, LOG_OBSERVER, *observers))
        pipeline = compose(config, clock=clock, notify=self._transition, state=state, link=link, hooks=self.hooks)
        self.breaker = pipeline.breaker
        self.budget = pipeline.budget
        self.bulkhead = pipeline.bulkhead
        self.pause = pipeline.pause
        self.rate_limit = pipeline.rate_limit
        self.latencies = pipeline.latencies
        self.chaos = pipeline.chaos
        self.would_reject = pipeline.would_reject
        self.cache = pipeline.cache  # the cache and fallback layer, above this policy (None: neither is set)
        self.call_stages = pipeline.call_stages
        self.stages = pipeline.attempt_stages
        self.send_gates = pipeline.send_gates
        self.endpoints = pipeline.endpoints  # None: one base_url
        self.resets = pipeline.resets
        self.fork_resets = pipeline.fork_resets
        self.closes = pipeline.closes
        self.endpoint_index = self.stages.index(self.endpoints) if self.endpoints is not None else -1
        self.retry = RetryRule(
            config.retry,
            random=random,
            breaker=self.breaker,
            pause=self.pause,
            budget=self.budget,
            min_time=min_time,
        )
        keys = config.retry.idempotency_key
        # Methods whose calls carry an idempotency key (the backends add it, in this header: they own the headers).
        self.keyed_methods: frozenset[str] = keys.methods if keys is not None else frozenset()
        self.key_header = keys.header if keys is not None else ""
        # A method with an idempotency key is as safe to repeat as GET: the upstream deduplicates by the key.
        self.retried_methods = config.retry.allowed_methods | self.keyed_methods
        # The responses whose Retry-After is read: those a retry honours, and those that pause the service.
        self.retry_after_statuses = RETRY_AFTER_STATUSES | (config.pause.statuses if config.pause else frozenset())
        self.closed = False
        # Set by close(): a thread sleeping before a retry wakes at once, and its next admit() is refused.
        self.closing = threading.Event()

    def start(
        self,
        method: str,
        url: object,
        *,
        replayable: bool,
        asked: tuple[float | None, ...] = (),
        retries: bool | int | None = None,
    ) -> Call:
        """Begin one logical call.

        ``url`` is a string or anything whose ``str()`` is the URL (httpx's ``URL``): it is formatted only when a
        message needs it. ``asked`` are the per-phase timeouts the caller set for this one call (empty when it set
        none): a caller who asks for a longer phase than ``timeout.total`` gets a deadline that long, and one who
        asks for no limit (httpx's ``timeout=None``) gets no deadline.

        ``retries`` is the caller's override for this one call (``None``: the settings): ``False`` or ``0``, no
        retry; ``True``, the service's ``retry.total``; a number, that many at most. Turning retries on vouches that
        the call is safe to repeat, so they then apply to any method.
        """
        return Call(self, method.upper(), url, replayable, asked, retries)

    def add_observer(self, observer: Observer) -> None:
        """Deliver this service's events to ``observer`` too."""
        self.hooks.add(observer)

    def early_rejection(self, method: str) -> Rejection | None:
        """The breaker's refusal, checked before a client builds the request (a rejected call then costs a few
        microseconds); ``None`` when it would admit. The transport still gates every attempt."""
        refusal = self.breaker.refusal()
        if refusal is not None:
            self.rejected(method.upper(), refusal)
        return refusal

    def close(self) -> None:
        """Refuse every new attempt from now on, wake calls waiting to retry, and let the parts that hold a
        connection or a thread go (the cache's store, fleet-wide limits and tokens)."""
        self.closed = True
        self.closing.set()
        for close in self.closes:
            close()

    def reset(self) -> None:
        """Close the breaker and clear what the pipeline's parts counted or learned (a pause, the rate limit's
        permits, the retry budget and tokens, the endpoints' ejections, what the adaptive stages learned, the cache),
        and the stats."""
        for reset in self.resets:
            reset()
        self.stats.clear()

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's other threads, their locks, calls and trial slots do not exist here."""
        self.stats.reset_after_fork()
        for reset in self.fork_resets:
            reset()
        if self.chaos is not None:  # read now: ``outbound.testing.chaos`` installs one after the policy is built
            self.chaos.reset_after_fork()
        self.closing = threading.Event()
        if self.closed:
            self.closing.set()

    def rejected(self, method: str, rejection: Rejection) -> None:
        """Tell the observers that a call of ``method`` was refused (our own shutdown is not news)."""
        if rejection.reason is not Reason.CLOSED and self.hooks.call_rejected:
            self.hooks.emit(
                self.hooks.call_rejected, CallRejected(self.name, method, rejection.reason, rejection.retry_in)
            )

    def _transition(self, event: Any) -> None:
        if self.hooks.breaker_transition:
            self.hooks.emit(self.hooks.breaker_transition, event)
