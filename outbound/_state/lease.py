"""A fleet-wide rate limit without a Redis round trip per call: permits leased from Redis in batches.

The idea of Envoy's global rate limit with local quota caching. Redis holds a moving window of *leases*
(``{p}:ratelimit:{s}``, a sorted set: one entry per lease, scored by when it was granted on Redis's clock, its
member ending in the number of permits it granted). A process asks for a batch; the script grants what the window
has room for; the process spends the batch locally — no Redis round trip — until it is used up or ``LEASE_SHARE`` of
the window has passed, whichever comes first. What it did not spend it hands back with its next lease (an entry of
minus that many, at the original lease's time), so a lease that was too generous costs the fleet nothing for long.

Never above the limit, measured at the upstream: a permit leased at ``t`` is spent before ``t + lease``, so a lease
occupies the window for the window plus the lease's lifetime (and the send margin the process-local send gate
allows a request's trip, ``_ratelimit.SEND_MARGIN``): any window at the upstream sees at most the permits leased
in one such span, and the script never grants more than the limit in one.

The batch adapts to the process's pace: it doubles when a lease was spent before it expired, and falls back to
what was spent when it was not, between 1 and ``MAX_BATCH`` (and a twentieth of the limit: with a small limit each
permit is leased alone, and the limit is exact across the fleet as with one script per call).
"""

from __future__ import annotations

import math
import secrets
import threading
import time

import redis

from .._config import StateConfig
from . import key_prefix
from ._client import REDIS_ERRORS, connect

# The share of the window a lease lives (bounded in seconds): what the fleet may lose to leases held and not spent.
LEASE_SHARE = 0.05
LEASE_SECONDS = (0.005, 2.0)
MAX_BATCH = 1000

# KEYS: the window. ARGV: the limit, the span (ms), permits wanted, permits handed back, when they were leased (ms),
# this lease's member. Returns {granted, now (ms), ms until the window has room}.
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'zset' then redis.call('DEL', KEYS[1]) end
local span = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
local back, at = tonumber(ARGV[4]), tonumber(ARGV[5])
if back > 0 and at > now - span then
  redis.call('ZADD', KEYS[1], at, ARGV[6] .. ':back:-' .. back)
end
local used, first = 0, nil
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local n = tonumber(string.match(entries[i], ':(-?%d+)$') or '0') or 0
  used = used + n
  if n > 0 and first == nil then first = tonumber(entries[i + 1]) end
end
local grant = math.min(tonumber(ARGV[3]), tonumber(ARGV[1]) - used)
if grant > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[6] .. ':' .. grant)
  redis.call('PEXPIRE', KEYS[1], span)
  return {grant, now, 0}
end
local wait = 1
if first ~= nil then wait = math.max(1, first + span - now) end
return {0, now, wait}
"""


class FleetUnreachable(Exception):
    """Redis did not answer a lease (the rate limit holds per process meanwhile)."""


class LeasedPermits:
    """One service's share of a fleet-wide limit of ``amount`` permits per ``window`` seconds."""

    def __init__(self, state: StateConfig, service: str, amount: int, window: float, margin: float) -> None:
        self._state = state
        self.key = f"{key_prefix(state)}:ratelimit:{service}"
        self.amount = amount
        self.lease = min(max(window * LEASE_SHARE, LEASE_SECONDS[0]), LEASE_SECONDS[1])
        # A lease occupies the window for the window, the send margin and its own lifetime (see the docstring).
        self.span_ms = math.ceil((window + margin + self.lease) * 1000)
        self.most = max(1, min(MAX_BATCH, amount // 20))
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        # The parent's lease is the parent's: spending it here too would send it twice.
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._script: object | None = None
        self._left = 0
        self._granted = 0
        self._leased_at = 0  # ms, Redis's clock
        self._expires = 0.0  # monotonic
        self._batch = 1
        self._room_at = 0.0  # monotonic: when the window has room again, as the last refusal said
        self._id = secrets.token_hex(4)
        self._seq = 0

    def take(self) -> bool:
        """One permit: from this process's lease, or a new lease (one round trip).

        Raises:
            FleetUnreachable: Redis did not answer.
        """
        with self._lock:
            now = time.monotonic()
            if self._left > 0 and now < self._expires:
                self._left -= 1
                return True
            return self._lease(now)

    def next_in(self) -> float:
        """Seconds until the fleet's window has room, as the last refused lease said."""
        return max(0.0, self._room_at - time.monotonic())

    def _lease(self, started: float) -> bool:
        spent = self._granted - self._left
        if self._granted:
            fully = self._left == 0
            self._batch = min(self.most, self._batch * 2) if fully else max(1, spent)
        back, at = (self._left, self._leased_at) if self._left > 0 else (0, 0)
        self._left = self._granted = 0
        self._seq += 1
        try:
            granted, leased_at, wait_ms = self._run(back, at)
        except REDIS_ERRORS as error:
            raise FleetUnreachable(f"{type(error).__name__}: {error}") from error
        if granted <= 0:
            self._room_at = started + wait_ms / 1000
            return False
        self._granted, self._left, self._leased_at = granted, granted - 1, leased_at
        self._expires = started + self.lease  # measured from before the ask: never later than Redis's t + lease
        return True

    def _run(self, back: int, at: int) -> tuple[int, int, int]:
        if self._client is None:
            self._client = connect(self._state)
            self._script = self._client.register_script(_LEASE)
        member = f"{self._id}:{self._seq}"
        answer = self._script(  # type: ignore[misc, operator]
            keys=[self.key], args=[self.amount, self.span_ms, self._batch, back, at, member]
        )
        granted, now, wait = (int(value) for value in answer)
        return granted, now, wait

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
