"""A fleet-wide retry token pool (``retry.tokens.scope: "fleet"``): one pool for every worker's retries and hedges.

gRPC's retry throttling works per process; in a fleet of small processes each worker would spend its own ``max``
tokens on an upstream that is down, and the fleet's retries would be the number of workers times the pool. Here the
pool lives in Redis (``{p}:tokens:{s}``, a decimal number of tokens, ``max`` when absent) and no call waits on it:

- a worker decides from its *view* of the pool: the fleet's tokens as its last sync read them, plus its own changes
  since (a failed attempt takes one, a success gives back ``ratio``, as with ``scope: "process"``), so its own
  failures stop its retries at once, and the other workers' within one sync;
- every ``retry.tokens.sync_interval`` (0.1 s) a worker with changes sends their sum in one script, which adds it to
  the pool (clamped to 0-``max``) and answers the pool; an idle worker reads the pool every ten intervals.

Redis down or unreachable: the worker's pool is its own from its last view (one WARNING naming
``retry.tokens.scope``); its changes meanwhile are not sent later (when Redis answers again, an INFO, the fleet's
pool is the pool). What is read is validated: a pool that is not a number from 0 to ``max`` (or a key of another
type) is replaced by a full pool by the script, and an answer that is not a number is ignored, never fatal.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING, Any

from .._lifecycle import Daemon, on_fork
from .._tokens import RetryTokens
from . import key_prefix
from ._client import REDIS_ERRORS, connect
from ._notice import FleetSynced

if TYPE_CHECKING:
    import redis

    from .._config import StateConfig, TokensConfig
    from .._stage import CallView

logger = logging.getLogger("outbound.fleet")

_IDLE_SYNCS = 10  # a worker without changes reads the pool once per this many intervals
_KEY_TTL_MS = 86_400_000  # the pool outlives its last change by a day; then it is full again

# KEYS: the pool. ARGV: the change (a decimal), max, the key's lifetime (ms). Returns the pool after it (a decimal).
_SYNC = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'string' then redis.call('DEL', KEYS[1]) end
local most = tonumber(ARGV[2])
local pool = tonumber(redis.call('GET', KEYS[1]) or '')
if pool == nil or pool ~= pool or pool < 0 or pool > most then pool = most end
local change = tonumber(ARGV[1]) or 0
if change ~= 0 then
  pool = math.min(most, math.max(0, pool + change))
  redis.call('SET', KEYS[1], string.format('%.6f', pool), 'PX', ARGV[3])
end
return string.format('%.6f', pool)
"""


class FleetRetryTokens(FleetSynced, RetryTokens):
    """``RetryTokens`` whose pool is the fleet's: this worker's view of it, synced through Redis."""

    def __init__(self, config: TokensConfig, failing: frozenset[int], *, state: StateConfig, service: str) -> None:
        super().__init__(config, failing)
        self.service = service
        self._state = state
        self._key = f"{key_prefix(state)}:tokens:{service}"
        self._daemon = Daemon(f"outbound-tokens-{service}", self._run)
        self._closed = False
        self._new_process()
        on_fork(self, child=FleetRetryTokens._new_process)

    def _new_process(self) -> None:
        self._client: redis.Redis | None = None
        self._script: Any = None
        self._unsent = 0.0  # this worker's changes since its last sync
        self.following = False
        self._idle = 0

    def admit(self, call: CallView) -> Any:
        if not self._daemon.running and not self._closed:
            self._daemon.ensure()  # one attribute read once running; starts the sync on first use (and after a fork)
        return None

    def _change(self, amount: float) -> None:
        super()._change(amount)
        self._unsent += amount

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set() and not self._closed:
            self.sync()
            stop.wait(self.config.sync_interval)

    def sync(self, *, force: bool = False) -> None:
        """Send this worker's changes and read the pool (the sync thread's; tests call it directly)."""
        with self._lock:
            change, self._unsent = self._unsent, 0.0
        if not change and not force and self.following:
            self._idle += 1
            if self._idle < _IDLE_SYNCS:
                return
        self._idle = 0
        try:
            if self._client is None:
                self._client = connect(self._state)
                self._script = self._client.register_script(_SYNC)
            answer = self._script(keys=[self._key], args=[f"{change:.6f}", self.config.max, _KEY_TTL_MS])
        except REDIS_ERRORS as error:
            self._cut_off(error)
            return
        pool = _pool(answer, self.config.max)
        if pool is None:
            logger.warning("retry tokens of %r: an invalid answer from Redis (%r) was ignored", self.service, answer)
            return
        with self._lock:
            # The fleet's pool, plus what this worker changed while the answer was on its way.
            self.tokens = min(self.config.max, max(0.0, pool + self._unsent))
        self.following = True
        self._notice().answered()

    def _cut_off(self, error: Exception) -> None:
        self.following = False
        self._notice().failed(error)  # one WARNING for the process, naming state.url

    def snapshot(self) -> dict[str, Any]:
        return super().snapshot() | {"scope": "fleet", "following": self.following}

    def clear(self) -> None:
        super().clear()  # this worker's view; the fleet's pool refills as answers come back


def _pool(answer: Any, most: float) -> float | None:
    """The pool the script answered, or ``None`` when it is not a number from 0 to ``most``."""
    try:
        value = float(answer.decode("ascii") if isinstance(answer, bytes) else answer)
    except (ValueError, TypeError, UnicodeDecodeError, AttributeError):
        return None
    return value if math.isfinite(value) and 0 <= value <= most else None
