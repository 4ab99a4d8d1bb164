"""How the users of ``state.url`` in one process say that Redis is unreachable: once.

The fleet backend, each fleet rate limit, each fleet-wide adaptive limit and retry-token pool reach the same Redis;
an outage is one WARNING for the process, naming ``state.url`` (redacted), whichever of them meets it first, and one
INFO when it answers again. No import of redis here: a limit that only might use the fleet imports this.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .._config import StateConfig

if TYPE_CHECKING:  # no import of redis at run time (see the module's docstring)
    import redis

    from .._lifecycle import Daemon

__all__ = ["FleetSynced", "Notice", "SharesNotice", "redact"]

logger = logging.getLogger("outbound.fleet")


def redact(url: str) -> str:
    """``url`` without its password and query (which may hold secrets), for messages and health."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user = netloc.rpartition("@")[0].partition(":")[0]
        netloc = f"{user}:***@{netloc.rpartition('@')[2]}" if user else f"***@{netloc.rpartition('@')[2]}"
    return f"{parts.scheme}://{netloc}{parts.path}"


class Notice:
    """Whether one registry's users of ``state.url`` in this process (the fleet backend, each fleet rate limit) can
    reach it, said once: the first to find it unreachable logs the one WARNING, naming ``state.url`` (redacted) and
    what goes on meanwhile; the others, failing on the same outage, add nothing; the first to be answered again logs
    the one INFO. Each user keeps its own way back (a sync's ping, a lease tried again a few seconds later)."""

    def __init__(self, config: StateConfig) -> None:
        self.url = redact(config.url)
        self.down = False
        self._lock = threading.Lock()

    def failed(self, error: Exception | str) -> None:
        with self._lock:
            if self.down:
                return
            self.down = True
        cause = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        logger.warning(
            "the fleet's state backend (Redis at state.url %s) is unreachable (%s); this process goes on with its "
            "own breakers, stats, rate limits, adaptive limits and retry tokens, and re-syncs when it answers again",
            self.url,
            cause,
        )

    def answered(self, detail: str = "") -> None:
        with self._lock:
            if not self.down:
                return
            self.down = False
        logger.info(
            "the fleet's state backend (Redis) answers again%s; breakers, stats, limits and tokens are shared", detail
        )


class SharesNotice:
    """A fleet user that says an outage through the registry's one ``Notice`` (handed by the fleet backend's
    ``attach``), or, built on its own, through a notice of its own."""

    notice: Callable[[], Notice] | None = None  # set by the fleet backend: its notice (a forked child makes its own)
    _own_notice: Notice | None = None

    def _notice(self) -> Notice:
        if self.notice is not None:
            return self.notice()
        notice = self._own_notice
        if notice is None:
            state: StateConfig | None = getattr(self, "_state", None)  # the user's settings of the fleet
            assert state is not None
            notice = self._own_notice = Notice(state)
        return notice


class FleetSynced(SharesNotice):
    """A fleet-wide part that syncs with Redis from a thread of its own (``_daemon``) over a client of its own
    (``_client``): the adaptive limit's shares, the retry-token pool. ``close`` stops both."""

    _closed: bool
    _daemon: Daemon
    _client: redis.Redis | None

    def close(self) -> None:
        self._closed = True
        state: StateConfig | None = getattr(self, "_state", None)
        self._daemon.stop(timeout=2 * (state.timeout if state is not None else 1.0) + 1.0)  # a sync may be running
        client, self._client = self._client, None
        if client is not None:
            client.close()
