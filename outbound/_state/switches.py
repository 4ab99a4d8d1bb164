"""The fleet's game-day switches: fault injection (``outbound chaos NAME ...``) and enforcement (``outbound enforce
NAME``) set for every process through the shared Redis, and ended by Redis's clock.

    {prefix}:chaos:{service}     JSON {"faults": [...]}, written with a time to live (``--for``): when it expires
                                 the game day is over, whether or not the operator's shell still runs
    {prefix}:enforce:{service}   "1": the service's observe-only protections enforce (no restart)

Each process that has something to switch (a service with a fault layer, or an observe-only protection) polls the
keys of those services every half second from a thread of its own (``outbound-switches``), started on first use; a
call reads only local memory. A process applies an injection with its own end (``time.monotonic`` + the key's time
to live), so it stops on time even when Redis stops answering. Everything read is validated: a bad record is logged
and skipped, and a process never injects what it cannot read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis

from .._config import FaultConfig, StateConfig
from .._errors import ConfigError
from .._lifecycle import Daemon, on_fork
from .._parse import MAX_RECORD_BYTES
from . import key_prefix
from ._client import REDIS_ERRORS, connect
from ._records import Complaints

if TYPE_CHECKING:
    from .._service import Service

logger = logging.getLogger("outbound.fleet")

POLL_INTERVAL = 0.5  # seconds between reads of the switches: a game day's end is local, this bounds an early `--off`


def chaos_key(prefix: str, service: str) -> str:
    return f"{prefix}:chaos:{service}"


def enforce_key(prefix: str, service: str) -> str:
    return f"{prefix}:enforce:{service}"


def fault_record(faults: Sequence[FaultConfig]) -> str:
    """The JSON a chaos switch holds."""
    return json.dumps(
        {
            "faults": [
                {"kind": f.kind, "rate": f.rate, "status": f.status, "retry_after": f.retry_after, "seconds": f.seconds}
                for f in faults
            ]
        },
        sort_keys=True,
    )


def read_faults(raw: bytes | str) -> tuple[FaultConfig, ...]:
    """The faults of a chaos switch's record, validated as the settings are (raises ``ValueError``)."""
    from .._chaos import fault

    if len(raw) > MAX_RECORD_BYTES:
        raise ValueError(f"longer than {MAX_RECORD_BYTES} bytes")
    data = json.loads(raw)
    faults = data.get("faults") if isinstance(data, dict) else None
    if not isinstance(faults, list) or not faults or len(faults) > 10:
        raise ValueError("no list of 1 to 10 faults")
    parsed = []
    for entry in faults:
        if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
            raise ValueError("a fault without a kind")
        options = {key: entry[key] for key in ("status", "retry_after", "seconds") if entry.get(key) is not None}
        try:
            parsed.append(fault(entry["kind"], entry.get("rate", 0.05), **options))
        except (ConfigError, TypeError) as error:
            raise ValueError(str(error)) from None
    if sum(f.rate for f in parsed) > 1.0 + 1e-9:
        raise ValueError("rates adding up to more than 1")
    return tuple(parsed)


class FleetSwitches:
    """Writes the switches (the CLI) and follows them (every process with something to switch)."""

    def __init__(self, config: StateConfig, services: Mapping[str, Service] | None = None) -> None:
        self.config = config
        self._prefix = key_prefix(config)  # on a cluster, under the fleet's hash tag like every other key
        self._services = {
            name: service
            for name, service in (services or {}).items()
            if service.policy.chaos is not None or service.policy.would_reject is not None
        }
        self._complain = Complaints(logger)
        self._daemon = Daemon("outbound-switches", self._run)
        self._new_process()
        on_fork(self, child=FleetSwitches._new_process)

    def _new_process(self) -> None:
        self._client: redis.Redis | None = None
        self._pid = os.getpid()
        self._seen: dict[str, bytes | None] = {}
        self._lock = threading.Lock()

    @property
    def following(self) -> bool:
        return bool(self._services)

    def ensure(self) -> None:
        """Follow the switches from a thread of this process's (cheap when it runs)."""
        if self._services:
            self._daemon.ensure()

    def close(self) -> None:
        self._daemon.stop(timeout=2 * self.config.timeout + POLL_INTERVAL + 1.0)
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- the operator's side -------------------------------------------------------------------------------------

    def set_chaos(self, service: str, faults: Sequence[FaultConfig], seconds: float) -> None:
        """Inject ``faults`` into ``service`` in every process that allows chaos, for ``seconds`` (Redis's clock)."""
        self._redis().set(chaos_key(self._prefix, service), fault_record(faults), px=max(1, int(seconds * 1000)))

    def clear_chaos(self, service: str | None, names: Sequence[str]) -> None:
        self._redis().delete(*(chaos_key(self._prefix, name) for name in ([service] if service else names)))

    def set_enforce(self, service: str, enforce: bool) -> None:
        key = enforce_key(self._prefix, service)
        if enforce:
            self._redis().set(key, "1")
        else:
            self._redis().delete(key)

    # -- the following side --------------------------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll()
            except REDIS_ERRORS as error:
                # The injections in force end by themselves; an `--off` is applied when Redis answers again.
                logger.debug("the fleet's switches could not be read: %s", error)
            stop.wait(min(POLL_INTERVAL, self.config.sync_interval))

    def poll(self) -> None:
        """Read every followed service's switches once and apply them."""
        names = list(self._services)
        pipeline = self._redis().pipeline(transaction=False)
        for name in names:
            pipeline.get(chaos_key(self._prefix, name))
            pipeline.pttl(chaos_key(self._prefix, name))
            pipeline.get(enforce_key(self._prefix, name))
        answers = pipeline.execute()
        for index, name in enumerate(names):
            record, ttl, enforce = answers[3 * index : 3 * index + 3]
            policy = self._services[name].policy
            if policy.chaos is not None:
                self._apply_chaos(name, policy.chaos, record, ttl)
            if policy.would_reject is not None:
                enforcing = enforce == b"1"
                if policy.would_reject.enforcing != enforcing:
                    policy.would_reject.enforcing = enforcing
                    logger.warning(
                        "service %r: its observe-only protections %s (fleet switch)",
                        name,
                        "now enforce" if enforcing else "observe again",
                    )

    def _apply_chaos(self, name: str, chaos: Any, record: bytes | None, ttl: Any) -> None:
        if record is None:
            self._seen.pop(name, None)
            if chaos.overridden_by == "fleet":
                chaos.restore()
            return
        if not isinstance(ttl, int) or ttl <= 0:
            return  # no time to live (written by something else), or expired between the two reads: never inject
        if self._seen.get(name) == record and chaos.overridden_by == "fleet":
            return  # in force already, with its own end
        try:
            faults = read_faults(record)
        except ValueError as error:
            self._complain(f"the chaos switch of {name!r}", str(error))
            return
        self._seen[name] = record
        chaos.override(faults, ttl / 1000.0, source="fleet")

    def _redis(self) -> redis.Redis:
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._pid = os.getpid()
                # The fleet's own client: whichever topology state.url names (Sentinel, Cluster, TLS), no retries.
                self._client = connect(self.config)
            return self._client
