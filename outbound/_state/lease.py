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

The next lease is asked for ahead, off the calling thread: when a call spends a permit of a lease past
``RENEW_AT`` of its life, the lease thread (one per limit, started on first need, ending when idle) asks Redis for the
next batch, and the call that finds the current lease spent or expired switches to it without a round trip. A
process calling at a steady pace thus never waits on Redis for a permit; each lease still lives ``lease`` seconds
from before it was asked for, so the bound above holds for it. What was left of the lease switched from is handed
back with the next ask (stamped with the earliest lease time: never more room than was taken); a lease fetched ahead
and not used in its life is handed back whole.

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
from .._lifecycle import Daemon
from . import key_prefix
from ._client import REDIS_ERRORS, connect

# The share of the window a lease lives (bounded in seconds): what the fleet may lose to leases held and not spent.
LEASE_SHARE = 0.05
LEASE_SECONDS = (0.005, 2.0)
MAX_BATCH = 1000
# The share of a lease's life (or of its permits) after which spending one of its permits asks for the next lease
# ahead (a fifth of the life is left for the round trip: 10 ms of a 50 ms lease).
RENEW_AT = 0.8
# The lease thread ends after this many seconds without an ask (a limit no longer called costs no thread).
_IDLE_SECONDS = 5.0

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
        self._connecting = threading.Lock()
        self._client: redis.Redis | None = None
        self._script: object | None = None
        self._left = 0
        self._granted = 0
        self._leased_at = 0  # ms, Redis's clock
        self._expires = 0.0  # monotonic
        self._renew_at = math.inf  # monotonic: past it, a permit spent asks for the next lease ahead
        self._renew_left = 0
        self._batch = 1
        self._room_at = 0.0  # monotonic: when the window has room again, as the last refusal said
        self._id = secrets.token_hex(4)
        self._seq = 0
        # The lease asked for ahead: (granted, leased at (ms), expires (monotonic)) once it came; whether an ask is
        # in flight; and the permits owed back (count, earliest lease time) from leases left without a round trip.
        self._next: tuple[int, int, float] | None = None
        self._fetching = False
        self._owed = (0, 0)
        self._wake = threading.Event()
        self._daemon = Daemon("outbound-lease", self._run_ahead)

    def take(self) -> bool:
        """One permit: from this process's lease, from the lease fetched ahead, or a new lease (one round trip).

        Raises:
            FleetUnreachable: Redis did not answer.
        """
        with self._lock:
            now = time.monotonic()
            if self._left > 0 and now < self._expires:
                self._left -= 1
                if (now >= self._renew_at or self._left < self._renew_left) and not self._fetching and not self._next:
                    self._fetching = True
                    self._daemon.ensure()
                    self._wake.set()
                return True
            if self._next is not None and self._switch(now):
                return True
            return self._lease(now)

    def next_in(self) -> float:
        """Seconds until the fleet's window has room, as the last refused lease said."""
        return max(0.0, self._room_at - time.monotonic())

    def _retire(self) -> None:
        # The current lease ends here: the batch follows its pace, and what was not spent is owed back.
        if self._granted:
            spent = self._granted - self._left
            self._batch = min(self.most, self._batch * 2) if self._left == 0 else max(1, spent)
            if self._left > 0:
                self._owe(self._left, self._leased_at)
        self._left = self._granted = 0

    def _owe(self, permits: int, leased_at: int) -> None:
        owed, at = self._owed
        self._owed = (owed + permits, min(at, leased_at) if owed else leased_at)

    def _switch(self, now: float) -> bool:
        # To the lease fetched ahead, when it is still alive (else it is owed back whole).
        granted, leased_at, expires = self._next  # type: ignore[misc]
        self._next = None
        if now >= expires:
            self._owe(granted, leased_at)
            return False
        self._retire()
        self._use(granted, leased_at, expires)
        return True

    def _use(self, granted: int, leased_at: int, expires: float) -> None:
        self._granted, self._left, self._leased_at, self._expires = granted, granted - 1, leased_at, expires
        self._renew_at = expires - self.lease * (1 - RENEW_AT)
        self._renew_left = math.ceil(granted * (1 - RENEW_AT))  # or past that share of its permits

    def _lease(self, started: float) -> bool:
        self._retire()
        (back, at), self._owed = self._owed, (0, 0)
        self._seq += 1
        try:
            granted, leased_at, wait_ms = self._run(back, at, self._batch, f"{self._id}:{self._seq}")
        except REDIS_ERRORS as error:
            raise FleetUnreachable(f"{type(error).__name__}: {error}") from error
        if granted <= 0:
            self._room_at = started + wait_ms / 1000
            return False
        # Its life measured from before the ask: never later than Redis's t + lease.
        self._use(granted, leased_at, started + self.lease)
        return True

    def _run_ahead(self, stop: threading.Event) -> None:
        """The lease thread: asks for the next lease when a call says the current one is nearly over."""
        while not stop.is_set():
            if not self._wake.wait(_IDLE_SECONDS / 5):
                if self._daemon.exit_if(lambda: not self._wake.is_set() and not self._fetching):
                    return
                continue
            self._wake.clear()
            with self._lock:
                (back, at), self._owed = self._owed, (0, 0)
                self._seq += 1
                batch, member = self._batch, f"{self._id}:{self._seq}"
            started = time.monotonic()
            try:
                granted, leased_at, wait_ms = self._run(back, at, batch, member)
            except REDIS_ERRORS:
                granted, leased_at, wait_ms = 0, 0, 0  # the next call's own ask meets the error and says so
            with self._lock:
                self._fetching = False
                if granted > 0:
                    self._next = (granted, leased_at, started + self.lease)
                elif wait_ms:
                    self._room_at = started + wait_ms / 1000

    def _run(self, back: int, at: int, batch: int, member: str) -> tuple[int, int, int]:
        client, script = self._client, self._script
        if client is None or script is None:
            with self._connecting:  # the calling thread and the lease thread may both be first: one client
                if self._client is None or self._script is None:
                    self._client = connect(self._state)
                    self._script = self._client.register_script(_LEASE)
                client, script = self._client, self._script
        answer = script(  # type: ignore[operator]
            keys=[self.key], args=[self.amount, self.span_ms, batch, back, at, member]
        )
        granted, now, wait = (int(value) for value in answer)
        return granted, now, wait

    def close(self) -> None:
        self._daemon.stop(timeout=1.0)
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
