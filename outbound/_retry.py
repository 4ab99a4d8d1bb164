"""Retries: when a failed attempt is retried (``RetryRule``), backoff with jitter, ``Retry-After`` parsing, and the
retry budget.

Decisions, pure functions and one small thread-safe counter; no sleeping here (the drivers sleep).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ._config import MAX_RETRIES, BudgetConfig, RetryConfig
from ._outcome import DONE, NOTHING_SENT, UPSTREAM_FAILURES, Decision, Kind, Outcome

if TYPE_CHECKING:
    from ._breaker import Breaker
    from ._deadline import Deadline
    from ._pause import Pause

# Statuses for which a Retry-After header is honoured (as urllib3's Retry.RETRY_AFTER_STATUS_CODES).
RETRY_AFTER_STATUSES = frozenset({413, 429, 503})

# 2.0 ** 1024 overflows a float: past this exponent every backoff is capped by backoff_max anyway.
_MAX_EXPONENT = 64
# delta-seconds (RFC 9110 section 10.2.3): ASCII digits only. str.isdigit() also accepts "²", "①" and other
# scripts' digits, which float() then refuses (or reads as a number the sender never wrote). Ten digits are over
# 300 years: more cannot be meant, and every ask past retry_after_max is treated alike anyway.
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")
# An HTTP date is printable ASCII; anything else in the header is malformed, not a date to guess at.
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]{1,64}")


class Waits:
    """The switch ``outbound.testing`` turns off so that a test of the retry path takes milliseconds: while
    ``enabled`` is false every backoff and ``Retry-After`` wait is zero (the decisions are unchanged)."""

    enabled = True


WAITS = Waits()


def backoff_delay(config: RetryConfig, retry_number: int, random: Callable[[], float]) -> float:
    """Seconds to wait before retry number ``retry_number`` (1 for the first retry).

    ``backoff_factor * 2 ** (retry_number - 1)`` plus up to ``backoff_jitter`` seconds of random jitter (so that
    clients that failed together do not retry together), capped at ``backoff_max``.
    """
    exponent = min(retry_number - 1, _MAX_EXPONENT)
    delay = config.backoff_factor * (2.0**exponent) + random() * config.backoff_jitter
    return min(config.backoff_max, delay)


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds a ``Retry-After`` header asks us to wait, or ``None`` if absent or malformed.

    Accepts delta-seconds (``"120"``, ASCII digits only) and HTTP dates (``"Wed, 21 Oct 2015 07:28:00 GMT"``); a
    date in the past means zero. Anything else — other scripts' digits, a sign, a fraction, control characters — is
    malformed: ``None``, as if the header were absent. Never raises.
    """
    if not isinstance(value, str):
        return None
    value = value.strip(" \t")
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    if not _PRINTABLE_ASCII.fullmatch(value):
        return None
    import email.utils  # only for the rare HTTP date: the module is not a cheap import

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; parsedate marks "-0000" as naive
        return None
    return max(0.0, when.timestamp() - now())


class Budget(Protocol):
    """What the retry rule and the hedge ask before a retry: the ratio budget below, ``retry.tokens``
    (``_tokens.py``), or both."""

    def record_request(self) -> None: ...

    def try_spend(self) -> bool: ...

    def clear(self) -> None: ...

    def reset_after_fork(self) -> None: ...


class RetryBudget:
    """Retries may add at most ``ratio`` of recent requests plus ``min_per_second`` per second (Finagle's budget).

    Requests and retries are counted in one-second buckets over a ten-second window, shared by every thread and
    task of the service, so a dead upstream sees about ``(1 + ratio)`` times the traffic rather than
    ``(1 + retry.total)`` times, while a quiet service can still retry a little.
    """

    WINDOW_SECONDS = 10

    def __init__(self, config: BudgetConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ratio = config.ratio
        self._reserve = config.min_per_second * self.WINDOW_SECONDS
        self._clock = clock
        self._lock = threading.Lock()
        self._seconds = [-1] * self.WINDOW_SECONDS
        self._requests = [0] * self.WINDOW_SECONDS
        self._retries = [0] * self.WINDOW_SECONDS

    def _bucket(self, second: int) -> int:
        index = second % self.WINDOW_SECONDS
        if self._seconds[index] != second:
            self._seconds[index] = second
            self._requests[index] = 0
            self._retries[index] = 0
        return index

    def record_request(self) -> None:
        """Count one new (first-attempt) request."""
        with self._lock:
            self._requests[self._bucket(int(self._clock()))] += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; ``False`` (and nothing taken) when it is spent."""
        with self._lock:
            second = int(self._clock())
            index = self._bucket(second)
            oldest = second - self.WINDOW_SECONDS
            requests = retries = 0
            for bucket_second, bucket_requests, bucket_retries in zip(
                self._seconds, self._requests, self._retries, strict=True
            ):
                if bucket_second > oldest:
                    requests += bucket_requests
                    retries += bucket_retries
            if retries + 1 > self._ratio * requests + self._reserve:
                return False
            self._retries[index] += 1
            return True

    def clear(self) -> None:
        """Forget every request and retry counted (``registry.reset``)."""
        with self._lock:
            self._seconds = [-1] * self.WINDOW_SECONDS
            self._requests = [0] * self.WINDOW_SECONDS
            self._retries = [0] * self.WINDOW_SECONDS

    def reset_after_fork(self) -> None:
        """Replace the lock after ``fork()``: the parent's may have been held by a thread that does not exist here."""
        self._lock = threading.Lock()


def retries_for(retries: object, configured: int) -> int:
    """The retries a caller's ``retries=`` allows one call: ``False``/``0`` none, ``True`` ``retry.total``,
    a number that many at most.

    Raises:
        ValueError: anything else (a wrong type must not pass silently as "no override").
    """
    if isinstance(retries, bool):
        return configured if retries else 0
    if isinstance(retries, int) and 0 <= retries <= MAX_RETRIES:
        return retries
    raise ValueError(f"retries must be True, False or a number of retries from 0 to {MAX_RETRIES}, got {retries!r}")


def retry_reason(outcome: Outcome) -> str:
    """A low-cardinality label for metrics: ``"status_503"``, ``"connect_error"``, ``"read_timeout"``..."""
    if outcome.kind is Kind.RESPONSE:
        return f"status_{outcome.status}"
    return str(outcome.kind.value).replace(" ", "_")


class RetryRule:
    """One service's rule for retrying a failed attempt.

    ``decide`` answers a ``Decision`` to retry after a delay, ``DONE`` when the attempt is not one to retry, or the
    reason a retry the rule would make is denied: ``"retry_after"`` (the upstream asks for longer than
    ``retry_after_max``), ``"breaker"`` (it tripped meanwhile), ``"deadline"`` (the retry could not start with
    ``deadline.min_time`` left), ``"paused"`` (a pause would refuse it) or ``"budget"``.
    """

    def __init__(
        self,
        config: RetryConfig,
        *,
        random: Callable[[], float],
        breaker: Breaker,
        pause: Pause | None,
        budget: Budget | None,
        min_time: float,
    ) -> None:
        self._config = config
        self._random = random
        self._breaker = breaker
        self._pause = pause
        self._budget = budget
        self._min_time = min_time

    def decide(
        self, outcome: Outcome, attempt: int, idempotent: bool, deadline: Deadline | None, now: float
    ) -> Decision | str:
        """After attempt number ``attempt`` ended with ``outcome`` (the call still has retries left and a body it
        can send again; ``idempotent``: a method the settings retry), at ``now`` on the deadline's clock."""
        kind = outcome.kind
        if kind is Kind.RESPONSE:
            if not (idempotent and outcome.status in self._config.status_forcelist) or outcome.expected:
                return DONE
        elif kind not in NOTHING_SENT and not (idempotent and kind in UPSTREAM_FAILURES):
            return DONE  # (the upstream never saw a request that failed to connect: safe for every method)
        delay = self._delay(outcome, attempt)
        if delay is None:
            return "retry_after"  # the upstream asks for longer than we may hold a worker: answer now
        if self._breaker.tripped():
            return "breaker"  # stop hammering, report what we have
        if deadline is not None and now + delay >= deadline.at - self._min_time:
            return "deadline"  # a retry that could not start with min_time left would be refused anyway
        if self._pause is not None and self._pause.would_refuse_after(delay):
            return "paused"  # answer with what we have
        if self._budget is not None and not self._budget.try_spend():
            return "budget"
        return Decision(retry=True, delay=delay if WAITS.enabled else 0.0)

    def _delay(self, outcome: Outcome, attempt: int) -> float | None:
        """The wait before the retry: backoff, or what ``Retry-After`` asks (``None`` when it asks too much)."""
        config = self._config
        delay = backoff_delay(config, attempt, self._random)
        if outcome.kind is Kind.RESPONSE and config.respect_retry_after and outcome.status in RETRY_AFTER_STATUSES:
            asked = parse_retry_after(outcome.retry_after)
            if asked is not None:
                if asked > config.retry_after_max:
                    return None
                delay = asked
        return delay
