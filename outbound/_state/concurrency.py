"""A fleet-wide adaptive concurrency limit (``concurrency.scope: "fleet"``): one limit, learned from every worker's
answers, shared out among the workers by their demand.

A Python web app is a fleet of small processes: a gunicorn sync worker has at most ``threads`` calls in flight, so a
limit per process barely binds, and each process learning alone sizes its own limit as if it were the only caller.
Here the fleet learns one limit and each worker admits up to its *share* of it, so that the fleet's attempts in flight
stay near the upstream's capacity, and no call waits on Redis: admitting and releasing read only local memory.

Every ``concurrency.sync_interval`` (0.1 s) each worker runs one script (``_SYNC``) that

- adds the latencies its calls saw since its last sync (a count and a sum, and the drops: timeouts, 429s, 503s) to
  the fleet's sample window;
- writes its *demand* (the most attempts it had in flight or waiting at once since its last sync, plus the attempts
  it refused meanwhile) and that peak in flight, with an expiry three syncs away (a worker that stops syncing stops
  counting);
- keeps or takes the fleet's *learner* lease (one worker at a time, held while it syncs); for the learner, once the
  window holds ``MIN_SAMPLES`` answers (or a drop) and lasted the window's length, hands it the window and starts a
  new one;
- answers the fleet's limit and every live worker's demand.

The learner runs the configured algorithm (gradient2, vegas or aimd, ``_adaptive.py``) on the fleet's window, as one
process runs it on its own, with the fleet's attempts in flight (the sum of the workers' peaks), and writes the new
limit. A new learner starts from the fleet's limit as it finds it.

Every worker then computes every worker's share from the same answer (``shares``): when the fleet wants no more than
the limit, each worker gets its demand and the room left is split evenly, so that a worker whose traffic grows has
room at once; when it wants more, the limit is split in proportion to demand, rounded down, and the slots rounding
left go to workers in an order that rotates once a second (so that a limit smaller than the number of workers is not
always the same workers', and a slot does not change hands at every sync). The shares add up to the
limit computed from one answer; workers read their answers at different moments, so for up to one sync the fleet may
hold a slot or two more than the limit, as a share shrinks while calls admitted under the old one end.

Redis down or unreachable: the worker goes on with a limit of its own, learned from its own answers as with
``scope: "process"`` (from the fleet's last limit), says so once (a WARNING naming ``concurrency.scope``), and
follows the fleet again when Redis answers (an INFO). Everything read back is validated: a limit that is not a
number between ``min`` and ``max`` is ignored, a worker's record that is not three bounded whole numbers is skipped
(logged once), and the script itself deletes keys of the wrong type, a learner lease without expiry and worker
records it cannot read, so that a hostile or corrupt key is never fatal and never stops the fleet from learning.

Keys (``{p}`` the prefix, ``{s}`` the service)::

    {p}:concurrency:{s}          hash: ``limit`` (the fleet's, a decimal), ``n``/``s``/``d`` the open window's
                                 answers, their summed latency (us) and drops, ``t`` when it opened (ms, Redis's
                                 clock), ``w:{worker}`` = ``demand:peak:expires_ms`` per worker
    {p}:concurrency:{s}:learner  the worker that learns the limit (expires three syncs after its last one)
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import socket
import threading
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._adaptive import ALGORITHMS, MIN_SAMPLES, MIN_WINDOW, Algorithm, ConcurrencyLimit
from .._lifecycle import Daemon, on_fork
from .._outcome import Rejection
from . import key_prefix
from ._client import REDIS_ERRORS, connect
from ._notice import FleetSynced
from ._records import Complaints

if TYPE_CHECKING:
    import redis

    from .._config import ConcurrencyConfig, StateConfig
    from .._stage import CallView

logger = logging.getLogger("outbound.fleet")

_LIVE_SYNCS = 3  # a worker's record, and the learner's lease, outlive its last sync by this many syncs
MAX_WORKERS = 10_000  # the most worker records one answer carries (a bound on the script's work and reply)
_MAX_DEMAND = 1_000_000
_KEY_TTL_MS = 86_400_000  # the fleet's limit outlives its last sync by a day: a fleet restarted within it resumes
_ROTATE_MS = 1_000  # how long a tie between workers' shares goes the same way
_RECORD = re.compile(rb"(\d{1,7}):(\d{1,7}):(\d{1,16})")
_DEMAND_SMOOTHING = 0.25  # each sync moves a worker's published demand this far towards what it saw since the last

# KEYS: the hash, the learner lease. ARGV: worker, answers, their latency sum (us), drops, demand, peak in flight,
# record lifetime (ms), learner lease (ms), MIN_SAMPLES, window length (ms), reset (1: write ARGV[12] as the limit),
# the initial limit, the hash's lifetime (ms), MAX_WORKERS.
# Returns {now_ms, limit (text, '' when none), learner (0/1), window answers, latency sum (us), drops,
#          worker, record, worker, record, ...}; the window is zeros unless it was handed to this learner.
_SYNC = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key, lease = KEYS[1], KEYS[2]
local kind = redis.call('TYPE', key)['ok']
if kind ~= 'none' and kind ~= 'hash' then redis.call('DEL', key) end
kind = redis.call('TYPE', lease)['ok']
if (kind ~= 'none' and kind ~= 'string') or (kind == 'string' and redis.call('PTTL', lease) < 0) then
  redis.call('DEL', lease)
end
local function num(field)
  local v = tonumber(redis.call('HGET', key, field) or '0')
  if v == nil or v ~= v or v < 0 or v > 1e15 then return 0 end
  return math.floor(v)
end
local worker = ARGV[1]
if ARGV[11] == '1' then redis.call('HSET', key, 'limit', ARGV[12]) end
local n = num('n') + tonumber(ARGV[2])
local s = num('s') + tonumber(ARGV[3])
local d = num('d') + tonumber(ARGV[4])
redis.call('HSET', key, 'n', n, 's', s, 'd', d,
  'w:' .. worker, ARGV[5] .. ':' .. ARGV[6] .. ':' .. (now + tonumber(ARGV[7])))
local learner = 0
if redis.call('SET', lease, worker, 'NX', 'PX', ARGV[8]) then
  learner = 1
elseif redis.call('GET', lease) == worker then
  redis.call('PEXPIRE', lease, ARGV[8])
  learner = 1
end
local wn, ws, wd = 0, 0, 0
if learner == 1 then
  local opened = num('t')
  if (n >= tonumber(ARGV[9]) or d > 0) and now - opened >= tonumber(ARGV[10]) then
    wn, ws, wd = n, s, d
    redis.call('HSET', key, 'n', 0, 's', 0, 'd', 0, 't', now)
  end
end
local out = {now, redis.call('HGET', key, 'limit') or '', learner, wn, ws, wd}
local most = 6 + 2 * tonumber(ARGV[14])
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  local f = all[i]
  if string.sub(f, 1, 2) == 'w:' then
    local expires = tonumber(string.match(all[i + 1], '^%d+:%d+:(%d+)$') or '')
    if expires == nil or expires < now then
      redis.call('HDEL', key, f)
    elseif #out < most then
      out[#out + 1] = string.sub(f, 3)
      out[#out + 1] = all[i + 1]
    end
  end
end
redis.call('PEXPIRE', key, ARGV[13])
return out
"""


def shares(limit: int, demands: dict[str, int], rotation: int = 0) -> dict[str, int]:
    """Each worker's share of ``limit`` attempts in flight, from every worker's ``demands`` (see the module's
    docstring); ``rotation`` turns which workers win a tie. The shares add up to ``limit`` (to less only when there
    is no worker)."""
    if not demands:
        return {}
    workers = sorted(demands, key=lambda worker: zlib.crc32(f"{worker}:{rotation}".encode()))
    wanted = sum(demands.values())
    if wanted <= limit:
        # Everyone gets what it wants; the room left is split evenly, so that growing traffic finds room at once.
        spare, extra = divmod(limit - wanted, len(workers))
        return {worker: demands[worker] + spare + (index < extra) for index, worker in enumerate(workers)}
    given = {worker: limit * demands[worker] // wanted for worker in workers}
    left = limit - sum(given.values())
    # The slots left by rounding down go in the rotation's order, not to the largest remainders: remainders move
    # with every sync's demands, and each time a slot changes hands the fleet holds one more while the old holder's
    # call ends; the rotation moves it once a second, and evens it out over time.
    for worker in workers[:left]:
        given[worker] += 1
    return given


class FleetConcurrencyLimit(FleetSynced, ConcurrencyLimit):
    """``ConcurrencyLimit`` whose limit is the fleet's and whose slots are this worker's share of it."""

    def __init__(
        self, config: ConcurrencyConfig, *, clock: Callable[[], float], state: StateConfig, service: str
    ) -> None:
        super().__init__(config, clock=clock)
        self.service = service
        self._state = state
        prefix = key_prefix(state)
        self._key = f"{prefix}:concurrency:{service}"
        self._lease = f"{self._key}:learner"
        interval_ms = max(1, int(config.sync_interval * 1000))
        self._record_ms = interval_ms * _LIVE_SYNCS
        self._complain = Complaints(logger)
        self._daemon = Daemon(f"outbound-concurrency-{service}", self._run)
        self._closed = False
        self._new_process()
        on_fork(self, child=FleetConcurrencyLimit._new_process)

    def _new_process(self) -> None:
        # This worker's name, connection and counts are its own: a forked child is another worker of the fleet.
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._start_lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._script: Any = None
        self.following = False  # the share of the fleet's limit holds (False: a limit of this process's own)
        self.fleet_limit: float | None = None
        self.workers = 0
        self._learner: Algorithm | None = None
        self._reset = False
        # Since the last sync: answers, their latency, drops, the most attempts in flight, and refusals.
        self._n = 0
        self._sum = 0.0
        self._drops = 0
        self._tick_peak = 0
        self._refused = 0
        self._demand = 0.0
        self._synced = time.monotonic()

    # -- the call path: local memory only ----------------------------------------------------------------------------

    def admit(self, call: CallView) -> Any:
        if not self._daemon.running:
            self._start()
        permit = super().admit(call)
        if permit is not True and isinstance(permit, Rejection):
            self._refused += 1  # under the GIL a lost increment only understates demand by one
        return permit

    def _start(self) -> None:
        # On first use (and first use after a fork): one sync on the calling thread (bounded by state.timeout), so
        # that the worker's first calls are held to its share, not to a whole limit of its own; then the sync thread.
        with self._start_lock:
            if self._daemon.running or self._closed:
                return
            self.sync()
            self._daemon.ensure()

    def _took(self) -> bool:
        if self.in_flight > self._tick_peak:
            self._tick_peak = self.in_flight
        return super()._took()

    def _learn(self, dropped: bool, seconds: float) -> None:
        # Lock held.
        if not self.following:
            super()._learn(dropped, seconds)  # Redis unreachable (or not yet heard): this process learns
        elif dropped:
            self._drops += 1  # for the fleet's window, sent at the next sync
        else:
            self._n += 1
            self._sum += seconds

    # -- the sync ----------------------------------------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        interval = self.config.sync_interval
        while not stop.is_set() and not self._closed:
            started = time.monotonic()
            self.sync()
            stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def sync(self) -> None:
        """One exchange with the fleet (the sync thread's, every ``sync_interval``; tests call it directly)."""
        config = self.config
        now = time.monotonic()
        with self._lock:
            n, total, drops = self._n, self._sum, self._drops
            if n and not self._learner:
                self.rtt = total / n  # this worker's recent latency: its refusals' retry_in
            # Callers turned away wait about retry_in before they ask again, so the refusals since the last sync
            # count as refusals per second times retry_in callers away (Little's law), not one per refusal.
            turned_away = self._refused * self.retry_in() / max(now - self._synced, 1e-3)
            peak = max(self._tick_peak, self.in_flight)
            # Smoothed over a few syncs: what a worker is given bounds what it can show it wants (its peak in
            # flight), so an unsmoothed demand lets one sync's luck decide the next shares.
            self._demand += (peak + len(self._waiters) + turned_away - self._demand) * _DEMAND_SMOOTHING
            demand = min(_MAX_DEMAND, math.ceil(self._demand - 0.05))
            peak = min(_MAX_DEMAND, peak)
            self._n, self._sum, self._drops, self._refused = 0, 0.0, 0, 0
            self._tick_peak = self.in_flight
            self._synced = now
            reset, self._reset = self._reset, False
        window_ms = int(1000 * max(MIN_WINDOW, self.rtt, config.sync_interval))
        args = [
            self.worker,
            n,
            int(total * 1_000_000),
            drops,
            demand,
            peak,
            self._record_ms,
            self._record_ms,
            MIN_SAMPLES,
            window_ms,
            "1" if reset else "0",
            config.initial,
            _KEY_TTL_MS,
            MAX_WORKERS,
        ]
        try:
            if self._client is None:
                self._client = connect(self._state)
                self._script = self._client.register_script(_SYNC)
            answer = self._script(keys=[self._key, self._lease], args=args)
        except REDIS_ERRORS as error:
            self._cut_off(error, (n, total, drops))
            return
        self._apply(answer)

    def _apply(self, answer: Any) -> None:
        config = self.config
        if not isinstance(answer, list) or len(answer) < 6 or len(answer) % 2:
            self._complain(f"the concurrency answer of {self.service}", f"not a sync's answer: {str(answer)[:80]}")
            return
        try:
            now, learner, answered, latency, drops = (_whole(answer[i]) for i in (0, 2, 3, 4, 5))
        except ValueError as problem:
            self._complain(f"the concurrency answer of {self.service}", str(problem))
            return
        limit = self._limit(answer[1])
        demands: dict[str, int] = {}
        peaks = 0
        for index in range(6, len(answer), 2):
            worker, record = answer[index], answer[index + 1]
            match = _RECORD.fullmatch(record) if isinstance(record, bytes) else None
            if not isinstance(worker, bytes) or not 0 < len(worker) <= 200 or match is None:
                self._complain(f"a worker's concurrency record of {self.service}", f"{str(record)[:80]}")
                continue
            demand, peak = int(match[1]), int(match[2])
            if demand > _MAX_DEMAND or peak > _MAX_DEMAND:
                self._complain(f"a worker's concurrency record of {self.service}", f"{demand}:{peak} out of range")
                continue
            demands[worker.decode("utf-8", "replace")] = demand
            peaks += peak
        if self.worker not in demands:
            demands[self.worker] = 0  # our own record, just written: absent only if the answer was cut short
        if limit is None:
            limit = self.fleet_limit if self.fleet_limit is not None else self.limit
        if learner:
            if self._learner is None:
                self._learner = ALGORITHMS[config.algorithm]()
            if answered or drops:
                rtt = latency / 1_000_000 / answered if answered else max(self.rtt, 1e-6)
                new = self._learner.update(limit, max(rtt, 1e-6), peaks, drops > 0)
                limit = min(float(config.max), max(float(config.min), new))
                self.rtt = rtt
                self._write_limit(limit)
        else:
            self._learner = None
        mine = shares(max(config.min, int(limit)), demands, now // _ROTATE_MS)[self.worker]
        with self._lock:
            self.fleet_limit = self.limit = limit
            self.workers = len(demands)
            self.slots = mine
            if not self.following:
                self.following = True
                self._reached_again()
            self._let_in()

    def _limit(self, raw: Any) -> float | None:
        """The fleet's limit as written, or ``None`` when there is none or it is not a limit (logged)."""
        if raw in (b"", ""):
            return None
        try:
            value = float(raw.decode("ascii") if isinstance(raw, bytes) else raw)
        except (ValueError, UnicodeDecodeError, AttributeError):
            value = math.nan
        if not math.isfinite(value) or not self.config.min <= value <= self.config.max:
            self._complain(f"the concurrency limit of {self.service}", f"{str(raw)[:40]} is not a limit")
            return None
        return value

    def _write_limit(self, limit: float) -> None:
        try:
            assert self._client is not None
            self._client.hset(self._key, "limit", f"{limit:.3f}")
        except REDIS_ERRORS as error:
            logger.debug("concurrency limit of %s: the new limit was not written (%s)", self.service, error)

    def _cut_off(self, error: Exception, unsent: tuple[int, float, int]) -> None:
        with self._lock:
            self._learner = None
            if self.following:
                # From the fleet's last limit, learned on from here: the samples not sent start this process's window.
                self.following = False
                self.slots = max(1, int(self.limit))
                self._samples += unsent[0]
                self._total += unsent[1]
                self._dropped = self._dropped or unsent[2] > 0
                self._let_in()
        self._notice().failed(error)  # one WARNING for the process, naming state.url

    def _reached_again(self) -> None:
        self._notice().answered()

    # -- reports and operator actions --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        shot = super().snapshot()
        shot |= {"scope": "fleet", "share": self.slots, "following": self.following, "workers": self.workers}
        return shot

    def clear(self) -> None:
        slots = self.slots
        super().clear()
        self._learner = None
        self._reset = True  # the next sync writes the initial limit for the fleet
        if self.following:
            self.slots = slots  # this worker's share holds until that sync gives it a new one


def _whole(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 2**53:
        raise ValueError(f"expected a whole number, got {str(value)[:40]}")
    return value
