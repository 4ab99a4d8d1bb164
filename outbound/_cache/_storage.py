"""Where a service's cache keeps its responses: memory, a Redis the fleet shares, or an SQLite file.

Every storage answers ``get`` / ``put`` / ``clear`` and ``claim`` (the revalidation lock: one background refresh per
key; on Redis one per key across the fleet, ``SET NX PX``). A storage raises on trouble (Redis down, a locked
database); the layer logs it once and the call goes to the upstream as if uncached. Values read are validated
(``_entry.unpack``): a corrupt or foreign value is ``CorruptEntry``, never trusted.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

from ._entry import Entry, unpack


class Storage(Protocol):
    def get(self, key: str) -> Entry | None: ...

    def put(self, key: str, entry: Entry) -> None: ...

    def claim(self, key: str, seconds: float) -> bool:
        """Take the revalidation lock of ``key`` for ``seconds``; ``False``: someone holds it."""

    def clear(self) -> None: ...

    def close(self) -> None: ...


class MemoryStorage:
    """This process's entries, least recently used first out, bounded by count and by bytes."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._claims: dict[str, float] = {}

    def get(self, key: str) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: Entry) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size()
            self._entries[key] = entry
            self._bytes += entry.size()
            while self._entries and (len(self._entries) > self._max_entries or self._bytes > self._max_bytes):
                _, gone = self._entries.popitem(last=False)
                self._bytes -= gone.size()

    def claim(self, key: str, seconds: float) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._claims.get(key, 0.0) > now:
                return False
            if len(self._claims) > 10_000:
                self._claims = {k: until for k, until in self._claims.items() if until > now}
            self._claims[key] = now + seconds
            return True

    def unclaim(self, key: str) -> None:
        with self._lock:
            self._claims.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._claims.clear()
            self._bytes = 0

    def close(self) -> None:
        self.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:40]


class RedisStorage:
    """Entries in a Redis the fleet shares, under ``{prefix}:cache:{service}:``; each expires when no window is left."""

    def __init__(self, url: str, prefix: str, service: str, timeout: float) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._prefix = f"{prefix}:cache:{service}:"

    def get(self, key: str) -> Entry | None:
        data = self._client.get(self._prefix + _digest(key))
        return None if data is None else unpack(data)

    def put(self, key: str, entry: Entry) -> None:
        milliseconds = max(1000, int(entry.keep_for() * 1000) + 1000)
        self._client.set(self._prefix + _digest(key), entry.pack(), px=milliseconds)

    def claim(self, key: str, seconds: float) -> bool:
        taken = self._client.set(self._prefix + "lock:" + _digest(key), b"1", nx=True, px=max(1, int(seconds * 1000)))
        return bool(taken)

    def unclaim(self, key: str) -> None:
        self._client.delete(self._prefix + "lock:" + _digest(key))

    def clear(self) -> None:
        keys = list(self._client.scan_iter(match=self._prefix + "*", count=500))
        for start in range(0, len(keys), 500):
            self._client.delete(*keys[start : start + 500])

    def close(self) -> None:
        self._client.close()

    def reset_after_fork(self) -> None:
        self._client.connection_pool.reset()


class SqliteStorage:
    """Entries in an SQLite file (one table, ``outbound_cache``), shared by the processes of one machine."""

    def __init__(self, path: str, service: str, timeout: float) -> None:
        self._path = path
        self._service = service
        self._timeout = timeout
        self._local = threading.local()
        with self._connection() as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS outbound_cache "
                "(service TEXT, key TEXT, value BLOB, expires REAL, PRIMARY KEY (service, key))"
            )

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            self._local.connection = connection
        return connection

    def get(self, key: str) -> Entry | None:
        row: Any = (
            self._connection()
            .execute(
                "SELECT value FROM outbound_cache WHERE service = ? AND key = ? AND expires > ?",
                (self._service, _digest(key), time.time()),
            )
            .fetchone()
        )
        return None if row is None else unpack(row[0])

    def put(self, key: str, entry: Entry) -> None:
        self._connection().execute(
            "INSERT OR REPLACE INTO outbound_cache (service, key, value, expires) VALUES (?, ?, ?, ?)",
            (self._service, _digest(key), entry.pack(), time.time() + entry.keep_for()),
        )

    def claim(self, key: str, seconds: float) -> bool:
        connection = self._connection()
        now = time.time()
        lock = "lock:" + _digest(key)
        connection.execute("BEGIN IMMEDIATE")
        try:
            row = connection.execute(
                "SELECT expires FROM outbound_cache WHERE service = ? AND key = ?", (self._service, lock)
            ).fetchone()
            if row is not None and row[0] > now:
                return False
            connection.execute(
                "INSERT OR REPLACE INTO outbound_cache (service, key, value, expires) VALUES (?, ?, ?, ?)",
                (self._service, lock, b"", now + seconds),
            )
            return True
        finally:
            connection.execute("COMMIT")

    def unclaim(self, key: str) -> None:
        self._connection().execute(
            "DELETE FROM outbound_cache WHERE service = ? AND key = ?", (self._service, "lock:" + _digest(key))
        )

    def clear(self) -> None:
        self._connection().execute("DELETE FROM outbound_cache WHERE service = ?", (self._service,))

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def reset_after_fork(self) -> None:
        self._local = threading.local()
