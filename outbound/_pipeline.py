"""A service's pipeline, composed once from its settings: the stages its calls pass, in order, and nothing else.

This is the one place that decides what runs on a service's calls. A feature whose settings are off is absent from
the tuples below, not a branch the call takes: the call loop (``_policy.Call``) walks the tuples and nothing else.

    call stages      admitted once per call, held until it ends:  bulkhead
    attempt stages   admitted for every attempt, in this order:   pause -> throttle -> concurrency -> rate limit
                                                                  -> breaker (or, with several endpoints, the
                                                                  endpoint choice -> the service's breaker)
                                                                  -> (p95 latencies) -> (retry tokens)
    send gates       attempt stages asked again as the request is written: the rate limit (its permit), the breaker
    cache            above all of them, not a stage: the clients put it on top of their transports (``_cache/``),
                     so it answers fresh hits without a permit and stale ones in place of the stages' refusals
    chaos            below all of them, not a stage: a fault layer in the backend's transport (``_chaos.py``)

A protection with ``enforce: false`` is the same stage wrapped to count what it would refuse (``_observe.py``).

A pause refuses before a permit is spent; the rate limit comes before the breaker so that a refused attempt never
holds a half-open trial slot in vain. The breaker is always there: every service has one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._breaker import Breaker
from ._config import ChaosConfig, ServiceConfig, StateConfig
from ._events import BreakerTransition, Hooks
from ._hedge import AnsweredLatencies
from ._retry import Budget, RetryBudget
from ._stage import SendGate, Stage
from ._state import LOCAL, ServiceLink

if TYPE_CHECKING:
    from ._bulkhead import Bulkhead
    from ._cache._layer import CacheLayer
    from ._chaos import Chaos
    from ._endpoints import Endpoints
    from ._observe import WouldReject
    from ._pause import Pause
    from ._ratelimit import RateLimit
    from ._tokens import RetryTokens


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
    would_reject: WouldReject | None  # the observe-only protections' counts (``enforce: false``)
    chaos: Chaos | None  # not a stage: the fault layer below the policy, in the backend's transport
    call_stages: tuple[Stage, ...]
    attempt_stages: tuple[Stage, ...]
    send_gates: tuple[tuple[int, SendGate], ...]
    # An operator's reset (``registry.reset(name)``): each part forgets what it counted or learned, in this order.
    resets: tuple[Callable[[], None], ...]
    # In a forked child: each part gets new locks and forgets what the parent's threads held. (Not the chaos layer:
    # ``outbound.testing.chaos`` may install one later, so the policy resets its own.)
    fork_resets: tuple[Callable[[], None], ...]
    # When the registry closes: the parts holding a connection or a thread (a fleet-wide limit's sync, the cache's
    # store) let it go.
    closes: tuple[Callable[[], None], ...]
    endpoints: Endpoints | None = None  # a service with several endpoints (``_endpoints.py``)


def compose(
    config: ServiceConfig,
    *,
    clock: Callable[[], float],
    notify: Callable[[BreakerTransition], None],
    state: StateConfig | None,
    link: ServiceLink = LOCAL,
    hooks: Hooks | None = None,
) -> Pipeline:
    """Build ``config``'s stages (each module imported only when its setting is on); ``link`` is the service's to
    the state its fleet shares, handed to the stages that tell the fleet what they decide; ``hooks`` the policy's
    observers, for the cache layer's own event (``CacheServed``)."""
    would_reject = observe = None
    if not config.breaker.enforce or any(
        section is not None and not section.enforce for section in (config.bulkhead, config.rate_limit)
    ):
        from ._observe import WouldReject, observed

        would_reject = WouldReject(config.name, clock)
        observe = observed
    breaker_class: type[Breaker] = Breaker
    if would_reject is not None and not config.breaker.enforce:
        from ._observe import observed_breaker

        breaker_class = observed_breaker(Breaker, would_reject)
    breaker = breaker_class(config.name, config.breaker, clock=clock, notify=notify, shared=link)
    budget: Budget | None = RetryBudget(config.retry.budget, clock=clock) if config.retry.budget else None
    bulkhead = pause = rate_limit = latencies = None
    adaptive: list[Any] = []  # throttle, concurrency limit (_throttle.py, _adaptive.py): before the rate limit
    tokens: RetryTokens | None = None
    if config.bulkhead is not None:
        from ._bulkhead import Bulkhead

        bulkhead = Bulkhead(config.bulkhead)
    if config.pause is not None:
        from ._pause import Pause

        pause = Pause(config.pause, cap=config.retry.retry_after_max, clock=clock, shared=link)
    if config.rate_limit is not None:
        from ._ratelimit import RateLimit  # the `limits` extra: imported only by services that set a rate limit

        rate_limit = RateLimit(config.name, config.rate_limit, state=state)
    chaos = None
    # A fault layer where the process allows chaos and something may switch it on: the settings, the test fixture
    # (which adds its own otherwise), or a fleet's game day.
    if config.chaos_allowed and (config.chaos is not None or (state is not None and state.backend == "redis")):
        from ._chaos import Chaos

        chaos = Chaos(config.name, config.chaos or ChaosConfig())
    if config.hedge is not None and config.hedge.delay == "p95":
        latencies = AnsweredLatencies()
    if config.throttle is not None:
        from ._throttle import Throttle

        adaptive.append(Throttle(config.throttle, config.breaker.failure_statuses, clock=clock))
    if config.concurrency is not None and config.concurrency.scope == "fleet" and state is not None:
        from ._state.concurrency import FleetConcurrencyLimit  # the fleet's limit: shares of it, synced through Redis

        adaptive.append(FleetConcurrencyLimit(config.concurrency, clock=clock, state=state, service=config.name))
    elif config.concurrency is not None:
        from ._adaptive import ConcurrencyLimit

        adaptive.append(ConcurrencyLimit(config.concurrency, clock=clock))
    if config.retry.tokens is not None:
        from ._tokens import Budgets, RetryTokens

        failing = config.retry.status_forcelist | config.breaker.failure_statuses
        if config.retry.tokens.scope == "fleet" and state is not None:
            from ._state.tokens import FleetRetryTokens  # one pool for the fleet, synced through Redis

            tokens = FleetRetryTokens(config.retry.tokens, failing, state=state, service=config.name)
        else:
            tokens = RetryTokens(config.retry.tokens, failing)
        budget = tokens if budget is None else Budgets(tokens, budget)
    cache = None
    if config.cache is not None or config.fallback is not None:
        from ._cache._layer import CacheLayer

        cache = CacheLayer(config, config.cache, config.fallback, state, hooks=hooks)
    call_stage: Any = bulkhead
    if observe is not None and would_reject is not None and bulkhead is not None and not bulkhead.config.enforce:
        call_stage = observe(bulkhead, "bulkhead", would_reject)
    limit: Any = rate_limit
    if observe is not None and would_reject is not None and rate_limit is not None and not rate_limit.config.enforce:
        limit = observe(rate_limit, "rate_limit", would_reject)
    attempt: list[Any] = [stage for stage in (pause, *adaptive, limit) if stage is not None]
    endpoints = None
    if config.endpoints or config.discovery is not None:
        from ._endpoints import Endpoints, ServiceBreaker
        from ._state.ejections import store_for

        endpoints = Endpoints(config, clock=clock, breaker=breaker, store=store_for(link, config))
        if config.discovery is not None:
            from ._discovery import Discovery

            Discovery(config, endpoints, clock).start()  # a name that does not resolve: a ConfigError, now
        attempt += [endpoints, ServiceBreaker(breaker, endpoints)]
    else:
        attempt.append(breaker)
    if latencies is not None:
        attempt.append(latencies)
    if tokens is not None:
        attempt.append(tokens)
    gates = tuple((index, stage) for index, stage in enumerate(attempt) if hasattr(stage, "at_send"))
    # What an operator's reset clears, composed with the parts (a part that is off is not asked); the cache goes
    # last, so no stale answer outlives the state it was kept for.
    resets: list[Callable[[], None]] = [breaker.reset]
    for part in (endpoints, pause, rate_limit):
        if part is not None:
            resets.append(part.reset)
    for learned in (would_reject, *adaptive, budget, cache):  # budget: the retry budget and the retry tokens
        if learned is not None:
            resets.append(learned.clear)
    forked = [*attempt, call_stage, budget, cache]
    holding = [cache, rate_limit, *adaptive, tokens]  # (those of them with a close(): their fleet-wide kinds)
    return Pipeline(
        breaker=breaker,
        budget=budget,
        bulkhead=bulkhead,
        pause=pause,
        rate_limit=rate_limit,
        latencies=latencies,
        cache=cache,
        would_reject=would_reject,
        chaos=chaos,
        call_stages=(call_stage,) if call_stage is not None else (),
        attempt_stages=tuple(attempt),
        send_gates=gates,
        endpoints=endpoints,
        resets=tuple(resets),
        fork_resets=tuple(part.reset_after_fork for part in forked if part is not None),
        closes=tuple(part.close for part in holding if part is not None and hasattr(part, "close")),
    )
