"""Retry tokens (``retry.tokens``): one pool for a service's retries and hedges, gRPC's retry throttling.

The pool holds ``max`` tokens and starts full. Every failed attempt (a status of ``retry.status_forcelist`` or
``breaker.failure_statuses``, a timeout, a connection failure) takes one token; every other answer gives back
``ratio``. A retry or a hedge goes out only while more than half the pool is left: when most attempts fail, retries
stop at once and resume as answers come back, so a failing upstream sees about as many attempts as first calls.

It is an attempt stage that never refuses (it only watches the outcomes) and a budget the retry rule and the hedge
ask (``try_spend``); beside the ratio budget (``retry.budget``) both must allow a retry.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ._config import TokensConfig
from ._outcome import NO_VERDICT, UPSTREAM_FAILURES, Kind, Outcome

if TYPE_CHECKING:
    from ._retry import Budget
    from ._stage import CallView


class RetryTokens:
    """The token pool; an attempt stage (``admit`` / ``record``) and a ``Budget``."""

    def __init__(self, config: TokensConfig, failing: frozenset[int]) -> None:
        self.config = config
        self._failing = failing
        self._half = config.max / 2
        self.tokens = config.max
        self._lock = threading.Lock()

    def admit(self, call: CallView) -> Any:
        return None

    def record(self, permit: Any, outcome: Outcome, seconds: float) -> None:
        kind = outcome.kind
        if kind in NO_VERDICT:
            return
        failed = kind in UPSTREAM_FAILURES or (kind is Kind.RESPONSE and outcome.status in self._failing)
        with self._lock:
            self._change(-1.0 if failed else self.config.ratio)

    def _change(self, amount: float) -> None:
        # Under the lock. A fleet's pool (_state/tokens.py) also keeps what it has to tell the fleet.
        self.tokens = min(self.config.max, max(0.0, self.tokens + amount))

    def release(self, permit: Any) -> None:
        pass

    def record_request(self) -> None:
        pass

    def try_spend(self) -> bool:
        """Whether a retry or a hedge may go out now: more than half the pool is left."""
        return self.tokens > self._half

    report_key = "retry_tokens"  # its snapshot's place in a health report's ``adaptive``

    def snapshot(self) -> dict[str, Any]:
        return {"tokens": round(self.tokens, 3), "max": self.config.max, "retries_allowed": self.try_spend()}

    def clear(self) -> None:
        with self._lock:
            self.tokens = self.config.max

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()


class Budgets:
    """The ratio budget and the token pool together: a retry needs both."""

    def __init__(self, tokens: RetryTokens, budget: Budget) -> None:
        self._tokens = tokens
        self._budget = budget

    def record_request(self) -> None:
        self._budget.record_request()

    def try_spend(self) -> bool:
        return self._tokens.try_spend() and self._budget.try_spend()

    def clear(self) -> None:
        self._tokens.clear()
        self._budget.clear()

    def reset_after_fork(self) -> None:
        self._tokens.reset_after_fork()
        self._budget.reset_after_fork()
