"""A stored response and its packed form (msgpack, which hishel brings), validated field by field when read."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]

VERSION = 1


class CorruptEntry(Exception):
    """A stored value that is not an entry of ours (damaged, foreign, or of another version)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored response: what rebuilds it, and when it was stored (wall clock: the fleet shares entries)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float  # time.time() when stored (or last revalidated)
    initial_age: float  # the upstream's Age header then
    lifetime: float
    stale_if_error: float
    stale_while_revalidate: float
    vary: tuple[tuple[str, str], ...]  # (header, the storing request's value) for each header of Vary

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.stored_at)

    def keep_for(self) -> float:
        """Seconds a storage keeps it: fresh, then the longer stale window."""
        return self.lifetime + max(self.stale_if_error, self.stale_while_revalidate)

    def size(self) -> int:
        return len(self.body) + sum(len(name) + len(value) for name, value in self.headers) + 64

    def pack(self) -> bytes:
        packed: bytes = msgpack.packb(
            [
                VERSION,
                self.status,
                [list(pair) for pair in self.headers],
                self.body,
                self.stored_at,
                self.initial_age,
                self.lifetime,
                self.stale_if_error,
                self.stale_while_revalidate,
                [list(pair) for pair in self.vary],
            ],
            use_bin_type=True,
        )
        return packed


# What a header a client will send back out may hold: an RFC 9110 token for its name, and for its value any byte
# (as latin-1) but CR, LF and NUL. An entry with anything else is not ours (a client would choke on it).
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VALUE = re.compile(r"[^\r\n\x00\u0100-\U0010ffff]*\Z")
MAX_HEADERS = 256


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or len(value) > MAX_HEADERS:
        raise CorruptEntry("pairs")
    pairs = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
            raise CorruptEntry("pair")
        if not _NAME.match(pair[0]) or not _VALUE.match(pair[1]):
            raise CorruptEntry("header")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e12:
        raise CorruptEntry("seconds")
    return float(value)


def unpack(data: Any) -> Entry:
    """The entry ``data`` holds; ``CorruptEntry`` for anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CorruptEntry("not bytes")
    try:
        fields = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
    except Exception as error:
        raise CorruptEntry("not msgpack") from error
    if not isinstance(fields, list) or len(fields) != 10 or fields[0] != VERSION:
        raise CorruptEntry("shape")
    status, body = fields[1], fields[3]
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise CorruptEntry("status")
    if not isinstance(body, bytes):
        raise CorruptEntry("body")
    return Entry(
        status=status,
        headers=_pairs(fields[2]),
        body=body,
        stored_at=_seconds(fields[4]),
        initial_age=_seconds(fields[5]),
        lifetime=_seconds(fields[6]),
        stale_if_error=_seconds(fields[7]),
        stale_while_revalidate=_seconds(fields[8]),
        vary=_pairs(fields[9]),
    )
