"""Row 20 (issue 29, trends during an incident): what a service's history (``health.history``) costs.

20a: the memory one service's history holds at its worst (the default 10 s x 90 buckets, every latency slot of every
     bucket counted, every counter at seven digits, every bucket's percentiles and JSON text cached, ``MAX_MARKS``
     breaker transitions, ``BATCH - 1`` calls noted and not yet counted), by ``History.memory()``
     (target <= 64 KB); beside it, what recording one call costs with the ring empty and with it full (O(1): the
     same).
20b: answering ``/health/outbound?history=1`` for 50 services with full histories (15 minutes of 10 s buckets, each
     with a few latency slots and a mark): ``serving.respond(...)``, the report and its JSON body as the Django and
     Flask views send it, the median of a round's answers (target <= 5 ms). The buckets that are over wrote their
     JSON once: the details give the first answer after a bucket closes (every service encodes its window again),
     the report alone, and what ``json.dumps(report.as_dict())`` would cost.
20c: sequential GETs through a requests service with a history / the same service without one, against the upstream
     process, one call of each back to back, in pairs (``paired_difference``; target >= 0.99).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import TYPE_CHECKING

import outbound
from benchmarks._harness import Row, Target, UpstreamProcess, paired_difference, per_call_us
from outbound import serving
from outbound._config import HistoryConfig
from outbound._events import BreakerTransition
from outbound._history import BATCH, MAX_MARKS, SLOTS, History
from outbound._outcome import Kind

if TYPE_CHECKING:
    from benchmarks._scenarios import Settings

MEASUREMENT = 20
ROW_KEYS = ("20a", "20b", "20c")
SERVICES = 50
AT_MOST_64_KB = Target("<=", 64.0, "<= 64 KB")
AT_MOST_5_MS = Target("<=", 5.0, "<= 5 ms")
AT_LEAST_99 = Target(">=", 0.99, ">= 0.99")


class _Clock:
    """Wall-clock seconds moved by hand: fifteen minutes of buckets filled in a moment."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _finished(seconds: float) -> tuple[Kind, float, None]:
    return Kind.RESPONSE, seconds, None


def full_history(clock: _Clock, *, slots: int = SLOTS, calls: int = 1) -> History:
    """A default history with every bucket counted (``slots`` latency slots each), every counter at seven digits
    (the widest JSON text a bucket writes: a million calls a second), its text and percentiles cached, and every
    mark kept."""
    history = History(HistoryConfig(), clock=clock)
    for _ in range(history.size):
        clock.now += history.interval
        for slot in range(slots):
            for _ in range(calls):
                history.record_call(*_finished(0.0005 * 1.21**slot))
        history.snapshot()  # the percentiles of every bucket that is over, cached as a report reads them
    for column in history._counts:  # set, not counted: ten million calls a bucket would take minutes to record
        for index in range(len(column)):
            column[index] = 9_999_999
    clock.now += history.interval
    history.record_call(*_finished(0.012))
    history.snapshot()  # the window's JSON text, now of seven-digit counters
    for index in range(MAX_MARKS):
        history.breaker_transition(BreakerTransition("s", "closed", "open", f"{index} consecutive failures", 30.0))
    for _ in range(BATCH - 1):  # the most calls noted and not yet counted
        history.record_call(*_finished(0.012))
    return history


def _per_call_us(history: History, calls: int) -> float:
    event = _finished(0.012)
    return per_call_us(lambda: history.record_call(*event), calls=calls)


def trends(up: UpstreamProcess, s: Settings) -> list[Row]:
    return [_memory(s), _json(s), _call_path(up, s)]


def _memory(s: Settings) -> Row:
    sizes, empty, full = [], [], []
    calls = max(1000, s.slice_calls)
    for _ in range(s.rounds):
        history = full_history(_Clock())
        sizes.append(history.memory() / 1024)
        full.append(_per_call_us(history, calls))
        empty.append(_per_call_us(History(HistoryConfig(), clock=_Clock()), calls))
    return Row(
        "20a",
        "history kept per service, at its worst (10 s x 90 buckets, every latency slot, every mark)",
        "KB",
        sizes,
        AT_MOST_64_KB,
        f"recording a call: {statistics.median(empty):.2f} us into an empty ring, {statistics.median(full):.2f} us "
        f"into a full one ({SLOTS} latency slots and {len(History(HistoryConfig())._counts)} counters a bucket, "
        f"{MAX_MARKS} marks)",
        digits=1,
    )


def _json(s: Settings) -> Row:
    services = {f"s{index:02d}": {"base_url": "http://trends.invalid/"} for index in range(SERVICES)}
    registry = outbound.Registry.from_mapping(
        {"health": {"history": True, "show_details": "always"}, "services": services}
    )
    clock = _Clock()
    try:
        for service in registry:
            assert service.history is not None
            service.history._clock = clock  # the benchmark's fifteen minutes pass in a moment
        for _ in range(90):
            clock.now += 10.0
            for service in registry:
                assert service.history is not None
                for slot in range(5):  # 20 to 45 ms, a remote upstream: a few slots a bucket, as real traffic fills
                    service.history.record_call(*_finished(0.020 * 1.21**slot))
        for service in registry:
            assert service.history is not None
            service.history.breaker_transition(BreakerTransition("s", "closed", "open", "5 consecutive failures", 30))

        def answer() -> bytes:
            return serving.respond(registry, authorization=None, history="1").body

        answer()  # percentiles and JSON text of the buckets that are over, read once
        builds, reports, dumps, firsts, size = [], [], [], [], 0
        for _ in range(s.rounds):
            round_builds, round_reports, round_dumps = [], [], []
            for _ in range(max(5, s.slices)):
                started = time.perf_counter()
                body = answer()
                round_builds.append(1e3 * (time.perf_counter() - started))
                size = len(body)
                started = time.perf_counter()
                report = registry.report(history=True)
                built = time.perf_counter()
                json.dumps(report.as_dict())
                round_reports.append(1e3 * (built - started))
                round_dumps.append(1e3 * (time.perf_counter() - started))
            builds.append(statistics.median(round_builds))
            reports.append(statistics.median(round_reports))
            dumps.append(statistics.median(round_dumps))
            clock.now += 10.0  # a bucket closes: the next answer writes every service's window again
            started = time.perf_counter()
            answer()
            firsts.append(1e3 * (time.perf_counter() - started))
        started = time.perf_counter()
        plain = serving.respond(registry, authorization=None).body
        without = 1e3 * (time.perf_counter() - started)
    finally:
        registry.close()
    return Row(
        "20b",
        f"/health/outbound?history=1 for {SERVICES} services with full histories: report and JSON body",
        "ms",
        builds,
        AT_MOST_5_MS,
        f"the first answer after a bucket closes {statistics.median(firsts):.2f} ms; the report alone "
        f"{statistics.median(reports):.2f} ms; report and json.dumps(as_dict()) {statistics.median(dumps):.2f} ms; "
        f"{size / 1024:.0f} KB of JSON; without history {without:.2f} ms and {len(plain) / 1024:.0f} KB",
        digits=2,
    )


PAIRS = 2_000  # pairs of calls a round at most (a round of the full run: ~2 s against the upstream process)


def _call_path(up: UpstreamProcess, s: Settings) -> Row:
    from benchmarks._scenarios import expect_ok, service, warm_up

    on = outbound.Registry.from_mapping({"health": {"history": True}, "services": {"s": service(up.url)}})
    off = outbound.Registry.from_mapping({"services": {"s": service(up.url)}})
    try:
        with_history, without = on.session("s"), off.session("s")

        def call_on() -> None:
            expect_ok(with_history.get("ok"))

        def call_off() -> None:
            expect_ok(without.get("ok"))

        warm_up(s.warmup_calls, call_on, call_off)
        ratios, added, per_call = [], [], []
        for _ in range(s.rounds):
            # A call's time with the history / without, from the median difference of back-to-back pairs: slices
            # of calls scattered this ratio by several percent on a loaded VM, where the history adds ~1 us of ~500.
            difference, plain = paired_difference(
                call_on,
                call_off,
                pairs=min(PAIRS, s.slices * s.slice_calls),
                max_seconds=4 * s.slices * s.slice_seconds,
            )
            ratios.append(plain / (plain + difference))
            added.append(difference)
            per_call.append(plain)
    finally:
        on.close()
        off.close()
    return Row(
        "20c",
        "sequential GETs, requests: a service with a history / the same without",
        "x",
        ratios,
        AT_LEAST_99,
        f"a call without a history takes {statistics.median(per_call):.0f} us; the history adds "
        f"{statistics.median(added):.2f} us [{min(added):.2f}-{max(added):.2f}] (median of back-to-back pairs)",
    )
