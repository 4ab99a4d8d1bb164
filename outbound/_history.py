"""A service's recent history (``health.history``): the observer keeping it, and the record a fleet shares.

``History`` keeps a ring of ``buckets`` per-interval buckets (10 s x 90 by default: 15 minutes) of the calls that
finished, their errors, the refusals and retries, the stale answers the cache gave in place of an error
(``CacheServed``), and a latency histogram per bucket, so a bucket's percentiles are
exact to a bucket bound (~21 %) and buckets of several processes add up. Beside them, a bounded list of marks: the
breaker's transitions and the pauses the upstream asked for. It is an ``Observer`` composed into a service only when
``health.history`` is set; a service without it has no such observer and its calls pay nothing.

Buckets are numbered from the epoch (bucket ``b`` covers ``[b * interval, (b + 1) * interval)`` seconds of wall
time), so that the buckets of every process of a fleet line up and merge by number (``HistoryRecord.merge``). A
bucket's slot in the ring is reused when a later bucket needs it: no thread, no timer, O(1) per call.

Buckets that are over no longer change, so what a report reads of them is read once per bucket, not once per report:
their percentiles, and the JSON text of every series but its last value (``HistorySnapshot.as_json`` then encodes one
bucket per series, not ninety: fifty services' ``?history=1`` is a few joins). A call that lands in a bucket that is
already over (timed just before the clock moved on, or a clock set back) drops both, so they are read again.

Memory per service: counters, histograms and percentiles live in lists and ``array``s of fixed size, allocated once,
so the bound is known before any call: ``buckets * (5 counters * 8 + SLOTS * 4 + 4 * 8)`` bytes (the counters,
the latency histogram, the bucket's number and its three cached percentiles), ~42 KB for the default 90 buckets, the
JSON text of the buckets that are over (under 7 KB with every counter at seven digits), at most ``MAX_MARKS`` marks,
and fewer than ``BATCH`` calls noted and not yet counted (about 2 KB) (``History.memory()``: under 64 KB in all, a full
history measured). A fleet member also keeps what it last published of the buckets that are over (``export``), so as
not to read them again every ``sync_interval``.
"""

from __future__ import annotations

import bisect
import json
import math
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from ._events import BreakerTransition, CacheServed, CallRejected, Observer, RetryScheduled
from ._outcome import Kind, Reason
from ._parse import MAX_NAME, bad, moment, text, whole
from ._stats import LATENCY_BUCKETS_MS, PERCENTILES
from .health import HistoryMark, HistorySnapshot

if TYPE_CHECKING:
    from ._config import HistoryConfig
    from ._pause import Pause

# A bucket's latency histogram: two of the stats' buckets (steps of 10 %) per slot, steps of 21 %: half the memory,
# percentiles still within a fifth of the true ones, which is what a sparkline can show.
SLOTS = (len(LATENCY_BUCKETS_MS) + 1) // 2


def _two_figures(value: float) -> float:
    # A slot's bound to the two significant figures its 21 % steps can tell apart: from 10 ms on a whole number,
    # which JSON writes four times faster than a float (a report of fifty histories holds thousands of them).
    if value >= 10:
        return int(round(value, 1 - math.floor(math.log10(value))))
    return round(value, 1 - math.floor(math.log10(value)))


_SLOT_BOUNDS_MS = tuple(
    _two_figures(LATENCY_BUCKETS_MS[min(2 * slot + 1, len(LATENCY_BUCKETS_MS) - 1)]) for slot in range(SLOTS)
)
_FIELDS = 5  # calls, errors, refused, retries, stale (the order of the series in a snapshot and of a record's counts)
_CALLS, _ERRORS, _REFUSED, _RETRIES, _STALE = range(_FIELDS)
_NO_BUCKET = -(2**62)
_NO_PERCENTILES: tuple[None, ...] = (None,) * len(PERCENTILES)
# Calls noted between two countings into the buckets (``record_call``): at most BATCH - 1 notes of ~140 bytes held.
BATCH = 16
MAX_MARKS = 32  # the breaker's transitions and the pauses kept: a flapping breaker's last few, within the memory bound
# Bytes of JSON of a bucket (its number and five counters), of each latency slot in it, and of a mark: above what
# busy buckets take (~65, ~10, ~150), below the most they could; the budget leaves half a record to spare for that.
_BUCKET_BYTES, _SLOT_BYTES, _MARK_BYTES = 72, 14, 200
# Calls without a verdict on the upstream, as ``Stats`` (by identity: an Enum's hash is a Python call).
_CANCELLED, _CLOSED, _REFUSED_AT_SEND = Kind.CANCELLED, Kind.CLOSED, Kind.REFUSED


class History(Observer):
    """One service's history, fed by its policy's events (see the module's docstring).

    Args:
        config: ``health.history``.
        pause: the service's pause stage, if it has one (a pause is marked when it refuses a call, and in reports).
        clock: wall-clock seconds since the epoch (``time.time``; a fake one in tests).
    """

    def __init__(
        self, config: HistoryConfig, *, pause: Pause | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.interval = config.interval
        self.size = config.buckets
        self._pause = pause
        self._clock = clock
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        """Forget every bucket and mark."""
        with self._lock:
            self._ids = [_NO_BUCKET] * self.size
            # One column per counter (a snapshot reads each whole), a row per ring slot.
            self._counts = [array("q", bytes(8 * self.size)) for _ in range(_FIELDS)]
            self._latency = array("I", bytes(4 * SLOTS * self.size))
            # Percentiles of the buckets that are over (they no longer change), oldest first, of the window ending
            # with bucket _settled: read once per bucket, not on every report, and shifted by one bucket as one
            # closes (values are shared slot bounds: a tuple holds references, no floats of its own).
            self._closed: tuple[tuple[float | None, ...], ...] = ()
            self._settled = _NO_BUCKET
            self._late: list[int] = []  # buckets over and read that a late call changed since (read again)
            # The JSON text of each series' buckets that are over, of the window ending with bucket _encoded_for
            # (None: to encode at the next snapshot).
            self._encoded: tuple[str, ...] | None = None
            self._encoded_for = _NO_BUCKET
            self._marks: deque[HistoryMark] = deque(maxlen=MAX_MARKS)
            self._pending: deque[tuple[float, float, bool]] = deque()  # calls noted and not yet counted (record_call)
            # What export() read of buckets that are over, by bucket (a fleet publishes every sync_interval).
            self._exported: dict[int, tuple[tuple[int, ...], Mapping[int, int]]] = {}
            self._exported_upto = _NO_BUCKET  # the bucket still counting at the last export

    def memory(self) -> int:
        """Bytes this history holds (its arrays and lists; the bound of the module's docstring)."""
        with self._lock:
            parts: list[object] = [self._ids, *self._counts, self._latency, self._closed, *self._closed, self._late]
            parts += [self._marks, self._pending]
            for note in tuple(self._pending):  # noted without the lock: copied in one step (no iteration to race)
                parts.extend(note)
                parts.append(note)
            if self._encoded is not None:
                parts += [self._encoded, *self._encoded]
            for mark in self._marks:
                parts.extend(part for part in (mark, mark.at, mark.text, mark.state, mark.until) if part is not None)
        return sum(sys.getsizeof(part) for part in parts)

    # -- fed by the policy ----------------------------------------------------------------------------------------

    def _row(self, bucket: int) -> int:
        # Lock held. The ring index of ``bucket``, its slot emptied first when it held an older bucket.
        index = bucket % self.size
        if self._ids[index] != bucket:
            if bucket < self._settled:
                # A bucket that is over takes a slot of the window that was read (a clock set back by a window's
                # length, or a late call into a bucket without calls): the whole window is read again.
                self._settled = _NO_BUCKET
                self._encoded = None
            self._ids[index] = bucket
            for column in self._counts:
                column[index] = 0
            start = index * SLOTS
            self._latency[start : start + SLOTS] = array("I", bytes(4 * SLOTS))
        elif bucket < self._settled:
            # A late call, in a bucket that is over and was read (timed just before the clock moved on, or a clock
            # set back): that bucket's percentiles and the window's text are read again at the next snapshot.
            if bucket not in self._late:
                self._late.append(bucket)
            self._encoded = None
        if bucket < self._exported_upto:
            # A late call into a bucket the last export read as over: the next export reads it again.
            self._exported.pop(bucket, None)
        return index

    def record_call(self, kind: Kind, seconds: float, error_type: str | None) -> None:
        """One finished call (fed by the service's statistics, ``Stats.also_record``: no event is built for it).

        The call is noted (when, how long, whether it failed) in a queue, without the lock; every ``BATCH`` calls,
        and before anything reads the buckets, the queue is counted into them under the lock, with its bucket and
        latency slot worked out there. Counting each call at once cost ~4 us on a real call (the ring's arrays and
        the lock are cold by then); a note that worked out its bucket and slot ~3 us; this note ~1 us.
        """
        if kind is _CANCELLED or kind is _CLOSED or (kind is _REFUSED_AT_SEND and error_type is None):
            return  # interrupted, or refused before sending: counted by call_rejected
        pending = self._pending
        pending.append((self._clock(), seconds, error_type is not None))  # deque.append is atomic: no lock
        if len(pending) >= BATCH:
            with self._lock:
                self._count_pending()

    def _count_pending(self) -> None:
        # Lock held. Calls noted by record_call, into their buckets (a bucket over by now takes it as a late call).
        pending = self._pending
        interval, calls, errors, latency = self.interval, self._counts[_CALLS], self._counts[_ERRORS], self._latency
        while pending:
            when, seconds, failed = pending.popleft()
            index = self._row(int(when // interval))
            calls[index] += 1
            if failed:
                errors[index] += 1
            slot = min(bisect.bisect_left(LATENCY_BUCKETS_MS, seconds * 1000.0) // 2, SLOTS - 1)
            latency[index * SLOTS + slot] += 1

    def retry_scheduled(self, event: RetryScheduled) -> None:
        self._add(_RETRIES)

    def call_rejected(self, event: CallRejected) -> None:
        self._add(_REFUSED)
        if event.reason is Reason.RATE_LIMITED and self._pause is not None:
            self._mark_pause()

    def cache_served(self, event: CacheServed) -> None:
        if event.kind == "stale":  # a fallback is the service's own answer, not the upstream's: not a stale one
            self._add(_STALE)

    def breaker_transition(self, event: BreakerTransition) -> None:
        text = f"{event.old} → {event.new}: {event.reason}" if event.reason else f"{event.old} → {event.new}"
        mark = HistoryMark(at=self._now(), kind="breaker", state=event.new, text=text)
        with self._lock:
            self._marks.append(mark)

    def reset_after_fork(self) -> None:
        """In a forked child: a new lock (the parent's may have been held by a thread that does not exist here)."""
        self._lock = threading.Lock()

    def _add(self, position: int) -> None:
        bucket = int(self._clock() // self.interval)
        with self._lock:
            self._counts[position][self._row(bucket)] += 1

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), timezone.utc)

    def _mark_pause(self) -> None:
        # A pause is marked once, from when it was first seen (a refused call, a report) to when it ends.
        left = self._pause.paused_for() if self._pause is not None else None
        if left is None:
            return
        now = self._clock()
        until = datetime.fromtimestamp(now + left, timezone.utc)
        with self._lock:
            for mark in reversed(self._marks):
                if mark.kind == "pause" and mark.until is not None and mark.until.timestamp() >= now:
                    return
            self._marks.append(
                HistoryMark(at=datetime.fromtimestamp(now, timezone.utc), kind="pause", text="paused", until=until)
            )

    # -- read by reports and the fleet ----------------------------------------------------------------------------

    def snapshot(self) -> HistorySnapshot:
        """The window ending with the bucket now counting, oldest bucket first. Each bucket's percentiles are read
        from its histogram once, when it is over; the series are sliced out of the arrays whole (a report of fifty
        services reads fifty of these)."""
        self._mark_pause()
        newest = int(self._clock() // self.interval)
        size = self.size
        oldest = newest - size + 1
        first = oldest % size  # the ring index of the oldest bucket
        with self._lock:
            self._count_pending()
            if self._settled != newest:
                if self._settled == newest - 1 and self._closed:
                    # One bucket closed since the last snapshot: the window's percentiles shift by it, and so does
                    # its JSON text (the first answer after a bucket closes stays cheap).
                    added = self._bucket_percentiles(newest - 1)
                    pairs = zip(self._closed, added, strict=True)
                    self._closed = tuple((*column[1:], value) for column, value in pairs)
                    shifted = self._encoded if self._encoded_for == newest - 1 else None
                else:  # the first snapshot, or a jump of the clock: the whole window again
                    rows = [self._bucket_percentiles(bucket) for bucket in range(oldest, newest)]
                    self._closed = tuple(zip(*rows, strict=True)) if rows else ((),) * len(PERCENTILES)
                    shifted = None
                self._settled = newest
                self._encoded = None
            else:
                shifted = None
            if self._late:
                self._read_late(oldest, newest)
            encoded = self._encoded
            current = self._bucket_percentiles(newest)
            closed = self._closed
            counts = [column.tolist() for column in self._counts]
            rotated = self._ids[first:] + self._ids[:first]
            marks = tuple(mark for mark in self._marks if _last_moment(mark) >= oldest * self.interval)
        columns: list[Any] = [column[first:] + column[:first] for column in counts]
        if rotated != list(range(oldest, newest + 1)):
            for position, bucket in enumerate(rotated):
                if bucket != oldest + position:  # never counted, or an older bucket's slot: nothing in this window
                    for column in columns:
                        column[position] = 0
        columns += [(*column, value) for column, value in zip(closed, current, strict=True)]
        if encoded is None:
            # Once per bucket (and after a late call): the JSON of every series but the bucket still counting.
            if shifted is not None:
                encoded = tuple(_shift(text, column[-2]) for text, column in zip(shifted, columns, strict=True))
            else:
                encoded = tuple(json.dumps(column[:-1])[1:-1] for column in columns)
            with self._lock:
                if self._settled == newest and not self._late:  # no late call since the columns were read
                    self._encoded, self._encoded_for = encoded, newest
        return _snapshot(self.interval, newest, columns, marks, encoded)

    def _read_late(self, oldest: int, newest: int) -> None:
        # Lock held. The percentiles of the buckets late calls changed, read again (those still in the window).
        columns = [list(column) for column in self._closed]
        for bucket in self._late:
            if oldest <= bucket < newest:
                for column, value in zip(columns, self._bucket_percentiles(bucket), strict=True):
                    column[bucket - oldest] = value
        self._closed = tuple(tuple(column) for column in columns)
        self._late = []

    def _bucket_percentiles(self, bucket: int) -> tuple[float | None, ...]:
        # Lock held. The percentiles of ``bucket``, if its ring slot holds it.
        index = bucket % self.size
        if self._ids[index] != bucket:
            return _NO_PERCENTILES
        return _percentiles(self._latency[index * SLOTS : (index + 1) * SLOTS])

    def export(self) -> HistoryRecord:
        """This process's buckets of the window and its marks, for the fleet."""
        newest = int(self._clock() // self.interval)
        oldest = newest - self.size + 1
        buckets: dict[int, tuple[tuple[int, ...], Mapping[int, int]]] = {}
        exported = self._exported
        with self._lock:
            self._count_pending()
            for index, bucket in enumerate(self._ids):
                if bucket < oldest or bucket > newest:
                    continue
                # Calls count in the bucket of now: a bucket that is over no longer changes, and is read once.
                known = exported.get(bucket)
                if known is None or bucket == newest:
                    start = index * SLOTS
                    latency = self._latency[start : start + SLOTS]
                    counts = tuple(column[index] for column in self._counts)
                    known = (counts, {slot: count for slot, count in enumerate(latency) if count})
                    if bucket != newest:
                        exported[bucket] = known
                buckets[bucket] = known
            for bucket in [bucket for bucket in exported if bucket < oldest]:
                del exported[bucket]
            self._exported_upto = newest
            marks = tuple(mark for mark in self._marks if _last_moment(mark) >= oldest * self.interval)
        return HistoryRecord(interval=self.interval, buckets=buckets, marks=marks)


def _shift(text: str, value: Any) -> str:
    # A series' JSON text without its oldest value, with ``value`` after its newest: as json.dumps writes the values
    # of a series (ints, finite floats: their repr; None: null), which never hold ", ".
    rest = text.partition(", ")[2]
    added = "null" if value is None else repr(value)
    return f"{rest}, {added}" if rest else added


def _last_moment(mark: HistoryMark) -> float:
    return (mark.until or mark.at).timestamp()


def _percentiles(histogram: Iterable[int]) -> tuple[float | None, ...]:
    # Nearest rank on the bucket's histogram, each value its slot's upper bound.
    cumulative = list(accumulate(histogram))
    total = cumulative[-1] if cumulative else 0
    if not total:
        return _NO_PERCENTILES
    return tuple(
        _SLOT_BOUNDS_MS[bisect.bisect_left(cumulative, max(1, math.ceil(fraction * total)))] for fraction in PERCENTILES
    )


def _snapshot(
    interval: float,
    newest: int,
    series: list[list[Any]],
    marks: Iterable[HistoryMark],
    encoded: tuple[str, ...] | None = None,
) -> HistorySnapshot:
    calls, errors, refused, retries, stale, p50, p95, p99 = (tuple(values) for values in series)
    return HistorySnapshot(
        interval=interval,
        end=datetime.fromtimestamp((newest + 1) * interval, timezone.utc),
        calls=calls,
        errors=errors,
        refused=refused,
        retries=retries,
        stale=stale,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        marks=tuple(sorted(marks, key=lambda mark: mark.at)),
        closed_json=encoded,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryRecord:
    """One process's history of one service as a fleet shares it: buckets by number (counters, sparse histogram)."""

    interval: float
    buckets: Mapping[int, tuple[tuple[int, ...], Mapping[int, int]]] = field(default_factory=dict)
    marks: tuple[HistoryMark, ...] = ()

    def as_dict(self, *, budget: int | None = None) -> dict[str, Any]:
        """The JSON-ready record; with ``budget``, cut to about that many bytes of JSON, its oldest buckets first
        (a fleet record has a size limit, and a history must not crowd the stats out of it)."""
        buckets = [
            [bucket, list(counts), {str(slot): count for slot, count in histogram.items()}]
            for bucket, (counts, histogram) in sorted(self.buckets.items())
        ]
        marks = [mark.as_dict() for mark in self.marks]
        if budget is not None:
            # An estimate, not a second encoding: a bucket's number, counters and slots, a mark's times and text.
            size = sum(_MARK_BYTES + len(mark.get("text", "")) for mark in marks)
            sizes = [_BUCKET_BYTES + _SLOT_BYTES * len(histogram) for _, (_, histogram) in sorted(self.buckets.items())]
            size += sum(sizes)
            cut = 0
            while cut < len(buckets) and size > budget:
                size -= sizes[cut]
                cut += 1
            buckets = buckets[cut:]
        return {"interval": self.interval, "buckets": buckets, "marks": marks}

    @classmethod
    def from_dict(cls, data: Any, *, interval: float, size: int) -> HistoryRecord:
        """``as_dict()`` read back from outside, every value checked and bounded: at most ``size`` buckets, of this
        registry's ``interval`` (another process's buckets of another length do not line up: an error).

        Raises:
            ValueError, TypeError, _parse.Invalid...: one of ``_parse.INVALID``, for a record to skip.
        """
        if not isinstance(data, Mapping) or data.get("interval") != interval:
            bad("history is not a JSON object of this interval")
        raw_buckets, raw_marks = data.get("buckets"), data.get("marks", [])
        if not isinstance(raw_buckets, list) or len(raw_buckets) > size:
            bad("history buckets are not a short list")
        if not isinstance(raw_marks, list) or len(raw_marks) > MAX_MARKS:
            bad("history marks are not a short list")
        buckets: dict[int, tuple[tuple[int, ...], Mapping[int, int]]] = {}
        for item in raw_buckets:
            if not isinstance(item, list) or len(item) != 3:
                bad("a history bucket is not [number, counts, histogram]")
            bucket, counts, histogram = item
            bucket = whole(bucket)
            if not isinstance(counts, list) or len(counts) != _FIELDS:
                bad("a history bucket's counts are not a list of five")
            if not isinstance(histogram, Mapping) or len(histogram) > SLOTS:
                bad("a history bucket's histogram is not a JSON object of slots")
            slots = {_slot(slot): whole(count) for slot, count in histogram.items()}
            buckets[bucket] = (tuple(whole(count) for count in counts), slots)
        return cls(interval=interval, buckets=buckets, marks=tuple(_mark(mark) for mark in raw_marks))

    @classmethod
    def merge(cls, records: Iterable[HistoryRecord], *, interval: float) -> HistoryRecord:
        """The records of several processes as one: each bucket's counters and histogram summed by number, the
        marks of all (a breaker transition every process saw is kept once)."""
        buckets: dict[int, tuple[list[int], dict[int, int]]] = {}
        marks: dict[tuple[str, str, int], HistoryMark] = {}
        for record in records:
            for bucket, (counts, histogram) in record.buckets.items():
                summed, slots = buckets.setdefault(bucket, ([0] * _FIELDS, {}))
                for position, count in enumerate(counts):
                    summed[position] += count
                for slot, count in histogram.items():
                    slots[slot] = slots.get(slot, 0) + count
            for mark in record.marks:
                # The same transition seen by several processes within a second: one mark.
                marks.setdefault((mark.kind, mark.state, int(mark.at.timestamp())), mark)
        return cls(
            interval=interval,
            buckets={bucket: (tuple(counts), slots) for bucket, (counts, slots) in buckets.items()},
            marks=tuple(sorted(marks.values(), key=lambda mark: mark.at))[-MAX_MARKS:],
        )

    def snapshot(self, *, size: int, now: float) -> HistorySnapshot:
        """As a report shows it: the ``size`` buckets ending with the one counting at ``now``."""
        newest = int(now // self.interval)
        series: list[list[Any]] = [[] for _ in range(_FIELDS + len(PERCENTILES))]
        for bucket in range(newest - size + 1, newest + 1):
            found = self.buckets.get(bucket)
            counts: tuple[int, ...] = found[0] if found is not None else (0,) * _FIELDS
            for position in range(_FIELDS):
                series[position].append(counts[position])
            histogram = found[1] if found is not None else {}
            dense = [0] * SLOTS
            for slot, count in histogram.items():
                dense[slot] = count
            for position, value in enumerate(_percentiles(dense)):
                series[_FIELDS + position].append(value)
        oldest_moment = (newest - size + 1) * self.interval
        return _snapshot(
            self.interval, newest, series, (mark for mark in self.marks if _last_moment(mark) >= oldest_moment)
        )


def _mark(raw: Any) -> HistoryMark:
    # A mark read back: its times with their UTC offset (a naive one could not be ordered with the others), its
    # words cut to a length a page shows.
    if not isinstance(raw, Mapping) or raw.get("kind") not in ("breaker", "pause"):
        bad("a history mark is not a breaker transition or a pause")
    until = raw.get("until")
    return HistoryMark(
        at=moment(raw.get("at")),
        kind=raw["kind"],
        state=text(raw.get("state", ""), MAX_NAME),
        text=text(raw.get("text", "")),
        until=moment(until) if until is not None else None,
    )


def _slot(slot: Any) -> int:
    if not isinstance(slot, str) or not slot.isdigit() or int(slot) >= SLOTS:
        bad("a latency slot is not a known one")
    return int(slot)
