"""Measurement plumbing shared by the scenarios: the upstream process, timed loops, alternation, rows and reports.

Every timed loop is bounded twice, by a call count and by seconds, so a slow machine makes the numbers noisier but
never makes the run hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from tests.upstream import ROOT, UpstreamProcess, die_with_parent

__all__ = ["ROOT", "UpstreamProcess", "die_with_parent"]

JOIN_GRACE_SECONDS = 30.0  # how long a worker thread may overrun its deadline before the run is declared stuck


# -- timed loops -----------------------------------------------------------------------------------------------------


Slice = tuple[int, float]  # (calls made, seconds they took)


def run_slice(call: Callable[[], object], *, max_calls: int, max_seconds: float) -> Slice:
    """Call ``call()`` back to back until either bound is reached."""
    gc.collect()  # start every timed slice from the same heap state, so collections triggered by one variant's
    # garbage are not charged to the next
    calls = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    now = start
    while calls < max_calls and now < deadline:
        call()
        calls += 1
        now = time.perf_counter()
    return calls, now - start


async def run_async_slice(call: Callable[[], Awaitable[object]], *, max_calls: int, max_seconds: float) -> Slice:
    """``run_slice`` for a coroutine function, awaited back to back."""
    gc.collect()
    calls = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    now = start
    while calls < max_calls and now < deadline:
        await call()
        calls += 1
        now = time.perf_counter()
    return calls, now - start


def interleave(variants: Sequence[Callable[[], Slice]], *, rounds: int, slices: int) -> list[list[float]]:
    """Calls per second of each variant, one figure per round.

    A round runs the variants A B A B ... ``slices`` times each, in short slices, and sums each variant's calls and
    time: on a noisy machine both variants then sample the same disturbances, which one long run each would not.
    """
    results: list[list[float]] = [[] for _ in variants]
    for _ in range(rounds):
        calls = [0] * len(variants)
        seconds = [0.0] * len(variants)
        for _ in range(slices):
            for index, variant in enumerate(variants):
                made, took = variant()
                calls[index] += made
                seconds[index] += took
        for index, result in enumerate(results):
            result.append(calls[index] / seconds[index])
    return results


async def interleave_async(
    variants: Sequence[Callable[[], Awaitable[Slice]]], *, rounds: int, slices: int
) -> list[list[float]]:
    """``interleave`` for coroutine functions, on the running loop (its clients and connections stay warm)."""
    results: list[list[float]] = [[] for _ in variants]
    for _ in range(rounds):
        calls = [0] * len(variants)
        seconds = [0.0] * len(variants)
        for _ in range(slices):
            for index, variant in enumerate(variants):
                made, took = await variant()
                calls[index] += made
                seconds[index] += took
        for index, result in enumerate(results):
            result.append(calls[index] / seconds[index])
    return results


@dataclass(frozen=True, slots=True)
class Throughput:
    """A concurrent run: completed calls per wall-clock second and the share of one CPU this process used."""

    per_second: float
    cpu: float


def threaded_rate(call: Callable[[], object], *, threads: int, seconds: float) -> Throughput:
    """Completed calls per second with ``threads`` threads each calling ``call()`` in a loop for ``seconds``.

    Calls in flight at the deadline are allowed to finish and are counted, with the time they take, so a variant
    that serialises its callers is not flattered by calls cut short.
    """
    gc.collect()
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads
    errors: list[BaseException] = []
    deadline = [0.0]

    def worker(index: int) -> None:
        barrier.wait()
        done = 0
        try:
            while time.perf_counter() < deadline[0]:
                call()
                done += 1
        except BaseException as error:  # re-raised in the caller's thread below
            errors.append(error)
        counts[index] = done

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline[0] = start + seconds
    barrier.wait()
    for thread in workers:
        thread.join(timeout=seconds + JOIN_GRACE_SECONDS)
        if thread.is_alive():
            raise RuntimeError(f"a worker thread overran its {seconds}s run by {JOIN_GRACE_SECONDS:.0f}s")
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return Throughput(sum(counts) / elapsed, (time.process_time() - cpu_start) / elapsed)


async def task_rate(call: Callable[[], Awaitable[object]], *, tasks: int, seconds: float) -> Throughput:
    """``threaded_rate`` for ``tasks`` asyncio tasks on the running loop."""
    gc.collect()
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> int:
        done = 0
        while time.perf_counter() < deadline:
            await call()
            done += 1
        return done

    counts = await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(tasks))), seconds + JOIN_GRACE_SECONDS)
    elapsed = time.perf_counter() - start
    return Throughput(sum(counts) / elapsed, (time.process_time() - cpu_start) / elapsed)


def alternate(variants: Sequence[Callable[[], float]], rounds: int) -> list[list[float]]:
    """Run the variants A B A B ... for ``rounds`` rounds; one list of results per variant, in round order."""
    results: list[list[float]] = [[] for _ in variants]
    for _ in range(rounds):
        for index, variant in enumerate(variants):
            results[index].append(variant())
    return results


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Per-round ratios: each compares two runs made next to each other, so slow drift on the machine cancels."""
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


# -- rows and reports ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """``median <op> value``; ``text`` is how the issue states it."""

    op: str
    value: float
    text: str

    def met(self, value: float) -> bool:
        if self.op == ">=":
            return value >= self.value
        if self.op == "<=":
            return value <= self.value
        if self.op == "<":
            return value < self.value
        if self.op == "==":
            return value == self.value
        raise ValueError(f"unknown target operator {self.op!r}")


@dataclass(slots=True)
class Row:
    """One line of the results table: per-round samples summarised as median [min-max]."""

    key: str
    title: str
    unit: str
    samples: list[float]
    target: Target | None = None
    detail: str = ""
    digits: int = 3
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "reported"
        return "pass" if self.target.met(self.median) else "MISS"

    def value_text(self) -> str:
        def fmt(value: float) -> str:
            return f"{value:,.{self.digits}f}"

        if len(self.samples) == 1:
            return f"{fmt(self.samples[0])} {self.unit}"
        return f"{fmt(self.median)} {self.unit} [{fmt(min(self.samples))}-{fmt(max(self.samples))}]"


def median_text(values: Sequence[float], digits: int = 0) -> str:
    return f"{statistics.median(values):,.{digits}f}"


def environment() -> dict[str, str]:
    """Versions and machine facts for the report header."""
    versions = []
    for name in ("outbound-http", "requests", "urllib3", "httpx", "httpcore", "pybreaker"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": ", ".join(versions),
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(),
    }


def render_table(rows: Sequence[Row]) -> str:
    """A fixed-width table for the terminal."""
    lines = [("#", "measurement", "result: median [min-max]", "target", "verdict")]
    lines += [(r.key, r.title, r.value_text(), r.target.text if r.target else "-", r.verdict) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def render_markdown(
    rows: Sequence[Row], *, env: dict[str, str], settings: str, notes: str, sections: Sequence[str] = ()
) -> str:
    """``RESULTS.md``: environment, the table with a verdict per row, per-row details, any further ``sections``
    (Markdown, each with its own heading) and the method."""
    out = [
        "# outbound benchmark results",
        "",
        "Generated by `python3 benchmarks/run.py`; do not edit by hand (re-run to refresh).",
        "",
        f"- Date: {env['date']}",
        f"- Python: {env['python']} on {env['platform']}",
        f"- CPUs: {env['cpus']}",
        f"- Libraries: {env['libraries']}",
        f"- Run: {settings}",
        "",
        "| # | measurement | result: median [min-max] | target | verdict |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| {r.key} | {r.title} | {r.value_text()} | {r.target.text if r.target else '-'} | {r.verdict} |" for r in rows
    ]
    out += ["", "## Details", ""]
    out += [f"- **{r.key}** {r.detail}" for r in rows if r.detail]
    for section in sections:
        out += ["", section.strip()]
    out += ["", notes.strip(), ""]
    return "\n".join(out)


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    """Print how long a section took (stderr, so the table on stdout stays clean)."""
    start = time.perf_counter()
    print(f"running {label} ...", file=sys.stderr, flush=True)
    yield
    print(f"  {label} done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)


def _pairs(
    first: Callable[[], object], second: Callable[[], object], *, pairs: int, max_seconds: float
) -> Iterator[tuple[int, int]]:
    """Nanoseconds of ``first`` and of ``second`` called back to back, pair by pair, the order alternating so that
    whatever the first call of a pair pays (or saves) falls on both sides equally."""
    clock = time.perf_counter_ns
    stop = time.perf_counter() + max_seconds
    for index in range(pairs):
        if index & 1:
            start = clock()
            first()
            middle = clock()
            second()
            end = clock()
            yield middle - start, end - middle
        else:
            start = clock()
            second()
            middle = clock()
            first()
            end = clock()
            yield end - middle, middle - start
        if index & 255 == 255 and time.perf_counter() > stop:
            return


def paired_difference(
    first: Callable[[], object], second: Callable[[], object], *, pairs: int, max_seconds: float
) -> tuple[float, float]:
    """The median of ``first``'s time minus ``second``'s over calls made in pairs, back to back, and the median time
    of ``second``, in microseconds.

    For a difference of a microsecond or two: slices of calls (row 1's way) carry every disturbance of the machine
    into their totals, where a disturbance here hits one pair of thousands and the median passes over it.
    """
    differences: list[int] = []
    seconds_calls: list[int] = []
    for took_first, took_second in _pairs(first, second, pairs=pairs, max_seconds=max_seconds):
        differences.append(took_first - took_second)
        seconds_calls.append(took_second)
    return statistics.median(differences) / 1000, statistics.median(seconds_calls) / 1000


def paired_throughput(
    first: Callable[[], object], second: Callable[[], object], *, pairs: int, max_seconds: float
) -> tuple[float, float]:
    """Calls per second of ``first`` and of ``second``, called one after the other, the order alternating: the totals
    of every call's time, not a median.

    For a part whose cost comes now and then rather than on every call (a fleet rate limit's lease, fetched by a
    thread every few dozen calls): a median of pairs passes over it, and slices of calls that stop for a slice of the
    other variant stop the part's clock too (a lease outlives a pause of 50 ms only just), where one call of each
    in turn keeps both variants calling without a pause, as a sequential caller does.
    """
    totals = [0, 0]
    made = 0
    for took_first, took_second in _pairs(first, second, pairs=pairs, max_seconds=max_seconds):
        totals[0] += took_first
        totals[1] += took_second
        made += 1
    return made * 1e9 / totals[0], made * 1e9 / totals[1]


def per_call_us(call: Callable[[], object], *, calls: int, runs: int = 1) -> float:
    """Microseconds a call of ``call`` takes in a tight loop of ``calls`` (the median of ``runs`` such loops)."""
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        timings.append(1e6 * (time.perf_counter() - started) / calls)
    return statistics.median(timings)
