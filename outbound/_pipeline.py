"""A service's pipeline, composed once from its settings: the stages its calls pass, in order, and nothing else.

This is the one place that decides what runs on a service's calls. A feature whose settings are off is absent from
the tuples below, not a branch the call takes: the call loop (``_policy.Call``) walks the tuples and nothing else.

    call stages      admitted once per call, held until it ends:  bulkhead
    attempt stages   admitted for every attempt, in this order:   pause -> throttle -> concurrency -> rate limit
                                                                  -> breaker -> (p95 latencies) -> (retry tokens)
    send gates       attempt stages asked again as the request is written: the rate limit (its permit), the breaker
    cache            above all of them, not a stage: the clients put it on top of their transports (``_cache/``),
                     so it answers fresh hits without a permit and stale ones in place of the stages' refusals

A pause refuses before a permit is spent; the rate limit comes before the breaker so that a refused attempt never
holds a half-open trial slot in vain. The breaker is always there: every service has one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._breaker import Breaker
from ._config import ServiceConfig, StateConfig
from ._events import BreakerTransition
from ._hedge import AnsweredLatencies
from ._retry import Budget, RetryBudget
from ._stage import SendGate, Stage
from ._state import LOCAL, ServiceLink

if TYPE_CHECKING:
    from ._bulkhead import Bulkhead
    from ._cache._layer import CacheLayer
    from ._pause import Pause
    from ._ratelimit import RateLimit


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The stages of one service. The named ones are kept for health reports and operator actions; the tuples are
    what calls walk. ``send_gates`` pairs each gate with the index of its permit among the attempt stages'."""

    breaker: Breaker
    budget: Budget | None
    bulkhead: Bulkhead | None
    pause: Pause | None
    rate_limit: RateLimit | None
    latencies: AnsweredLatencies | None
    cache: CacheLayer | None  # above the policy: the clients put it on top of their transports (``_cache/``)
    call_stages: tuple[Stage, ...]
    attempt_stages: tuple[Stage, ...]
    send_gates: tuple[tuple[int, SendGate], ...]


def compose(
    config: ServiceConfig,
    *,
    clock: Callable[[], float],
    notify: Callable[[BreakerTransition], None],
    state: StateConfig | None,
    link: ServiceLink = LOCAL,
) -> Pipeline:
    """Build ``config``'s stages (each module imported only when its setting is on); ``link`` is the service's to
    the state its fleet shares, handed to the stages that tell the fleet what they decide."""
    breaker = Breaker(config.name, config.breaker, clock=clock, notify=notify, shared=link)
    budget: Budget | None = RetryBudget(config.retry.budget, clock=clock) if config.retry.budget else None
    bulkhead = pause = rate_limit = latencies = None
    adaptive: list[Any] = []  # throttle, concurrency limit (_throttle.py, _adaptive.py): before the rate limit
    tokens = None
    if config.bulkhead is not None:
        from ._bulkhead import Bulkhead

        bulkhead = Bulkhead(config.bulkhead)
    if config.pause is not None:
        from ._pause import Pause

        pause = Pause(config.pause, cap=config.retry.retry_after_max, clock=clock, shared=link)
    if config.rate_limit is not None:
        from ._ratelimit import RateLimit  # the `limits` extra: imported only by services that set a rate limit

        rate_limit = RateLimit(config.name, config.rate_limit, state=state)
    if config.hedge is not None and config.hedge.delay == "p95":
        latencies = AnsweredLatencies()
    if config.throttle is not None:
        from ._throttle import Throttle

        adaptive.append(Throttle(config.throttle, config.breaker.failure_statuses, clock=clock))
    if config.concurrency is not None:
        from ._adaptive import ConcurrencyLimit

        adaptive.append(ConcurrencyLimit(config.concurrency, clock=clock))
    if config.retry.tokens is not None:
        from ._tokens import Budgets, RetryTokens

        failing = config.retry.status_forcelist | config.breaker.failure_statuses
        tokens = RetryTokens(config.retry.tokens, failing)
        budget = tokens if budget is None else Budgets(tokens, budget)
    cache = None
    if config.cache is not None or config.fallback is not None:
        from ._cache._layer import CacheLayer

        cache = CacheLayer(config, config.cache, config.fallback, state)
    attempt: list[Any] = [stage for stage in (pause, *adaptive, rate_limit) if stage is not None]
    attempt.append(breaker)
    if latencies is not None:
        attempt.append(latencies)
    if tokens is not None:
        attempt.append(tokens)
    gates = tuple((index, stage) for index, stage in enumerate(attempt) if hasattr(stage, "at_send"))
    return Pipeline(
        breaker=breaker,
        budget=budget,
        bulkhead=bulkhead,
        pause=pause,
        rate_limit=rate_limit,
        latencies=latencies,
        cache=cache,
        call_stages=(bulkhead,) if bulkhead is not None else (),
        attempt_stages=tuple(attempt),
        send_gates=gates,
    )
