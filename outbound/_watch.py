"""``outbound status --watch``: the status table redrawn every second, with a one-line sparkline per service.

``watch(read, out=...)`` asks ``read()`` for a report (this process's registry, the fleet's, or a server's over
``--url``), draws it, sleeps and asks again, until Ctrl-C, which ends it quietly with exit code 0. A report it cannot
read is shown as the error and the next second tries again: a person watching an incident keeps the view. The
sparkline is the service's history (``health.history``): requests per second over the window, one character per
bucket (the last ``SPARK_WIDTH``), with the rate, error share and p95 of the last ``RECENT_WINDOW`` seconds' complete
buckets beside it, the stale answers the cache gave in place of an error in those buckets, and since when the
service is in its state (failing, or its breaker's state), as the status page says it (``_trends``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TextIO

from ._trends import breaker_since, failing_since
from .health import HealthReport, HistorySnapshot

REFRESH_SECONDS = 1.0
RECENT_WINDOW = 10.0  # seconds of complete buckets the numbers beside a sparkline are read over
SPARK_WIDTH = 60  # buckets drawn: a terminal line with the name and the numbers beside them
_BLOCKS = "▁▂▃▄▅▆▇█"
_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen: each frame replaces the last


def watch(
    read: Callable[[], HealthReport | str],
    render: Callable[[HealthReport], str],
    *,
    out: TextIO,
    interval: float = REFRESH_SECONDS,
    frames: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Draw ``render(read())`` with the trends every ``interval`` seconds until Ctrl-C (or ``frames`` frames);
    ``read`` answers a report, or a text to show instead (an error). Returns the exit code, 0."""
    drawn = 0
    try:
        while frames is None or drawn < frames:
            try:
                found = read()
            except Exception as error:  # noqa: BLE001 (shown, and tried again in a second: the view stays up)
                found = f"Error: {type(error).__name__}: {error}"
            now = datetime.now(timezone.utc)
            body = found if isinstance(found, str) else f"{render(found)}\n\n{trends(found)}"
            out.write(
                f"{_CLEAR}outbound status --watch   {now:%H:%M:%S} UTC   every {interval:g} s   Ctrl-C to quit\n\n"
                f"{body}\n"
            )
            out.flush()
            drawn += 1
            if frames is None or drawn < frames:
                sleep(interval)
    except KeyboardInterrupt:
        out.write("\nstopped watching\n")
        out.flush()
    return 0


def trends(report: HealthReport) -> str:
    """A line per service: its sparkline of requests per second and the numbers of its last complete buckets."""
    names = sorted(report.services)
    width = max((len(name) for name in names), default=0)
    lines = []
    for name in names:
        service = report.services[name]
        history = service.history
        if history is None:
            lines.append(f"{name:<{width}}  (no history: set health.history, or the server keeps none)")
            continue
        numbers = _numbers(history, service.breaker.state, service.status)
        lines.append(f"{name:<{width}}  {sparkline(history)}  {numbers}")
    if not lines:
        return ""
    heading = "TRENDS (requests/s"
    first = next((report.services[name].history for name in names if report.services[name].history), None)
    if first is not None:
        heading += f", last {_duration(first.interval * len(first.calls))} in {first.interval:g} s buckets"
    return "\n".join([heading + ")", *lines])


def sparkline(history: HistorySnapshot) -> str:
    """One block character per bucket (the last ``SPARK_WIDTH``), scaled to the window's busiest: the lowest block
    for no calls, the next for the fewest, the full block for the busiest."""
    calls = history.calls[-SPARK_WIDTH:]
    peak = max(calls, default=0) or 1
    top = len(_BLOCKS) - 2
    return "".join(_BLOCKS[1 + round(top * count / peak)] if count else _BLOCKS[0] for count in calls)


def _numbers(history: HistorySnapshot, state: str, status: str = "ok") -> str:
    # The complete buckets of the last RECENT_WINDOW seconds (the current one is still counting): a rate over one
    # second's bucket would flicker between nothing and a burst. Then since when the service is in its state.
    count = max(1, min(len(history.calls) - 1, math.ceil(RECENT_WINDOW / history.interval)))
    window = slice(-1 - count, -1) if len(history.calls) > 1 else slice(-1, None)
    calls, errors = sum(history.calls[window]), sum(history.errors[window])
    p95 = max((value for value in history.p95_ms[window] if value is not None), default=None)
    parts = [f"{calls / (count * history.interval):,.1f}/s"]
    parts.append(f"errors {100 * errors / calls:.0f}%" if calls else "errors -")
    parts.append(f"p95 {p95:,.1f} ms" if p95 is not None else "p95 -")
    stale = sum(history.stale[window])
    if stale:
        parts.append(f"stale {stale:,}")
    since = _since(history, state, status)
    if since:
        parts.append(since)
    return "  ".join(parts)


def _since(history: HistorySnapshot, state: str, status: str) -> str:
    # A failing service (its breaker still closed) says since when it fails; else since when its breaker is in its
    # state, "or before" when no transition is in the window.
    start = history.end - timedelta(seconds=history.interval * len(history.calls))
    if status == "failing":
        failing = failing_since(history.calls, history.errors, start, history.interval)
        if failing is not None:
            return f"failing since {_clock(failing)}"
    transitions = [(mark.state, mark.at) for mark in history.marks if mark.kind == "breaker"]
    since = breaker_since(transitions, state, start)
    if since is None:
        return ""
    return f"breaker {state} since {_clock(since[0])}{'' if since[1] else ' or before'}"


def _clock(moment: datetime) -> str:
    return f"{moment.astimezone(timezone.utc):%H:%M:%S}"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 120 and seconds % 60 == 0 else f"{seconds:g} s"
