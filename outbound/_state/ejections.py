"""Endpoint ejections shared by the fleet (issue 31): one worker's ejection holds for every worker.

A service with several endpoints and a Redis state backend counts its endpoints' failures in Redis and lets Redis
decide the ejections, on Redis's clock, in one Lua script (as the breaker's trial slots are decided):

    {p}:ejections:{s}   a hash, per endpoint URL ``e``: ``f:e`` failures in a row counted by every worker,
                        ``u:e`` ejected until (ms, Redis's clock), ``n:e`` ejections in a row

A failure is one round trip (failures are rare; a success costs nothing, except the first after failures, which
clears the count). Its answer is the endpoint's ejection as the fleet holds it: a worker that did not see the
failures that ejected it learns of it at its own next failure there, so a dead endpoint costs the fleet about
``consecutive_failures`` failures plus one per worker, not that many per worker. An ejection ends on its own; each
worker then sends it one trial. Everything read is validated: an answer that is not two integers is ignored, and the
worker decides alone (as it does when Redis does not answer).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._config import ServiceConfig
    from .._endpoints import Endpoint, Endpoints
    from . import ServiceLink
    from .redis import RedisState

logger = logging.getLogger("outbound.fleet")

# KEYS: the service's ejections hash. ARGV: endpoint URL, consecutive_failures, base_ejection ms, max_ejection ms,
# max ejected at once, trial (1: a trial failed, eject again at once), the endpoints' URLs follow.
# Returns {now_ms, until_ms}: until_ms 0 when the endpoint is not ejected.
FAILURE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key, e = KEYS[1], ARGV[1]
local threshold, base, longest, most = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local upto = tonumber(redis.call('HGET', key, 'u:' .. e) or '0') or 0
if upto > now then return {now, upto} end
local n = tonumber(redis.call('HGET', key, 'n:' .. e) or '0') or 0
if n > 0 and now - upto > longest then n = 0 end
local f = redis.call('HINCRBY', key, 'f:' .. e, 1)
if f >= threshold or ARGV[6] == '1' then
  local ejected = 0
  for i = 7, #ARGV do
    local other = tonumber(redis.call('HGET', key, 'u:' .. ARGV[i]) or '0') or 0
    if other > now then ejected = ejected + 1 end
  end
  if ejected < most then
    n = n + 1
    upto = now + math.min(base * n, longest)
    redis.call('HSET', key, 'u:' .. e, upto, 'n:' .. e, n, 'f:' .. e, 0)
    redis.call('PEXPIRE', key, longest * 4 + 60000)
    return {now, upto}
  end
end
redis.call('PEXPIRE', key, longest * 4 + 60000)
return {now, 0}
"""


class EjectionStore:
    """One service's endpoint ejections in the fleet's Redis."""

    def __init__(self, state: RedisState, config: ServiceConfig) -> None:
        self._state = state
        self._key = f"{state.config.prefix}:ejections:{config.name}"
        outlier = config.outlier
        self._args = (
            outlier.consecutive_failures,
            int(outlier.base_ejection * 1000),
            int(outlier.max_ejection * 1000),
        )

    def failure(self, endpoints: Endpoints, endpoint: Endpoint, *, trial: bool) -> float | None:
        """Count a failure of ``endpoint`` in the fleet: seconds left of its ejection (0.0: not ejected), or
        ``None`` when Redis did not answer, or answered something that is not an ejection (decide here)."""
        if not getattr(self._state, "_reachable", True):
            return None  # known to be cut off (the fleet's thread says when it answers again): no wait on each failure
        threshold, base, longest = self._args
        urls = [e.url for e in endpoints.endpoints]
        args = [endpoint.url, threshold, base, longest, endpoints.max_ejected, "1" if trial else "0", *urls]
        try:
            answer: Any = self._state._script("endpoint_failure", FAILURE)(keys=[self._key], args=args)
        except Exception as error:  # noqa: BLE001 (Redis down or broken: this worker decides alone)
            logger.debug("endpoint ejections: Redis did not answer (%s); deciding in this process", error)
            return None
        if (
            not isinstance(answer, list | tuple)
            or len(answer) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in answer)
        ):
            logger.warning("endpoint ejections: an invalid answer from Redis (%r) was ignored", answer)
            return None
        now, until = answer
        return (until - now) / 1000.0 if until > now else 0.0

    def success(self, endpoints: Endpoints, endpoint: Endpoint) -> None:
        """A success of ``endpoint`` after failures (or a trial): the fleet's count of failures in a row restarts."""
        del endpoints
        try:
            self._state._client_().hset(self._key, "f:" + endpoint.url, "0")
        except Exception as error:  # noqa: BLE001
            logger.debug("endpoint ejections: Redis did not answer (%s)", error)


def store_for(link: ServiceLink, config: ServiceConfig) -> EjectionStore | None:
    """The fleet's ejections for a shared service of a Redis-backed registry, or ``None`` (each process alone)."""
    state = getattr(link, "_state", None)
    if state is None or not hasattr(state, "_script"):
        return None
    return EjectionStore(state, config)
