"""Fleet mode: breakers, half-open trials, stats and operator actions shared by every process through one Redis.

Local fast path, shared slow path. Each process keeps its own breakers, and a call while its breaker is closed reads
only local memory. Redis is touched on the rare paths:

- a failure is counted fleet-wide (``INCR``, on the calling thread, bounded by ``state.timeout``: the call decides
  whether to retry knowing whether its failure opened the fleet's breaker, so it ends as it would in one process);
  when the fleet's count reaches ``fail_max`` the breaker opens for everyone: one process writes the state (with the
  failure that opened it), publishes it, and every process applies it at once;
- any transition a process makes (its own trip rule opened the breaker, a trial closed or re-opened it) is written
  and published the same way;
- the half-open trial: at most ``half_open_max_calls`` trial calls per trial period for the whole fleet (a counter
  that expires with the period), asked synchronously, once per trial, bounded by ``state.timeout``;
- every ``sync_interval`` each process keeps its stats alive under a key that expires (rewritten when they changed,
  its expiry extended when they did not) and reads the fleet's *version*, a counter every decision bumps; when it
  moved, it re-reads the fleet's breaker states and reset epochs (pub/sub delivers at most once: this catches what
  it missed). An idle worker costs Redis one or two commands per sync; every ``_THOROUGH_EVERY`` syncs it writes
  and reads everything once more;
- a pause the upstream asked for (429 or 503 with ``Retry-After``) is written with its expiry and published, off
  the calling thread; a process joining later adopts it on its first read;
- operator actions (``isolate``, ``reset``) write and publish synchronously; a reset also starts a new *reset
  epoch*: every process clears its stats of the service, and stats published before the epoch are not counted;
- health reports read the fleet's breakers and, in a fleet of at most ``SMALL_FLEET`` workers, every live worker's
  stats, in one script; a larger fleet's reports read the merged record instead (O(services) bytes, whatever the
  number of workers), which one process rewrites when a report finds it older than ``sync_interval``.

Every decision about a breaker is stamped with its time on Redis's clock (``{p}:decided``), and a decision that is
older than the fleet's latest one is refused by the script that would write it: the latest decision wins, wherever
and whenever it was made.

Redis failing is not the app failing: any Redis error switches the process to its local state (one WARNING), the
half-open trial becomes a local decision, nothing is raised to callers, and when Redis answers again (one INFO) the
process reconciles: a decision it made while cut off (an operator's isolation or reset, an opening, a close) goes to
the fleet stamped with when it was made, unless the fleet decided something later; otherwise it adopts the fleet's
state. An isolation without end stays without end; a reset stays a reset. Time comes from Redis (``TIME``) wherever
processes on different hosts must agree.

A decision the fleet lost is written again (``_reassert``): replication to a replica is asynchronous, so a failover
can lose an acknowledged write, and a Redis restarted empty has nothing. Each process holding an opening, an
isolation or a pause the fleet no longer has, with no later decision recorded, writes it again with its original
stamp — at every reconcile, and at the first sync after any decision it learnt or made. Health's ``state_backend``
tells the story: since when it is ok or unreachable, the outages and the latest, and the address serving the fleet's
keys with its latest move.

Everything read back is validated (``_records``): a bad record is skipped and logged once, never fatal.

Keys (``{p}`` the prefix, ``{s}`` a service, ``{w}`` a worker: ``host:pid:random``)::

    {p}:breaker:{s}   hash: state (open | isolated), until (ms, Redis clock; absent: until reset), opened, reason,
                      by, cause (JSON: the failure that opened it); expires a minute after ``until`` (an isolation
                      without end lasts until reset, by design)
    {p}:fails:{s}     the fleet's failures since a success; expires after ``reset_timeout``
    {p}:trial:{s}     trial calls admitted in the current half-open period; expires after ``reset_timeout``
    {p}:pause:{s}     set while the upstream asked for a pause (429/503 with Retry-After); expires with the pause
    {p}:decided       hash: service -> time (ms) of the fleet's latest breaker decision
    {p}:resets        hash: service -> time (ms) of its latest reset (the reset epoch)
    {p}:ratelimit:... the fleet's rate limit windows (the ``limits`` library's keys, ``scope: "fleet"``)
    {p}:concurrency:{s}[:learner]  the fleet's adaptive limit, its window, the workers' demand (_state/concurrency.py)
    {p}:tokens:{s}    the fleet's retry token pool (``_state/tokens.py``)
    {p}:workers       sorted set of the workers that joined (the roster), scored by their last full heartbeat (ms); a
                      member whose stats expired is dead and is removed by the next read of the roster
    {p}:stats:{w}     one worker's stats (JSON): a worker is live while they are; expire three ``sync_interval``s
                      after they were last written or extended
    {p}:version       a counter every decision (an opening, a transition, a pause, a reset) increments
    {p}:merged        the fleet's stats merged (JSON, as one worker's), for the reports of a large fleet
    {p}:merging       which worker merges them this interval (a lock that expires with it)
    {p}:events        the pub/sub channel of transitions

``workers``, ``decided``, ``resets`` and ``version`` expire a day after the last full heartbeat or decision. No key
is written for a service with ``shared: false``. A single Redis (or a primary): scripts touch several keys.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import redis

from .._breaker import CLOSED, HALF_OPEN, ISOLATED, OPEN, Breaker
from .._config import ServiceConfig, StateConfig
from .._lifecycle import Daemon, on_fork
from .._parse import MAX_RECORD_BYTES, MAX_SECONDS
from .._stats import StatsRecord
from ..health import BackendOutage, HistorySnapshot, LastError, PrimaryChange, StateBackendHealth
from . import LOCAL, FleetBreaker, FleetService, FleetView, ServiceLink, key_prefix
from ._client import REDIS_ERRORS, connect, serving
from ._notice import Notice, SharesNotice
from ._records import (
    BreakerRecord,
    Complaints,
    PauseMessage,
    PublishedStats,
    read_breaker,
    read_message,
    read_number,
    read_stats,
    read_worker,
)

if TYPE_CHECKING:
    from .._service import Service

logger = logging.getLogger("outbound.fleet")

# How long a closed-then-reopened fleet breaker's hash outlives its `until`: readers past it treat it as closed.
_BREAKER_GRACE_MS = 60_000
# Heartbeats and stats count as live for this many sync intervals.
_LIVE_INTERVALS = 3
# How long the fleet remembers its latest decisions and resets after the last heartbeat: a worker cut off for less
# than this, or a fleet restarted within it, still finds what was decided while it was away.
_MEMORY_MS = 86_400_000
# The most live workers a health report reads the stats of (a bound on one script's work, whatever is in Redis).
MAX_WORKERS = 10_000
# A fleet of at most this many workers is reported from every worker's stats (at most ~12 KB); a larger one from the
# merged record one process writes per sync interval, so a report costs O(services), not O(workers).
SMALL_FLEET = 8
# An idle worker re-reads every breaker only when the fleet's version moved, and besides every this many syncs.
_THOROUGH_EVERY = 60
# The reason a pushed state carries when this process holds it without the words of the decision behind it.
_HELD = {
    OPEN: "opened while the fleet was unreachable",
    ISOLATED: "isolated by an operator",
    CLOSED: "the isolation ended",
}

# What ends the listener's connection: Redis failing, or a reply redis-py cannot read.
_LISTENER_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, ValueError)

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
# Keys of a type the scripts did not write (a stray SET, a corrupt key) are read as absent, reported with a marker
# the readers reject ('!' + the type), and replaced when written: a bad key never turns into a Redis error here.
_HELPERS = """
local function kind(key) return redis.call('TYPE', key)['ok'] end
local function hash_of(key)
  local t = kind(key)
  if t == 'hash' then return redis.call('HGETALL', key) end
  if t == 'none' then return {} end
  return {'!' .. t}
end
local function field(key, name)
  local t = kind(key)
  if t == 'hash' then return redis.call('HGET', key, name) or '' end
  if t == 'none' then return '' end
  return '!' .. t
end
local function text_of(key)
  local t = kind(key)
  if t == 'string' then return redis.call('GET', key) end
  if t == 'none' then return '' end
  return '!' .. t
end
local function writable(key, want)
  local t = kind(key)
  if t ~= 'none' and t ~= want then redis.call('DEL', key) end
end
local function counter(key)
  local t = kind(key)
  if t == 'none' then return end
  if t ~= 'string' or not string.match(redis.call('GET', key), '^%d+$') then redis.call('DEL', key) end
end
local function bump(key, ms)
  counter(key)
  redis.call('INCR', key)
  redis.call('PEXPIRE', key, ms)
end
"""

# KEYS: fails, breaker, trial, decided, version. ARGV: fail_max, window_ms, open_ms, worker, reason, cause, service,
# memory_ms.
# Returns {until, now}: `until` of the opening when this failure opened the fleet's breaker (the caller publishes
# it), else 0.
_FAIL = (
    _HELPERS
    + _NOW
    + """
counter(KEYS[1])
writable(KEYS[2], 'hash')
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n >= tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[2]) == 0 then
  local untl = now + tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], 'state', 'open', 'until', untl, 'opened', now, 'reason', ARGV[5], 'by', ARGV[4])
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'cause', ARGV[6]) end
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) + GRACE)
  redis.call('DEL', KEYS[3])
  writable(KEYS[4], 'hash')
  redis.call('HSET', KEYS[4], ARGV[7], now)
  redis.call('PEXPIRE', KEYS[4], ARGV[8])
  bump(KEYS[5], ARGV[8])
  return {untl, now}
end
return {0, now}
""".replace("GRACE", str(_BREAKER_GRACE_MS))
)
# KEYS: breaker, fails, trial, decided, pause, resets, version. ARGV: state, open_ms (negative: no end), worker, reason,
# cause, service, at (the decision's time; negative: now), reset (1: an operator's reset), memory_ms.
# Returns {until (-1: none; -2: refused, a later decision stands), at}. The fleet's latest decision is the latest of
# its recorded time, the opening in the breaker hash and the last reset: any one of them may have expired.
_SET = (
    _HELPERS
    + _NOW
    + """
writable(KEYS[1], 'hash')
writable(KEYS[4], 'hash')
writable(KEYS[6], 'hash')
local at = tonumber(ARGV[7])
if at < 0 then
  at = now
else
  local last = math.max(
    tonumber(redis.call('HGET', KEYS[4], ARGV[6]) or '') or -1,
    tonumber(redis.call('HGET', KEYS[1], 'opened') or '') or -1,
    tonumber(redis.call('HGET', KEYS[6], ARGV[6]) or '') or -1)
  if at < last then return {-2, last} end
end
redis.call('HSET', KEYS[4], ARGV[6], at)
redis.call('PEXPIRE', KEYS[4], ARGV[9])
redis.call('DEL', KEYS[3])
bump(KEYS[7], ARGV[9])
if ARGV[1] == 'closed' then
  redis.call('DEL', KEYS[1], KEYS[2])
  if ARGV[8] == '1' then
    redis.call('DEL', KEYS[5])
    redis.call('HSET', KEYS[6], ARGV[6], at)
    redis.call('PEXPIRE', KEYS[6], ARGV[9])
  end
  return {-1, at}
end
redis.call('DEL', KEYS[1])
local ms = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'opened', at, 'reason', ARGV[4], 'by', ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'cause', ARGV[5]) end
if ms >= 0 then
  redis.call('HSET', KEYS[1], 'until', now + ms)
  redis.call('PEXPIRE', KEYS[1], ms + GRACE)
  return {now + ms, at}
end
return {-1, at}
""".replace("GRACE", str(_BREAKER_GRACE_MS))
)
# KEYS: trial. ARGV: period_ms. Returns the number of this trial in the period.
_TRIAL = (
    _HELPERS
    + """
counter(KEYS[1])
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""
)
# KEYS: pause, version. ARGV: worker, pause_ms, memory_ms. A pause only ever gets longer: a shorter Retry-After from
# another worker must not cut one the upstream asked for earlier. Returns 1 when it was set.
_PAUSE = (
    _HELPERS
    + """
if redis.call('PTTL', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
bump(KEYS[2], ARGV[3])
return 1
"""
)
# Reads that cost one command per key whatever a key holds (the idle budget counts every command a script runs):
# a key of a type the scripts did not write comes back as the marker '!wrongtype', which the readers reject.
_CHEAP = """
local function string_or_mark(v)
  if v == false then return '' end
  if type(v) ~= 'string' then return '!wrongtype' end
  return v
end
local function text_at(key) return string_or_mark(redis.pcall('GET', key)) end
local function hash_at(key)
  local v = redis.pcall('HGETALL', key)
  if v['err'] then return {'!wrongtype'} end
  return v
end
local function fields_at(key, names)
  local out = {}
  if #names == 0 then return out end
  local v = redis.pcall('HMGET', key, unpack(names))
  for i = 1, #names do
    if v['err'] then out[i] = '!wrongtype' else out[i] = string_or_mark(v[i]) end
  end
  return out
end
-- Every worker on the roster with its stats (at most `most` of them); a worker whose stats expired is dead: it
-- leaves the roster (its id still comes back, with empty stats, so a bad id is reported).
local function roster(key, prefix, most, longest)
  local members = redis.pcall('ZRANGE', key, 0, most - 1)
  if members['err'] then return {'!wrongtype'}, {''} end
  local stats = {}
  for i, w in ipairs(members) do
    local v = redis.pcall('GET', prefix .. w)
    if v == false then
      redis.call('ZREM', key, w)
      v = ''
    elseif type(v) ~= 'string' then
      v = '!wrongtype'
    elseif #v > longest then
      v = '!too long'
    end
    stats[i] = v
  end
  return members, stats
end
"""
# KEYS: workers, stats:{w}, decided, resets, version. ARGV: worker, live_ms, stats JSON, memory_ms.
# The full heartbeat, when this worker's stats changed (or now and then): it joins the roster and rewrites its stats,
# which expire after `live_ms` (a worker is live while its stats are). Returns {now, the fleet's version}.
_HEARTBEAT = (
    _HELPERS
    + _CHEAP
    + _NOW
    + """
writable(KEYS[1], 'zset')
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('SET', KEYS[2], ARGV[3], 'PX', tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[4]))
return {now, text_at(KEYS[5])}
"""
)
# KEYS: workers, resets. ARGV: stats key prefix, the most workers to read, the longest stats record to return, then
# the services' names. Every live worker's stats and each service's reset epoch, for the process that merges them.
_ROSTER = (
    _CHEAP
    + _NOW
    + """
local members, stats = roster(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
local names = {}
for i = 4, #ARGV do names[#names + 1] = ARGV[i] end
return {now, members, stats, fields_at(KEYS[2], names)}
"""
)
# KEYS: workers, resets, merged, then a breaker hash and a failure counter per service. ARGV: stats key prefix, the
# most workers to read, the longest stats record to return, the largest fleet read worker by worker, then the
# services' names. A small fleet's report reads every worker's stats; a larger one's reads the merged record one
# process writes per sync interval (its PTTL says how old it is): O(services), whatever the number of workers.
_VIEW = (
    _HELPERS
    + _CHEAP
    + _NOW
    + """
local count = redis.pcall('ZCARD', KEYS[1])
if type(count) ~= 'number' then count = 0 end
local members, stats, merged, merged_ttl = {}, {}, '', -2
if count <= tonumber(ARGV[4]) then
  members, stats = roster(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
else
  merged = text_at(KEYS[3])
  if #merged > tonumber(ARGV[3]) then merged = '!too long' end
  merged_ttl = redis.call('PTTL', KEYS[3])
end
local breakers, fails, names = {}, {}, {}
for i = 4, #KEYS, 2 do
  local n = #breakers + 1
  breakers[n] = hash_of(KEYS[i])
  fails[n] = text_of(KEYS[i + 1])
  names[n] = ARGV[4 + n]
end
local epochs = {}
if #names > 0 then epochs = fields_at(KEYS[2], names) end
return {now, count, members, stats, merged, merged_ttl, breakers, fails, epochs}
"""
)
# KEYS: a breaker hash per service, a pause key per service, decided, resets, version. ARGV: the services' names.
# Returns the breakers, the pauses' PTTLs, each service's latest decision and reset epoch, and the fleet's version
# (bumped by every decision: a worker that saw it unchanged has nothing to re-read).
_BREAKERS = (
    _CHEAP
    + _NOW
    + """
local n = #ARGV
local breakers, pauses = {}, {}
for i = 1, n do
  breakers[i] = hash_at(KEYS[i])
  pauses[i] = redis.call('PTTL', KEYS[n + i])
end
local decided, epochs = fields_at(KEYS[2 * n + 1], ARGV), fields_at(KEYS[2 * n + 2], ARGV)
return {now, breakers, pauses, decided, epochs, text_at(KEYS[2 * n + 3])}
"""
)


@dataclass(frozen=True, slots=True, kw_only=True)
class _FleetState:
    """One service as the periodic re-read found it."""

    breaker: BreakerRecord | None
    pause_ms: int | None
    decided: int | None
    epoch: int | None


class _Link:
    """One shared service's link to the fleet (``_state.ServiceLink``), made before the service is built."""

    def __init__(self, state: RedisState, config: ServiceConfig) -> None:
        self._state = state
        self._name = config.name
        self._trials = config.breaker.half_open_max_calls

    def failure(self, cause: LastError | None) -> None:
        self._state.fail(Fail(self._name, cause))

    def recovered(self) -> None:
        self._state.submit(Recovered(self._name))

    def transition(self, new: str, reason: str, open_seconds: float, cause: LastError | None) -> None:
        if new != HALF_OPEN:  # the fleet learns of a trial through its slot, and of its verdict through this
            self._state.submit(Transition(self._name, new, reason, open_seconds, cause))

    def claim_trial(self, seconds: float) -> bool:
        return self._state.claim_trial(self._name, seconds, self._trials)

    def paused(self, seconds: float) -> None:
        self._state.submit(Paused(self._name, seconds))


# The writes a process sends the fleet, as the fleet thread receives them: small typed records.


class Fail(NamedTuple):
    """A failure counted here; ``cause`` names it, for the opening it may cause fleet-wide."""

    service: str
    cause: LastError | None


class Recovered(NamedTuple):
    """A success after failures here: the fleet's count starts again."""

    service: str


class Transition(NamedTuple):
    """This process moved the breaker (an opening by its own rule, a trial's verdict)."""

    service: str
    state: str
    reason: str
    seconds: float | None
    cause: LastError | None


class Paused(NamedTuple):
    """The upstream asked this process for a pause of ``seconds``."""

    service: str
    seconds: float


class Merge(NamedTuple):
    """A report found the fleet's merged stats older than a sync interval: merge them again (``RedisState._merge``)."""

    service: str = ""


Op = Fail | Recovered | Transition | Paused | Merge


class RedisState:
    """The fleet backend. One per registry; its connection and threads belong to one process (rebuilt after fork)."""

    scope: Literal["process", "fleet"] = "fleet"

    def __init__(self, config: StateConfig) -> None:
        self.config = config
        self._services: dict[str, Service] = {}
        self._closed = False
        self._keys = _Keys(key_prefix(config))
        self._live_ms = int(config.sync_interval * 1000 * _LIVE_INTERVALS)
        # Redis-clock times (ms): of the decision behind each breaker's local state, and of the last reset applied.
        self._decided: dict[str, int] = {}
        self._epochs: dict[str, int] = {}
        # The words of the decision behind each breaker's local state (state, reason): what a re-assertion says.
        self._reasons: dict[str, tuple[str, str]] = {}
        self._new_process()
        on_fork(self, child=RedisState._new_process)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def _new_process(self) -> None:
        # Everything that must not cross a fork: the connection pool, the threads, the queue, this worker's name.
        self._pid = os.getpid()
        self.worker = f"{socket.gethostname()}:{self._pid}:{secrets.token_hex(3)}"
        self._lock = threading.Lock()
        self._following = False  # this process's threads were started
        self._client: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._ops: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        # The fleet's threads: one applies this process's writes and syncs every sync_interval, one listens to the
        # channel. Each starts on this process's first use.
        self._daemons = (
            Daemon("outbound-fleet", self._run_ops),
            Daemon("outbound-fleet-events", self._run_events),
        )
        self._reachable = True
        self._resync_due = False  # cut off since the last sync: reconcile before following the fleet again
        self._last_error: str | None = None
        # What health tells of the backend (StateBackendHealth): since when its status is what it is, the outages
        # and the latest, the address serving the fleet's keys (Sentinel, Cluster) and its latest move.
        self._since = datetime.now(timezone.utc)
        self._outages = 0
        self._last_outage: BackendOutage | None = None
        self._primary: str | None = None
        self._primary_changed: PrimaryChange | None = None
        self._fleet_seen: dict[str, tuple[str, int | None]] = {}
        # The idle path (see _sync): the stats last written, the fleet's version last read, syncs since the start and
        # since the last full heartbeat; whether a merge of the fleet's stats is queued.
        self._last_published: str | None = None
        self._stats_gone = False
        self._version: bytes | None = None
        self._syncs = 0
        self._quiet = 0
        self._merge_queued = False
        # Decisions this process made while cut off, per service: (monotonic time, reason); and the services an
        # operator reset meanwhile. They go to the fleet when Redis answers again.
        self._alone_lock = threading.Lock()
        self._alone: dict[str, tuple[float, str]] = {}
        self._reset_alone: set[str] = set()
        self._complain = Complaints(logger)
        # The one WARNING of an outage, shared with this registry's fleet rate limits (``attach``).
        self.notice = Notice(self.config)

    def link(self, config: ServiceConfig) -> ServiceLink:
        return _Link(self, config) if config.shared else LOCAL

    def attach(self, services: Mapping[str, Service]) -> None:
        self._services = {name: service for name, service in services.items() if service.config.shared}
        for service in services.values():  # shared or not: its fleet-wide limits and tokens talk to the same Redis
            policy = service.policy
            for part in (policy.rate_limit, *policy.stages):
                if isinstance(part, SharesNotice):
                    part.notice = self._current_notice

    def _current_notice(self) -> Notice:
        return self.notice  # this process's (a forked child makes its own)

    def ensure_running(self) -> None:
        """Start this process's threads if they are not running (first use, or first use after a fork)."""
        if self._following or self._closed or not self._services:
            return
        with self._lock:
            if self._following or self._closed:
                return
            # The fleet's states before this process's first call, so a breaker open elsewhere is open here from the
            # start (one round trip, once per process, bounded by state.timeout).
            try:
                self._adopt_fleet()
            except REDIS_ERRORS as error:
                self._unreachable(error)
            for daemon in self._daemons:
                daemon.ensure()
            self._following = True

    def close(self) -> None:
        """Stop the threads, leave the fleet (this worker's heartbeat and stats go), close the connections."""
        self._closed = True
        self._ops.put(None)
        for daemon in self._daemons:
            daemon.stop(timeout=2 * self.config.timeout + 1.0)
        if self._client is not None and self._reachable and self._pid == os.getpid():
            with contextlib.suppress(*REDIS_ERRORS):
                pipeline = self._client.pipeline(transaction=False)
                pipeline.zrem(self._keys.workers, self.worker)
                pipeline.delete(self._keys.stats(self.worker))
                pipeline.execute()
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- the hot path's messages -------------------------------------------------------------------------------------

    def submit(self, op: Op) -> None:
        """Queue a write for the fleet thread: the calling thread never waits on Redis for a failure or transition.

        While Redis is away a transition is remembered instead, for the fleet to learn of it when it answers again.
        """
        if self._closed:
            return
        if not self._reachable:
            self._remember_op(op)
            return
        self.ensure_running()
        self._ops.put(op)

    def fail(self, op: Fail) -> None:
        """Count one failure fleet-wide, on the calling thread: when it is the one that opens the fleet's breaker,
        the breaker here is open before the call decides whether to retry, so the call ends with the upstream's
        answer, as it does when this process's own count opens it — not with a refused retry. Rare (a failure
        while closed: at most ``fail_max`` of them across the fleet per opening) and bounded by ``state.timeout``;
        while Redis is away the failure stays this process's own."""
        if self._closed or not self._reachable:
            return
        self.ensure_running()
        try:
            self._apply_op(op)
        except REDIS_ERRORS as error:
            self._unreachable(error)

    def claim_trial(self, service: str, seconds: float, allowed: int) -> bool:
        """Whether this process may run one half-open trial call now (at most ``allowed`` per period, fleet-wide).

        Synchronous, but rare (once per trial) and bounded by ``state.timeout``; without Redis, a local decision.
        """
        if not self._reachable or self._closed:
            return True
        try:
            number = self._script("trial", _TRIAL)(keys=[self._keys.trial(service)], args=[int(seconds * 1000)])
        except REDIS_ERRORS as error:
            self._unreachable(error)
            return True
        return int(number) <= allowed

    # -- operator actions ------------------------------------------------------------------------------------------

    def isolate(self, service: str, seconds: float | None) -> None:
        self._write(service, ISOLATED, seconds, "isolated by an operator", reset=False)

    def reset(self, service: str) -> None:
        # Also ends a pause everywhere (the upstream is deemed ready again) and starts a new reset epoch: every
        # process clears its stats of the service, and stats published before it are not counted.
        self._write(service, CLOSED, None, "reset by an operator", reset=True)

    def _write(self, service: str, state: str, seconds: float | None, reason: str, *, reset: bool) -> None:
        if service not in self._services:
            return  # shared: false, a process-local service
        try:
            self._set_and_publish(service, state, seconds, reason, reset=reset)
        except REDIS_ERRORS as error:
            self._unreachable(error)
            self._remember(service, reason, reset=reset)

    # -- health --------------------------------------------------------------------------------------------------

    def health(self) -> StateBackendHealth:
        self._note_primary()
        return StateBackendHealth(
            backend="redis",
            status="ok" if self._reachable else "unreachable",
            last_error=self._last_error,
            since=self._since,
            outages=self._outages,
            last_outage=self._last_outage,
            primary=self._primary,
            primary_changed=self._primary_changed,
        )

    def _note_primary(self) -> None:
        # The address serving the fleet's keys, as the client last found it (no command): a move is a failover.
        if not self._reachable:
            return  # while cut off the client may name the primary that died: the move is noted once it answers
        current = serving(self._client, self._keys.version)
        if current is None or current == self._primary:
            return
        with self._alone_lock:  # health reports and the fleet thread both note it: one move, told once
            previous, self._primary = self._primary, current
        if previous is not None and previous != current:
            self._primary_changed = PrimaryChange(old=previous, new=current, at=datetime.now(timezone.utc))
            logger.info("the fleet's Redis moved from %s to %s (a failover)", previous, current)

    def view(self) -> FleetView | None:
        """The fleet's breakers and summed stats (one script), or ``None`` when Redis does not answer.

        A small fleet (``SMALL_FLEET`` workers) is summed here from every worker's stats; a larger one is read from
        the merged record (O(services) bytes), which one process rewrites at most once per ``sync_interval``: a
        report finding it older asks this process's fleet thread to merge again and answers with what it has."""
        if self._closed or not self._services:
            return None
        names = list(self._services)
        keys = [self._keys.workers, self._keys.resets, self._keys.merged]
        for name in names:
            keys += [self._keys.breaker(name), self._keys.fails(name)]
        args = [self._keys.stats(""), MAX_WORKERS, MAX_RECORD_BYTES, SMALL_FLEET, *names]
        try:
            now, count, members, stats, merged_raw, merged_ttl, breakers, fails, epochs = self._script("view", _VIEW)(
                keys=keys, args=args
            )
            self._reachable_again()
            now, complain = int(now), self._complain
            if int(count) <= SMALL_FLEET:
                published, others = self._published_of(members, stats)
                published.append(self._local_stats())  # this process's own, fresher than what it last published
                workers = len(others) + (1 if self._following else 0)  # a shell's `outbound status` only reads
            else:
                workers = int(count)
                published = [self._merged(merged_raw, int(merged_ttl))]
        except REDIS_ERRORS as error:
            self._unreachable(error)
            return None
        services = {
            name: self._fleet_service(
                name,
                read_breaker(fields, f"the breaker record of {name!r}", complain),
                read_number(count, f"the failure count of {name!r}", complain) or 0,
                now,
                published,
                read_number(epoch, f"the reset epoch of {name!r}", complain) or 0,
            )
            for name, fields, count, epoch in zip(names, breakers, fails, epochs, strict=True)
        }
        return FleetView(workers=workers, services=services)

    def _published_of(self, members: list[Any], stats: list[Any]) -> tuple[list[dict[str, PublishedStats]], set[str]]:
        """The other live workers' stats, and their ids (a worker whose stats expired is not live)."""
        published: list[dict[str, PublishedStats]] = []
        workers: set[str] = set()
        for raw_worker, raw in zip(members, stats, strict=True):
            worker = read_worker(raw_worker, self._complain)
            if worker is not None and worker != self.worker and raw:
                workers.add(worker)
                published.append(read_stats(raw, self._services, self._complain, self._histories))
        return published, workers

    def _merged(self, raw: Any, ttl_ms: int) -> dict[str, PublishedStats]:
        """The fleet's merged stats as a report uses them: the record read (``raw``), merged again here when there
        is none, its merge queued when it is older than a sync interval; and this process's own stats of a service
        reset since it was merged."""
        merged = read_stats(raw, self._services, self._complain, self._histories) if raw else None
        if merged is None:
            merged = self._merge(wait=True)
        elif self._live_ms - ttl_ms > self.config.sync_interval * 1000:
            if self._following and not self._merge_queued:
                self._merge_queued = True
                self._ops.put(Merge())
            elif not self._following:
                merged = self._merge(wait=True)  # a shell's `outbound status`: no fleet thread to ask
        local = self._local_stats()
        stale = {name: entry for name, entry in local.items() if name not in merged or merged[name].epoch < entry.epoch}
        return {**merged, **stale}

    def _merge(self, *, wait: bool) -> dict[str, PublishedStats]:
        """Sum every live worker's stats (this process's own fresh ones) into ``{p}:merged``, for the reports of a
        large fleet; unless ``wait`` is false and another process merges this interval already. O(workers), once per
        interval for the whole fleet. Returns what it merged (empty when it left the merge to another process)."""
        client, keys = self._client_(), self._keys
        if not wait and not client.set(keys.merging, self.worker, nx=True, px=int(self.config.sync_interval * 1000)):
            return {}
        names = list(self._services)
        _, members, stats, epochs = self._script("roster", _ROSTER)(
            keys=[keys.workers, keys.resets], args=[keys.stats(""), MAX_WORKERS, MAX_RECORD_BYTES, *names]
        )
        published, _ = self._published_of(members, stats)
        published.append(self._local_stats())
        merged: dict[str, PublishedStats] = {}
        histories = self._histories
        for name, raw_epoch in zip(names, epochs, strict=True):
            epoch = read_number(raw_epoch, f"the reset epoch of {name!r}", self._complain) or 0
            entries = [entry for worker in published if (entry := worker.get(name)) is not None]
            record = StatsRecord.merge(entry.record for entry in entries if entry.epoch >= epoch)
            history = None
            if name in histories:  # every process's buckets, whatever the epoch (as _history does)
                from .._history import HistoryRecord

                kept = [entry.history for entry in entries if entry.history is not None]
                history = HistoryRecord.merge(kept, interval=histories[name][0])
            merged[name] = PublishedStats(record, epoch, history)
        client.set(keys.merged, json.dumps(self._encoded(merged)), px=self._live_ms)
        return merged

    def _fleet_service(
        self,
        name: str,
        record: BreakerRecord | None,
        failures: int,
        now_ms: int,
        published: list[dict[str, PublishedStats]],
        epoch: int,
    ) -> FleetService:
        state, retry_in, opened_at, opened_by = CLOSED, None, None, None
        if record is not None:
            state, opened_by = record.state, record.cause
            if record.opened is not None:
                opened_at = datetime.fromtimestamp(record.opened / 1000, timezone.utc)
            if record.until is not None:
                longest = self._services[name].config.breaker.reset_timeout if state == OPEN else MAX_SECONDS
                retry_in = min(max(0.0, (record.until - now_ms) / 1000), longest)
                if state == OPEN and retry_in == 0.0:
                    state, retry_in = HALF_OPEN, None  # the trial is due: the next call is it
        # Each worker's record, as of its last publish, unless it predates the latest reset (an operator cleared
        # it): the fleet's stats, its "failing" included, are judged on their sum.
        merged = StatsRecord.merge(
            entry.record for worker in published if (entry := worker.get(name)) is not None and entry.epoch >= epoch
        )
        breaker = FleetBreaker(
            state=state, failures=failures, retry_in=retry_in, opened_at=opened_at, opened_by=opened_by
        )
        return FleetService(
            breaker=breaker,
            stats=merged.snapshot(),
            last_error=merged.last_error,
            history=self._history(name, published),
        )

    def _history(self, name: str, published: list[dict[str, PublishedStats]]) -> HistorySnapshot | None:
        # Every live process's buckets, summed by number: history survives a reset (it is what happened), so no
        # epoch is asked of it.
        shape = self._histories.get(name)
        if shape is None:
            return None
        from .._history import HistoryRecord

        records = [entry.history for worker in published if (entry := worker.get(name)) and entry.history is not None]
        return HistoryRecord.merge(records, interval=shape[0]).snapshot(size=shape[1], now=time.time())

    # -- the fleet threads -------------------------------------------------------------------------------------------

    def _run_ops(self, stop: threading.Event) -> None:
        interval = self.config.sync_interval
        next_sync = 0.0
        while not stop.is_set():
            try:
                op = self._ops.get(timeout=max(0.0, next_sync - time.monotonic()))
            except queue.Empty:
                op = None
            if stop.is_set():
                return
            try:
                if op is not None:
                    self._apply_op(op)
                    op = None  # applied: a sync failing below must not remember it as undelivered
                if time.monotonic() >= next_sync:
                    next_sync = time.monotonic() + interval
                    self._sync()
            except REDIS_ERRORS as error:
                if stop.is_set():
                    return
                self._unreachable(error)
                if op is not None:
                    self._remember_op(op)  # it never reached the fleet
            except Exception:
                logger.exception("outbound fleet sync failed")

    def _apply_op(self, op: Op) -> None:
        if isinstance(op, Merge):
            self._merge_queued = False  # first: a merge that fails or is skipped may be asked for again
            if self._reachable:
                self._merge(wait=False)
            return
        if not self._reachable:
            self._remember_op(op)  # the process runs on its own state; what it decided goes to the fleet later
            return
        service, keys = op.service, self._keys
        config = self._services[service].config.breaker
        if isinstance(op, Fail):
            window_ms = open_ms = int(config.reset_timeout * 1000)
            reason = f"{config.fail_max} failures across the fleet"
            args = [config.fail_max, window_ms, open_ms, self.worker, reason, _cause_json(op.cause), service]
            until, at = self._script("fail", _FAIL)(
                keys=[keys.fails(service), keys.breaker(service), keys.trial(service), keys.decided, keys.version],
                args=[*args, _MEMORY_MS],
            )
            if int(until):
                self._decided[service] = int(at)
                self._publish(service, OPEN, config.reset_timeout, reason, int(until), int(at), op.cause, reset=False)
                # This process ignores its own messages: it applies the opening it caused here.
                self._apply_remote(service, OPEN, config.reset_timeout, reason, cause=op.cause, own=True)
        elif isinstance(op, Recovered):
            self._client_().delete(keys.fails(service))
        elif isinstance(op, Paused):
            if self._script("pause", _PAUSE)(
                keys=[keys.pause(service), keys.version], args=[self.worker, max(1, int(op.seconds * 1000)), _MEMORY_MS]
            ):
                message = {"worker": self.worker, "service": service, "pause": op.seconds}
                self._client_().publish(keys.events, json.dumps(message))
        else:
            self._set_and_publish(service, op.state, op.seconds, op.reason, cause=op.cause)
            with self._alone_lock:
                self._alone.pop(service, None)  # the fleet has a later decision of this process's now

    def _set_and_publish(
        self,
        service: str,
        state: str,
        seconds: float | None,
        reason: str,
        *,
        at: int = -1,
        reset: bool = False,
        cause: LastError | None = None,
    ) -> bool:
        """Write a decision (made ``at``, Redis's clock; -1: now) and publish it; ``False`` when the fleet holds a
        later decision, which then stands."""
        keys = self._keys
        endless = seconds is None or math.isinf(seconds)
        open_ms = -1 if seconds is None or endless else int(min(seconds, MAX_SECONDS) * 1000)
        until, decided = self._script("set", _SET)(
            keys=[
                keys.breaker(service),
                keys.fails(service),
                keys.trial(service),
                keys.decided,
                keys.pause(service),
                keys.resets,
                keys.version,
            ],
            args=[state, open_ms, self.worker, reason, _cause_json(cause), service, at, int(reset), _MEMORY_MS],
        )
        until, decided = int(until), int(decided)
        if until == -2:
            return False
        self._decided[service] = decided
        self._reasons[service] = (state, reason)
        if reset:
            self._epochs[service] = decided
        left = None if open_ms < 0 else seconds
        self._publish(service, state, left, reason, None if until < 0 else until, decided, cause, reset=reset)
        return True

    def _publish(
        self,
        service: str,
        state: str,
        seconds: float | None,
        reason: str,
        until: int | None,
        at: int,
        cause: LastError | None,
        *,
        reset: bool,
    ) -> None:
        # `until` (Redis clock) identifies the change, so the periodic re-read does not apply it a second time;
        # `seconds` is what is left of it, for processes whose clocks differ from Redis's; `at` when it was decided.
        message = {
            "worker": self.worker,
            "service": service,
            "state": state,
            "seconds": seconds,
            "reason": reason,
            "until": until,
            "at": at,
            "cause": cause.as_dict() if cause is not None else None,
            "reset": at if reset else None,
        }
        self._client_().publish(self._keys.events, json.dumps(message))
        self._fleet_seen[service] = (state, until)
        self._version = None  # re-read at the next sync: as a message's receivers do (_apply_message)

    def _sync(self) -> None:
        """Heartbeat and publish this process's stats; re-read the fleet's breakers when the fleet's version moved
        (catching missed messages), or after a time cut off, reconcile what this process decided alone with what the
        fleet decided.

        An idle worker (stats unchanged since its last write, the fleet's version unchanged) costs Redis one or two
        commands per sync: ``GET`` of the version, and every other sync a ``PEXPIRE`` that keeps its stats (its
        liveness) from expiring. Every ``_THOROUGH_EVERY`` syncs it writes and reads everything once more."""
        client = self._client_()
        if not self._reachable:
            client.ping()  # raises while Redis is still away
            self._reachable_again()
        keys = self._keys
        self._syncs += 1
        published = json.dumps(self._published_stats())
        thorough = self._resync_due or self._syncs % _THOROUGH_EVERY == 1
        if thorough or self._stats_gone or published != self._last_published:
            _, version = self._script("heartbeat", _HEARTBEAT)(
                keys=[keys.workers, keys.stats(self.worker), keys.decided, keys.resets, keys.version],
                args=[self.worker, self._live_ms, published, _MEMORY_MS],
            )
            self._last_published, self._stats_gone, self._quiet = published, False, 0
        else:
            self._quiet += 1
            refresh = self._quiet % 2 == 0  # stats live three intervals: a refresh every second one keeps them
            pipeline = client.pipeline(transaction=False)
            if refresh:
                pipeline.pexpire(keys.stats(self.worker), self._live_ms)
            pipeline.get(keys.version)
            answers = pipeline.execute()
            if refresh and not answers[0]:
                self._stats_gone = True  # expired (a long stall, a Redis restarted empty): the next sync rejoins
            version = answers[-1]
        self._note_primary()
        if self._resync_due:
            self._resync_due = False
            self._reconcile()
        elif thorough or _version(version) != self._version:
            self._adopt_fleet()

    def _read_fleet(self) -> tuple[int, dict[str, _FleetState]]:
        names = list(self._services)
        keys = self._keys
        script_keys = [keys.breaker(name) for name in names] + [keys.pause(name) for name in names]
        now, breakers, pauses, decided, epochs, version = self._script("breakers", _BREAKERS)(
            keys=[*script_keys, keys.decided, keys.resets, keys.version], args=names
        )
        complain = self._complain
        found = {
            name: _FleetState(
                breaker=read_breaker(fields, f"the breaker record of {name!r}", complain),
                pause_ms=read_number(pause, f"the pause of {name!r}", complain, low=-2),
                decided=read_number(when, f"the decision time of {name!r}", complain),
                epoch=read_number(epoch, f"the reset epoch of {name!r}", complain),
            )
            for name, fields, pause, when, epoch in zip(names, breakers, pauses, decided, epochs, strict=True)
        }
        self._version = _version(version)
        return int(now), found

    def _adopt_fleet(self) -> None:
        now, found = self._read_fleet()
        for name, fleet in found.items():
            if not self._reassert(name, fleet):
                self._adopt(name, fleet, now)
            self._adopt_epoch(name, fleet.epoch)
            self._adopt_pause(name, fleet.pause_ms)
            self._reassert_pause(name, fleet.pause_ms)

    def _reconcile(self) -> None:
        # Back after a time cut off. Per service: a decision made alone goes to the fleet, stamped with when it was
        # made (the script refuses it when the fleet decided something later); so does an opening or isolation this
        # process holds that the fleet lost (a Redis restarted empty); otherwise the fleet's state is adopted.
        now, found = self._read_fleet()
        elapsed_since = time.monotonic()
        with self._alone_lock:
            alone, self._alone = self._alone, {}
            resets, self._reset_alone = self._reset_alone, set()
        for name, fleet in found.items():
            breaker = self._services[name].policy.breaker
            decision = alone.get(name)
            pushed = False
            if decision is not None:
                at = max(0, now - int((elapsed_since - decision[0]) * 1000))
                pushed = self._push_held(name, breaker, at, decision[1], reset=name in resets)
            else:
                pushed = self._reassert(name, fleet)
            if not pushed:
                self._adopt(name, fleet, now, force=True)
            self._adopt_epoch(name, fleet.epoch)
            self._adopt_pause(name, fleet.pause_ms)
            self._reassert_pause(name, fleet.pause_ms)

    def _reassert(self, name: str, fleet: _FleetState) -> bool:
        """Write again a decision this process holds that the fleet lost; ``True`` when it did.

        Replication to a replica is asynchronous: a primary that dies (a Sentinel failover, a cluster master lost)
        can take a decision it acknowledged with it, and a Redis restarted empty has none. Every process that holds
        the decision (an opening with time left, an isolation) still has it, with the time the fleet stamped on it
        (``_decided``, Redis's clock), so each re-asserts it when a read finds the fleet without a breaker record and
        with no later decision about the service (its latest decision and its reset epoch both older than the one
        held here). The rule never revives a decision that ended: one closed by a trial or reset by an operator left
        a later stamp (and the script refuses a stamp older than the fleet's latest); one that ran out has run out
        here too (an opening's record outlives its ``until`` by a minute, this process's breaker does not)."""
        breaker = self._services[name].policy.breaker
        if fleet.breaker is not None or not _holds(breaker):
            return False
        held = self._decided.get(name, 0)
        if max(fleet.decided or 0, fleet.epoch or 0) > held:
            return False  # the fleet decided something later: it stands
        state, reason = self._reasons.get(name, (None, None))
        return self._push_held(name, breaker, held, reason if state == breaker.state else None, reset=False)

    def _reassert_pause(self, name: str, left_ms: int | None) -> None:
        # The same for a pause the upstream asked for: one this process still observes that the fleet's key lost
        # (it can only have ended early by a reset, whose epoch `_adopt_epoch` applied first and which cleared the
        # pause here too). A second's margin: the key expires on Redis's clock, the pause here a moment later.
        pause = self._services[name].policy.pause
        left = pause.paused_for() if pause is not None else None
        if left is not None and left > max(1.0, self.config.sync_interval) and (left_ms is None or left_ms <= 0):
            self._apply_op(Paused(name, left))

    def _push_held(self, name: str, breaker: Breaker, at: int, reason: str | None, *, reset: bool) -> bool:
        # The state this process's breaker is in now, as a decision made `at`; False when there is nothing to push
        # (an opening whose trial is due, a trial in flight) or the fleet decided something later.
        state, refusal = breaker.state, breaker.refusal()
        seconds: float | None = None
        if state in (OPEN, ISOLATED) and refusal is not None:
            seconds = None if math.isinf(refusal.retry_in) else refusal.retry_in
        elif state in (CLOSED, ISOLATED):  # closed, or an isolation whose time ran out
            state = CLOSED
        else:
            return False
        if reason is None or state != breaker.state:
            reason = _HELD[state]
        cause = breaker.opened_by if state == OPEN else None
        return self._set_and_publish(name, state, seconds, reason, at=at, reset=reset, cause=cause)

    def _adopt(self, service: str, fleet: _FleetState, now_ms: int, *, force: bool = False) -> None:
        # Apply the fleet's state when it changed since this process last saw it (a change it missed); with
        # `force` (after a time cut off) whenever this process's breaker is in another state.
        record = fleet.breaker
        state = record.state if record is not None else CLOSED
        until = record.until if record is not None else None
        if state == OPEN and until is not None and until <= now_ms:
            return  # the trial is due: whoever claims it decides; nothing to apply
        seen = (state, until)
        previous = self._fleet_seen.get(service)
        self._fleet_seen[service] = seen
        if force:
            if self._services[service].policy.breaker.state == state:
                return
        elif previous == seen or (previous is None and state == CLOSED):
            return  # nothing new; or a first look with nothing shared: keep what this process knows
        if fleet.decided is not None:
            self._decided[service] = fleet.decided
        seconds = None if until is None else max(0.0, (until - now_ms) / 1000)
        reason = record.reason if record is not None and record.reason else "the fleet's state"
        self._apply_remote(service, state, seconds, reason, cause=record.cause if record is not None else None)

    def _adopt_epoch(self, service: str, epoch: int | None) -> None:
        # A reset this process missed (a lost message, a time cut off): its stats of the service start again.
        if epoch is not None and epoch > self._epochs.get(service, 0):
            policy = self._services[service].policy
            policy.stats.clear()  # before the epoch: stats stamped with the new epoch are always cleared ones
            if policy.pause is not None:
                policy.pause.reset()
            self._epochs[service] = epoch

    def _adopt_pause(self, service: str, left_ms: int | None) -> None:
        # A pause another process published (a message this one missed, or one from before it joined).
        pause = self._services[service].policy.pause
        if pause is not None and left_ms is not None and left_ms > 0:
            # Never longer than this service may pause; never shortens one: applying it again is harmless.
            pause.pause(min(left_ms / 1000, pause.cap), publish=False)

    def _apply_remote(
        self,
        service: str,
        state: str,
        seconds: float | None,
        reason: str,
        *,
        cause: LastError | None = None,
        own: bool = False,
    ) -> None:
        breaker = self._services[service].policy.breaker
        config = breaker.config
        # An opening never outlasts what this service's breaker could decide itself, whatever a record says:
        # reset_timeout, or breaker.backoff.max when the open period grows after failed trials.
        longest = config.reset_timeout if config.backoff is None else max(config.reset_timeout, config.backoff.max)
        if state == OPEN:
            open_seconds = longest if seconds is None else min(seconds, longest)
        else:
            open_seconds = math.inf if seconds is None else seconds
        self._reasons[service] = (state, reason)
        remote = reason if own else f"{reason} (another process)"
        breaker.apply(state, reason=remote, open_seconds=open_seconds, opened_by=cause)

    def _run_events(self, stop: threading.Event) -> None:
        while not stop.is_set():
            pubsub = None
            try:
                pubsub = self._client_().pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]  # redis-py < 8
                pubsub.subscribe(self._keys.events)
                while not stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None:
                        self._on_message(message.get("data"))
            except _LISTENER_ERRORS as error:
                if stop.is_set():
                    return  # close() closed the connection under the listener: the expected way out
                self._unreachable(error)
                stop.wait(self.config.sync_interval)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*_LISTENER_ERRORS):
                        pubsub.close()

    def _on_message(self, data: Any) -> None:
        try:
            self._apply_message(data)
        except Exception as error:  # noqa: BLE001 (the listener serves every service: one message must not end it)
            self._complain("a message the listener could not apply", f"{type(error).__name__}: {error}")

    def _apply_message(self, data: Any) -> None:
        message = read_message(data, self._complain)
        if message is None or message.worker == self.worker or message.service not in self._services:
            return  # bad (logged), this process's own, or not a service shared here
        name = message.service
        policy = self._services[name].policy
        if isinstance(message, PauseMessage):
            if policy.pause is None:
                return
            if message.seconds:
                policy.pause.pause(min(message.seconds, policy.pause.cap), publish=False)
            else:
                policy.pause.reset()  # the previous version's reset ended a pause with a message of its own
            return
        # Re-read the fleet at the next sync, whatever its version then: a decision learnt here from a message may
        # be lost before this process ever read the version it bumped (a failover right after it), and the version
        # would then look unchanged (see _reassert).
        self._version = None
        if message.at is not None:
            self._decided[name] = message.at
        self._fleet_seen[name] = (message.state, message.until)
        if message.reset is not None:
            self._adopt_epoch(name, message.reset)
        self._apply_remote(name, message.state, message.seconds, message.reason, cause=message.cause)

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _client_(self) -> redis.Redis:
        client = self._client
        if client is None:
            client = self._client = connect(self.config)
        return client

    def _script(self, name: str, source: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._client_().register_script(source)
        return script

    def _local_stats(self) -> dict[str, PublishedStats]:
        stats: dict[str, PublishedStats] = {}
        for name, service in self._services.items():
            epoch = self._epochs.get(name, 0)  # read before the stats: a reset clears them before it moves the epoch
            history = service.history.export() if service.history is not None else None
            stats[name] = PublishedStats(service.policy.stats.export(), epoch, history)
        return stats

    def _published_stats(self) -> dict[str, Any]:
        return self._encoded(self._local_stats())

    def _encoded(self, entries: dict[str, PublishedStats]) -> dict[str, Any]:
        """Stats as a worker publishes them (and as the merged record holds them)."""
        published: dict[str, Any] = {}
        for name, entry in entries.items():
            published[name] = {**entry.record.as_dict(), "epoch": entry.epoch}
            if entry.history is not None:
                # Its share of a record's bytes: a long history is cut (oldest buckets first), never the stats.
                published[name]["history"] = entry.history.as_dict(budget=MAX_RECORD_BYTES // (2 * len(self._services)))
        return published

    @property
    def _histories(self) -> dict[str, tuple[float, int]]:
        # The (interval, buckets) of the services that keep a history: what their published histories must match.
        return {
            name: (service.history.interval, service.history.size)
            for name, service in self._services.items()
            if service.history is not None
        }

    def _remember(self, service: str, reason: str, *, reset: bool = False) -> None:
        with self._alone_lock:
            self._alone[service] = (time.monotonic(), reason)
            if reset:
                self._reset_alone.add(service)

    def _remember_op(self, op: Op) -> None:
        if isinstance(op, Transition):
            self._remember(op.service, op.reason)

    def _unreachable(self, error: Exception) -> None:
        self._last_error = f"{type(error).__name__}: {error}"
        self._resync_due = True
        if self._reachable:
            self._reachable = False
            self._since = datetime.now(timezone.utc)
            self._outages += 1
            self._last_outage = BackendOutage(unreachable_from=self._since, error=self._last_error)
            self.notice.failed(self._last_error)

    def _reachable_again(self) -> None:
        if not self._reachable:
            self._reachable = True
            self._since = now = datetime.now(timezone.utc)
            outage = self._last_outage
            if outage is not None:
                outage = self._last_outage = BackendOutage(
                    unreachable_from=outage.unreachable_from, recovered_at=now, error=outage.error
                )
            self.notice.answered(f" after {outage.seconds():.1f} s" if outage is not None else "")
        self._note_primary()


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.workers = f"{prefix}:workers"
        self.events = f"{prefix}:events"
        self.decided = f"{prefix}:decided"
        self.resets = f"{prefix}:resets"
        self.version = f"{prefix}:version"
        self.merged = f"{prefix}:merged"
        self.merging = f"{prefix}:merging"

    def breaker(self, service: str) -> str:
        return f"{self.prefix}:breaker:{service}"

    def fails(self, service: str) -> str:
        return f"{self.prefix}:fails:{service}"

    def trial(self, service: str) -> str:
        return f"{self.prefix}:trial:{service}"

    def pause(self, service: str) -> str:
        return f"{self.prefix}:pause:{service}"

    def stats(self, worker: str) -> str:
        return f"{self.prefix}:stats:{worker}"


def _version(raw: Any) -> bytes:
    """The fleet's version as read (absent: empty); only ever compared with the previous one read."""
    return raw if isinstance(raw, bytes) else b""


def _holds(breaker: Breaker) -> bool:
    """Whether the breaker refuses calls now by a decision (an opening with time left, an isolation)."""
    # Breaker.refusal itself: an observe-only breaker answers "go on" to its callers, but still holds its decision.
    return breaker.state in (OPEN, ISOLATED) and Breaker.refusal(breaker) is not None


def _cause_json(cause: LastError | None) -> str:
    return json.dumps(cause.as_dict()) if cause is not None else ""
