"""Fleet mode: breakers, half-open trials, stats and operator actions shared by every process through one Redis.

Local fast path, shared slow path. Each process keeps its own breakers, and a call while its breaker is closed reads
only local memory. Redis is touched on the rare paths:

- a failure is counted fleet-wide (``INCR``, off the calling thread); when the fleet's count reaches ``fail_max``
  the breaker opens for everyone: one process writes the state, publishes it, and every process applies it at once;
- any transition a process makes (its own trip rule opened the breaker, a trial closed or re-opened it) is written
  and published the same way;
- the half-open trial: at most ``half_open_max_calls`` trial calls per trial period for the whole fleet (a counter
  that expires with the period), asked synchronously, once per trial, bounded by ``state.timeout``;
- every ``sync_interval`` each process publishes its stats under a key that expires, heartbeats into the set of live
  workers, and re-reads the fleet's breaker states (pub/sub delivers at most once: this catches what it missed);
- a pause the upstream asked for (429 or 503 with ``Retry-After``) is written with its expiry and published, off
  the calling thread; a process joining later adopts it on its first read;
- operator actions (``isolate``, ``reset``) write and publish synchronously;
- health reports read the fleet's breakers and every live worker's stats in one script.

Redis failing is not the app failing: any Redis error switches the process to its local state (one WARNING), the
half-open trial becomes a local decision, nothing is raised to callers, and the process re-syncs when Redis answers
again (one INFO). Time comes from Redis (``TIME``) wherever processes on different hosts must agree.

Keys (``{p}`` the prefix, ``{s}`` a service, ``{w}`` a worker: ``host:pid:random``)::

    {p}:breaker:{s}   hash: state (open | isolated), until (ms, Redis clock; absent: until reset), reason, by
                      expires a minute after ``until`` (an isolation without end lasts until reset, by design)
    {p}:fails:{s}     the fleet's failures since a success; expires after ``reset_timeout``
    {p}:trial:{s}     trial calls admitted in the current half-open period; expires after ``reset_timeout``
    {p}:pause:{s}     set while the upstream asked for a pause (429/503 with Retry-After); expires with the pause
    {p}:ratelimit:... the fleet's rate limit windows (the ``limits`` library's keys, ``scope: "fleet"``)
    {p}:workers       sorted set of live workers, scored by their last heartbeat (ms)
    {p}:stats:{w}     one worker's stats (JSON), rewritten every ``sync_interval``, expire after three of them
    {p}:events        the pub/sub channel of transitions

No key is written for a service with ``shared: false``. A single Redis (or a primary): scripts touch several keys.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

import redis

from .._breaker import CLOSED, HALF_OPEN, ISOLATED, OPEN
from .._config import StateConfig
from .._stats import latency_from_histogram
from ..health import LastError, RecentCalls, StateBackendHealth, StatsSnapshot
from . import FleetBreaker, FleetService, FleetView

if TYPE_CHECKING:
    from .._service import Service

logger = logging.getLogger("outbound.fleet")

# How long a closed-then-reopened fleet breaker's hash outlives its `until`: readers past it treat it as closed.
_BREAKER_GRACE_MS = 60_000
# Heartbeats and stats count as live for this many sync intervals.
_LIVE_INTERVALS = 3

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "

# KEYS: fails, breaker, trial. ARGV: fail_max, window_ms, open_ms, worker, reason. Returns the `until` of the opening
# when this failure opened the fleet's breaker (the caller publishes it), else 0.
_FAIL = (
    _NOW
    + """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n >= tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[2]) == 0 then
  local untl = now + tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], 'state', 'open', 'until', untl, 'opened', now, 'reason', ARGV[5], 'by', ARGV[4])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) + GRACE)
  redis.call('DEL', KEYS[3])
  return untl
end
return 0
""".replace("GRACE", str(_BREAKER_GRACE_MS))
)
# KEYS: breaker, fails, trial. ARGV: state, open_ms (negative: no end), worker, reason. Returns `until` (-1: none).
_SET = (
    _NOW
    + """
redis.call('DEL', KEYS[3])
if ARGV[1] == 'closed' then redis.call('DEL', KEYS[1], KEYS[2]) return -1 end
redis.call('DEL', KEYS[1])
local ms = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'opened', now, 'reason', ARGV[4], 'by', ARGV[3])
if ms >= 0 then
  redis.call('HSET', KEYS[1], 'until', now + ms)
  redis.call('PEXPIRE', KEYS[1], ms + GRACE)
  return now + ms
end
return -1
""".replace("GRACE", str(_BREAKER_GRACE_MS))
)
# KEYS: trial. ARGV: period_ms. Returns the number of this trial in the period.
_TRIAL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""
# KEYS: pause. ARGV: worker, pause_ms. A pause only ever gets longer: a shorter Retry-After from another worker must
# not cut one the upstream asked for earlier. Returns 1 when it was set.
_PAUSE = """
if redis.call('PTTL', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS: workers, stats:{w}. ARGV: worker, live_ms, stats JSON.
_HEARTBEAT = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('SET', KEYS[2], ARGV[3], 'PX', tonumber(ARGV[2]))
return now
"""
)
# KEYS: workers, then a breaker hash and a failure counter per service. ARGV: live_ms, stats key prefix.
_VIEW = (
    _NOW
    + """
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
local stats = {}
for i, w in ipairs(live) do stats[i] = redis.call('GET', ARGV[2] .. w) or '' end
local breakers = {}
local fails = {}
for i = 2, #KEYS, 2 do
  breakers[#breakers + 1] = redis.call('HGETALL', KEYS[i])
  fails[#fails + 1] = redis.call('GET', KEYS[i + 1]) or '0'
end
return {now, live, stats, breakers, fails}
"""
)
# KEYS: one breaker hash per service, then one pause key per service. Returns the breakers and the pauses' PTTLs.
_BREAKERS = (
    _NOW
    + """
local n = #KEYS / 2
local breakers = {}
local pauses = {}
for i = 1, n do
  breakers[i] = redis.call('HGETALL', KEYS[i])
  pauses[i] = redis.call('PTTL', KEYS[n + i])
end
return {now, breakers, pauses}
"""
)


class _Shared:
    """One service's link to the fleet (the breaker's ``SharedBreaker``)."""

    def __init__(self, state: RedisState, service: Service) -> None:
        self._state = state
        self._name = service.name
        self._config = service.config.breaker

    def failure(self) -> None:
        self._state.submit(("fail", self._name))

    def recovered(self) -> None:
        self._state.submit(("recovered", self._name))

    def transition(self, new: str, reason: str, open_seconds: float) -> None:
        if new != HALF_OPEN:  # the fleet learns of a trial through its slot, and of its verdict through this
            self._state.submit(("transition", self._name, new, reason, open_seconds))

    def claim_trial(self, seconds: float) -> bool:
        return self._state.claim_trial(self._name, seconds, self._config.half_open_max_calls)

    def paused(self, seconds: float) -> None:
        self._state.submit(("pause", self._name, seconds))


class RedisState:
    """The fleet backend. One per registry; its connection and threads belong to one process (rebuilt after fork)."""

    scope: Literal["process", "fleet"] = "fleet"

    def __init__(self, config: StateConfig) -> None:
        self.config = config
        self._services: dict[str, Service] = {}
        self._closed = False
        self._keys = _Keys(config.prefix)
        self._live_ms = int(config.sync_interval * 1000 * _LIVE_INTERVALS)
        self._new_process()
        _forget_in_forked_children(self)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def _new_process(self) -> None:
        # Everything that must not cross a fork: the connection pool, the threads, the queue, this worker's name.
        self._pid = os.getpid()
        self.worker = f"{socket.gethostname()}:{self._pid}:{secrets.token_hex(3)}"
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._ops: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reachable = True
        self._last_error: str | None = None
        self._fleet_seen: dict[str, tuple[str, int | None]] = {}

    def attach(self, services: Mapping[str, Service]) -> None:
        self._services = {name: service for name, service in services.items() if service.config.shared}
        for service in self._services.values():
            shared = _Shared(self, service)
            service.policy.breaker.shared = shared
            if service.policy.pause is not None:
                service.policy.pause.shared = shared

    def ensure_running(self) -> None:
        """Start this process's threads if they are not running (first use, or first use after a fork)."""
        if (self._threads and self._pid == os.getpid()) or self._closed or not self._services:
            return
        with self._lock:
            if self._pid != os.getpid():
                self._new_process()
            if self._threads or self._closed:
                return
            # The fleet's states before this process's first call, so a breaker open elsewhere is open here from the
            # start (one round trip, once per process, bounded by state.timeout).
            try:
                self._adopt_fleet()
            except redis.RedisError as error:
                self._unreachable(error)
            self._threads = [
                threading.Thread(target=self._run_ops, name="outbound-fleet", daemon=True),
                threading.Thread(target=self._run_events, name="outbound-fleet-events", daemon=True),
            ]
            for thread in self._threads:
                thread.start()

    def close(self) -> None:
        """Stop the threads, leave the fleet (this worker's heartbeat and stats go), close the connections."""
        self._closed = True
        self._stop.set()
        self._ops.put(None)
        for thread in self._threads:
            thread.join(timeout=2 * self.config.timeout + 1.0)
        if self._client is not None and self._reachable and self._pid == os.getpid():
            with contextlib.suppress(redis.RedisError):
                pipeline = self._client.pipeline(transaction=False)
                pipeline.zrem(self._keys.workers, self.worker)
                pipeline.delete(self._keys.stats(self.worker))
                pipeline.execute()
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- the hot path's messages -------------------------------------------------------------------------------------

    def submit(self, op: tuple[Any, ...]) -> None:
        """Queue a write for the fleet thread: the calling thread never waits on Redis for a failure or transition."""
        if self._reachable and not self._closed:
            self.ensure_running()
            self._ops.put(op)

    def claim_trial(self, service: str, seconds: float, allowed: int) -> bool:
        """Whether this process may run one half-open trial call now (at most ``allowed`` per period, fleet-wide).

        Synchronous, but rare (once per trial) and bounded by ``state.timeout``; without Redis, a local decision.
        """
        if not self._reachable or self._closed:
            return True
        try:
            number = self._script("trial", _TRIAL)(keys=[self._keys.trial(service)], args=[int(seconds * 1000)])
        except redis.RedisError as error:
            self._unreachable(error)
            return True
        return int(number) <= allowed

    # -- operator actions ------------------------------------------------------------------------------------------

    def isolate(self, service: str, seconds: float | None) -> None:
        self._write(service, ISOLATED, seconds, "isolated by an operator")

    def reset(self, service: str) -> None:
        self._write(service, CLOSED, None, "reset by an operator")
        if service in self._services:
            # An operator's reset also ends a pause, everywhere: the upstream is deemed ready again.
            try:
                client = self._client_()
                client.delete(self._keys.pause(service))
                client.publish(
                    self._keys.events, json.dumps({"worker": self.worker, "service": service, "resume": True})
                )
            except redis.RedisError as error:
                self._unreachable(error)

    def _write(self, service: str, state: str, seconds: float | None, reason: str) -> None:
        if service not in self._services:
            return  # shared: false, a process-local service
        try:
            self._set_and_publish(service, state, seconds, reason)
        except redis.RedisError as error:
            self._unreachable(error)

    # -- health --------------------------------------------------------------------------------------------------

    def health(self) -> StateBackendHealth:
        return StateBackendHealth(
            backend="redis", status="ok" if self._reachable else "unreachable", last_error=self._last_error
        )

    def view(self) -> FleetView | None:
        """The fleet's breakers and summed stats (one script), or ``None`` when Redis does not answer."""
        if self._closed or not self._services:
            return None
        names = list(self._services)
        keys = [self._keys.workers]
        for name in names:
            keys += [self._keys.breaker(name), self._keys.fails(name)]
        try:
            now, live, stats, breakers, fails = self._script("view", _VIEW)(
                keys=keys, args=[self._live_ms, self._keys.stats("")]
            )
        except redis.RedisError as error:
            self._unreachable(error)
            return None
        self._reachable_again()
        published: list[dict[str, Any]] = []
        for worker, raw in zip(live, stats, strict=True):
            if _text(worker) != self.worker and raw:
                published.append(json.loads(raw))
        published.append(self._local_stats())  # this process's own, fresher than what it last published
        services = {
            name: self._fleet_service(name, _pairs(fields), int(count), int(now), published)
            for name, fields, count in zip(names, breakers, fails, strict=True)
        }
        # This process counts once it follows the fleet; a shell's `outbound status` only reads it.
        joined = {self.worker} if self._threads and self._pid == os.getpid() else set()
        workers = len({_text(worker) for worker in live} | joined)
        return FleetView(workers=workers, services=services)

    def _fleet_service(
        self, name: str, fields: dict[str, str], failures: int, now_ms: int, published: list[dict[str, Any]]
    ) -> FleetService:
        state, retry_in, opened_at = CLOSED, None, None
        if fields.get("state") in (OPEN, ISOLATED):
            until = int(fields["until"]) if "until" in fields else None
            opened_at = datetime.fromtimestamp(int(fields.get("opened", now_ms)) / 1000, timezone.utc)
            state = fields["state"]
            if until is not None:
                retry_in = max(0.0, (until - now_ms) / 1000)
                if state == OPEN and retry_in == 0.0:
                    state, retry_in = HALF_OPEN, None  # the trial is due: the next call is it
        counters = {"requests": 0, "errors": 0, "retries": 0, "short_circuited": 0, "pool_timeouts": 0}
        rejected: dict[str, int] = {}
        buckets: dict[int, int] = {}
        last_error: LastError | None = None
        recent_calls = recent_errors = 0
        for worker in published:
            entry = worker.get(name)
            if not entry:
                continue
            for key in counters:
                counters[key] += int(entry.get(key, 0))
            # Each worker's last minute, as of its last publish: the fleet's "failing" is judged on their sum.
            recent = entry.get("recent") or {}
            recent_calls += int(recent.get("calls", 0))
            recent_errors += int(recent.get("errors", 0))
            for reason, count in entry.get("rejected", {}).items():
                rejected[reason] = rejected.get(reason, 0) + int(count)
            for index, count in entry.get("latency", {}).items():
                buckets[int(index)] = buckets.get(int(index), 0) + int(count)
            error = entry.get("last_error")
            if error and (last_error is None or error["at"] > last_error.at.isoformat()):
                at = datetime.fromisoformat(error["at"])
                last_error = LastError(type=error["type"], message=error["message"], at=at)
        stats = StatsSnapshot(
            **counters,
            rejected=rejected,
            recent=RecentCalls(calls=recent_calls, errors=recent_errors),
            latency_ms=latency_from_histogram(buckets),
        )
        return FleetService(
            breaker=FleetBreaker(state=state, failures=failures, retry_in=retry_in, opened_at=opened_at),
            stats=stats,
            last_error=last_error,
        )

    # -- the fleet threads -------------------------------------------------------------------------------------------

    def _run_ops(self) -> None:
        interval = self.config.sync_interval
        next_sync = 0.0
        while not self._stop.is_set():
            try:
                op = self._ops.get(timeout=max(0.0, next_sync - time.monotonic()))
            except queue.Empty:
                op = None
            if self._stop.is_set():
                return
            try:
                if op is not None:
                    self._apply_op(op)
                if time.monotonic() >= next_sync:
                    next_sync = time.monotonic() + interval
                    self._sync()
            except (redis.RedisError, OSError) as error:
                if self._stop.is_set():
                    return
                self._unreachable(error)
            except Exception:
                logger.exception("outbound fleet sync failed")

    def _apply_op(self, op: tuple[Any, ...]) -> None:
        if not self._reachable:
            return  # while Redis is away the process runs on its own state; it re-syncs when Redis is back
        kind, service = op[0], op[1]
        keys = self._keys
        config = self._services[service].config.breaker
        if kind == "fail":
            window_ms = open_ms = int(config.reset_timeout * 1000)
            reason = f"{config.fail_max} failures across the fleet"
            until = int(
                self._script("fail", _FAIL)(
                    keys=[keys.fails(service), keys.breaker(service), keys.trial(service)],
                    args=[config.fail_max, window_ms, open_ms, self.worker, reason],
                )
            )
            if until:
                self._publish(service, OPEN, config.reset_timeout, reason, until)
                # This process ignores its own messages: it applies the opening it caused here.
                self._apply_remote(service, OPEN, config.reset_timeout, reason, own=True)
        elif kind == "recovered":
            self._client_().delete(keys.fails(service))
        elif kind == "pause":
            seconds = op[2]
            if self._script("pause", _PAUSE)(
                keys=[keys.pause(service)], args=[self.worker, max(1, int(seconds * 1000))]
            ):
                message = {"worker": self.worker, "service": service, "pause": seconds}
                self._client_().publish(keys.events, json.dumps(message))
        elif kind == "transition":
            _, _, new, reason, open_seconds = op
            self._set_and_publish(service, new, open_seconds, reason)

    def _set_and_publish(self, service: str, state: str, seconds: float | None, reason: str) -> None:
        keys = self._keys
        open_ms = -1 if seconds is None or seconds == float("inf") else int(seconds * 1000)
        until = int(
            self._script("set", _SET)(
                keys=[keys.breaker(service), keys.fails(service), keys.trial(service)],
                args=[state, open_ms, self.worker, reason],
            )
        )
        self._publish(service, state, None if open_ms < 0 else seconds, reason, None if until < 0 else until)

    def _publish(self, service: str, state: str, seconds: float | None, reason: str, until: int | None) -> None:
        # `until` (Redis clock) identifies the change, so the periodic re-read does not apply it a second time;
        # `seconds` is what is left of it, for processes whose clocks differ from Redis's.
        message = {"worker": self.worker, "service": service, "state": state, "seconds": seconds, "reason": reason}
        message["until"] = until
        self._client_().publish(self._keys.events, json.dumps(message))
        self._fleet_seen[service] = (state, until)

    def _sync(self) -> None:
        """Heartbeat and publish this process's stats; re-read the fleet's breakers (catching missed messages)."""
        client = self._client_()
        if not self._reachable:
            client.ping()  # raises while Redis is still away
            self._reachable_again()
        self._script("heartbeat", _HEARTBEAT)(
            keys=[self._keys.workers, self._keys.stats(self.worker)],
            args=[self.worker, self._live_ms, json.dumps(self._local_stats())],
        )
        self._adopt_fleet()

    def _adopt_fleet(self) -> None:
        names = list(self._services)
        keys = [self._keys.breaker(name) for name in names] + [self._keys.pause(name) for name in names]
        now, breakers, pauses = self._script("breakers", _BREAKERS)(keys=keys)
        for name, fields, pause_ms in zip(names, breakers, pauses, strict=True):
            self._adopt(name, _pairs(fields), int(now))
            self._adopt_pause(name, int(pause_ms))

    def _adopt_pause(self, service: str, left_ms: int) -> None:
        # A pause another process published (a message this one missed, or one from before it joined).
        pause = self._services[service].policy.pause
        if pause is not None and left_ms > 0:
            pause.pause(left_ms / 1000, publish=False)  # never shortens a pause: applying it again is harmless

    def _adopt(self, service: str, fields: dict[str, str], now_ms: int) -> None:
        # Apply the fleet's state when it changed since this process last saw it (a change it missed).
        state = fields.get("state", CLOSED)
        until = int(fields["until"]) if "until" in fields else None
        if until is not None and until <= now_ms and state == OPEN:
            return  # the trial is due: whoever claims it decides; nothing to apply
        seen = (state, until)
        if self._fleet_seen.get(service) == seen:
            return
        previous = self._fleet_seen.get(service)
        self._fleet_seen[service] = seen
        if previous is None and state == CLOSED:
            return  # first look, nothing shared: keep what this process knows
        seconds = None if until is None else max(0.0, (until - now_ms) / 1000)
        self._apply_remote(service, state, seconds, fields.get("reason", "the fleet's state"))

    def _apply_remote(self, service: str, state: str, seconds: float | None, reason: str, own: bool = False) -> None:
        breaker = self._services[service].policy.breaker
        open_seconds = float("inf") if seconds is None else seconds
        breaker.apply(state, reason=reason if own else f"{reason} (another process)", open_seconds=open_seconds)

    def _run_events(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._client_().pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(self._keys.events)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None:
                        self._on_message(message.get("data"))
            except (redis.RedisError, OSError, ValueError) as error:
                if self._stop.is_set():
                    return  # close() closed the connection under the listener: the expected way out
                self._unreachable(error)
                self._stop.wait(self.config.sync_interval)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError, OSError, ValueError):
                        pubsub.close()

    def _on_message(self, data: Any) -> None:
        try:
            message = json.loads(data)
            service = message["service"]
        except (TypeError, ValueError, KeyError):
            return  # not ours
        if message.get("worker") == self.worker or service not in self._services:
            return
        if "pause" in message or "resume" in message:
            pause = self._services[service].policy.pause
            if pause is None:
                return
            if message.get("resume"):
                pause.reset()
            elif isinstance(message["pause"], int | float):
                pause.pause(float(message["pause"]), publish=False)
            return
        self._fleet_seen[service] = (message["state"], message.get("until"))
        self._apply_remote(service, message["state"], message.get("seconds"), message.get("reason", ""))

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _client_(self) -> redis.Redis:
        client = self._client
        if client is None:
            client = self._client = redis.Redis.from_url(
                self.config.url,
                socket_timeout=self.config.timeout,
                socket_connect_timeout=self.config.timeout,
            )
        return client

    def _script(self, name: str, source: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._client_().register_script(source)
        return script

    def _local_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        for name, service in self._services.items():
            export = service.policy.stats.export()
            last = export.last_error
            stats[name] = {
                "requests": export.requests,
                "errors": export.errors,
                "retries": export.retries,
                "short_circuited": export.short_circuited,
                "pool_timeouts": export.pool_timeouts,
                "rejected": export.rejected,
                "recent": {"calls": export.recent.calls, "errors": export.recent.errors},
                "latency": export.latency,
                "last_error": last.as_dict() if last else None,
            }
        return stats

    def _unreachable(self, error: Exception) -> None:
        self._last_error = f"{type(error).__name__}: {error}"
        if self._reachable:
            self._reachable = False
            logger.warning(
                "the fleet's state backend (Redis) is unreachable (%s); this process goes on with its own breakers "
                "and stats, and re-syncs when it answers again",
                self._last_error,
            )

    def _reachable_again(self) -> None:
        if not self._reachable:
            self._reachable = True
            self._fleet_seen.clear()  # re-read everything: this process may have missed any number of changes
            self._republish_local()
            logger.info("the fleet's state backend (Redis) answers again; breakers and stats are shared again")

    def _republish_local(self) -> None:
        # What this process decided while alone (a breaker it opened) becomes the fleet's.
        for name, service in self._services.items():
            breaker = service.policy.breaker
            if breaker.state in (OPEN, ISOLATED):
                self.submit(
                    (
                        "transition",
                        name,
                        breaker.state,
                        "opened while the fleet was unreachable",
                        breaker.retry_in() or 0.0,
                    )
                )


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.workers = f"{prefix}:workers"
        self.events = f"{prefix}:events"

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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _forget_in_forked_children(state: RedisState) -> None:
    # A weak reference: registering must not keep a discarded registry's backend alive.
    ref = weakref.ref(state)

    def after_fork_in_child() -> None:
        alive = ref()
        if alive is not None:
            alive._new_process()

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=after_fork_in_child)
