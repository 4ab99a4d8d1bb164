"""The trends of a service on the status page: sparklines of its history, and the text that says the same.

``trends(history, breaker_state)`` turns a service's ``history`` (``HistorySnapshot.as_dict()``, from the JSON-ready
report, as the rest of the page) into inline SVG drawn on the server: requests per second, the share of calls that
failed and the p95 latency over the window, each on the same time axis as the marks (the breaker's transitions as
vertical lines coloured by the state they went to, a pause as a shaded band). No script, no font, no external
resource: the page works offline and under its strict Content-Security-Policy.

Every picture has its words: the SVG is ``role="img"`` with a label giving the numbers (now, peak, and the window),
and the marks are listed under it as text with their times, so a screen reader — and a test — reads what a sighted
person sees. Stale answers (calls the cache answered with a stored response in place of their error) are a number
beside the error share, in its words too.

``failing_since`` and ``breaker_since`` are the "since" of a service's state, read from its history: the page and
``outbound status --watch`` (``_watch.py``) say the same.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeGuard

from . import health

RECENT_SECONDS = 10.0  # the complete buckets a line's "now" is read over
WIDTH, HEIGHT = 300, 36  # the viewBox: scaled to the card's width, the strokes kept thin (non-scaling-stroke)
_STATE_CLASSES = {"open": "bad", "isolated": "bad", "half-open": "warn", "closed": "ok"}


def trends(history: Any, breaker_state: Any = None, status: Any = None) -> str:
    """The trends section of a card, or ``""`` when ``history`` is not a history this page can read; ``status``
    the service's, for the start of a failure that the buckets show (``failing``)."""
    series = _read(history)
    if series is None:
        return ""
    interval, end, values, marks = series
    count = len(values["calls"])
    start = end - timedelta(seconds=interval * count)
    rates = [calls / interval for calls in values["calls"]]
    errors = [
        100.0 * failed / calls if calls else None
        for calls, failed in zip(values["calls"], values["errors"], strict=True)
    ]
    p95 = values["p95_ms"]
    window = _duration(interval * count)
    stale = sum(values["stale"]) if "stale" in values else 0
    # "Now" is the complete buckets of the last RECENT_SECONDS (the current one is still counting, and one short
    # bucket alone would flicker between nothing and a burst).
    recent = (
        slice(-1 - max(1, min(count - 1, math.ceil(RECENT_SECONDS / interval))), -1) if count > 1 else slice(-1, None)
    )
    calls, failed = sum(values["calls"][recent]), sum(values["errors"][recent])
    seconds = interval * len(values["calls"][recent])
    latest = [value for value in p95[recent] if value is not None]
    now = {
        "requests": calls / seconds,
        "errors": 100.0 * failed / calls if calls else None,
        "p95": max(latest) if latest else None,
    }
    lines = [
        _line("requests", "Requests/s", rates, None, lambda v: f"{v:,.1f}/s", now, window, start, end, marks),
        _line("errors", "Errors", errors, 100.0, lambda v: f"{v:.0f}%", now, window, start, end, marks, stale),
        _line("p95", "p95", p95, None, lambda v: f"{v:,.1f} ms", now, window, start, end, marks),
    ]
    return (
        '<section class="trends">\n'
        f'<h3>Last {window} <span class="muted">({_number(interval)} s buckets)</span></h3>\n'
        f"{_failing_since(values, status, start, interval)}"
        f"{_since(marks, breaker_state, start)}"
        f"{''.join(lines)}"
        f"{_mark_list(marks)}"
        "</section>\n"
    )


def _read(history: Any) -> tuple[float, datetime, dict[str, list[Any]], list[Mapping[str, Any]]] | None:
    # The history as the report carries it, checked: a server of another version must not break the page.
    if not isinstance(history, Mapping):
        return None
    interval, end = history.get("interval"), _moment(history.get("end"))
    if not _is_number(interval) or interval <= 0 or end is None:
        return None
    values: dict[str, list[Any]] = {}
    for name in ("calls", "errors", "p95_ms"):
        found = history.get(name)
        if not isinstance(found, list | tuple) or not found:
            return None
        values[name] = [value if _is_number(value) else None for value in found]
    if len({len(found) for found in values.values()}) != 1:
        return None
    stale = history.get("stale")  # a server that counts no stale answers sends none: the page shows none
    if isinstance(stale, list | tuple) and len(stale) == len(values["calls"]):
        values["stale"] = [value if _is_number(value) and value > 0 else 0 for value in stale]
    values["calls"] = [value or 0 for value in values["calls"]]
    values["errors"] = [value or 0 for value in values["errors"]]
    marks = [mark for mark in history.get("marks") or () if isinstance(mark, Mapping) and _moment(mark.get("at"))]
    return float(interval), end, values, marks


def _line(
    name: str,
    label: str,
    values: Sequence[float | None],
    top: float | None,
    shown: Callable[[float], str],
    latest: Mapping[str, float | None],
    window: str,
    start: datetime,
    end: datetime,
    marks: Sequence[Mapping[str, Any]],
    stale: float = 0,
) -> str:
    known = [value for value in values if value is not None]
    peak = max(known, default=0.0)
    scale = top if top is not None else (peak or 1.0)
    now = latest[name]
    now_text = shown(now) if now is not None else "no calls"
    words = (
        f"{label} over the last {window}: now {now_text}, peak {shown(peak)}"
        if known
        else f"{label}: no calls in {window}"
    )
    extra = ""
    if stale:
        answers = f"{stale:,.0f} stale answer{'s' if stale != 1 else ''}"
        words += f"; {answers} from the cache in place of an error"
        extra = (
            f' <span class="stale" data-stale="{stale:.0f}" title="served from the cache in place of an error">'
            f"{answers}</span>"
        )
    step = WIDTH / max(len(values) - 1, 1)
    path, area = [], []
    run = 0  # points in the line being drawn: a lone one (calls in one bucket between empty ones) is a dash
    for index, value in enumerate([*values, None]):
        if value is None:
            if run == 1:
                path.append(f"m{-step / 2:.1f},0h{step:.1f}")
            if run:
                area.append(f"L{index * step - step:.1f},{HEIGHT}")
            run = 0
            continue
        x, y = index * step, HEIGHT - 2 - (HEIGHT - 4) * min(value / scale, 1.0)
        if not run:
            path.append(f"M{x:.1f},{y:.1f}")
            area.append(f"M{x:.1f},{HEIGHT}L{x:.1f},{y:.1f}")
        else:
            path.append(f"L{x:.1f},{y:.1f}")
            area.append(f"L{x:.1f},{y:.1f}")
        run += 1
    return (
        f'<div class="trend" data-series="{name}">\n'
        f'<p class="trend-label"><span>{html.escape(label)}</span> <strong data-now>{html.escape(now_text)}</strong>'
        f' <span class="muted">peak {html.escape(shown(peak))}</span>{extra}</p>\n'
        f'<svg class="spark" viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" role="img" '
        f'aria-label="{html.escape(words, quote=True)}">'
        f"{_mark_shapes(marks, start, end)}"
        f'<path class="area" d="{"".join(area)}"/>'
        f'<path class="stroke" d="{"".join(path)}" vector-effect="non-scaling-stroke"/>'
        "</svg>\n"
        "</div>\n"
    )


def _mark_shapes(marks: Sequence[Mapping[str, Any]], start: datetime, end: datetime) -> str:
    span = (end - start).total_seconds() or 1.0

    def x(moment: datetime) -> float:
        return max(0.0, min(WIDTH, WIDTH * (moment - start).total_seconds() / span))

    shapes = []
    for mark in marks:
        at = _moment(mark.get("at"))
        if at is None:
            continue
        if mark.get("kind") == "pause":
            until = _moment(mark.get("until")) or at
            shapes.append(
                f'<rect class="mark pause" data-mark="pause" x="{x(at):.1f}" y="0" '
                f'width="{max(x(until) - x(at), 1.0):.1f}" height="{HEIGHT}"/>'
            )
        else:
            state = str(mark.get("state", ""))
            tone = _STATE_CLASSES.get(state, "unknown")
            shapes.append(
                f'<line class="mark {tone}" data-mark="{html.escape(state, quote=True)}" x1="{x(at):.1f}" '
                f'x2="{x(at):.1f}" y1="0" y2="{HEIGHT}" vector-effect="non-scaling-stroke"/>'
            )
    return "".join(shapes)


def failing_since(calls: Sequence[int], errors: Sequence[int], start: datetime, interval: float) -> datetime | None:
    """When a failing service began failing, as far as its history shows: the start of the first bucket of the run
    of buckets, up to now, whose calls failed at the failing rate (buckets without calls do not end the run);
    ``None`` when the last bucket with calls did not fail. The status is judged on the last minute; this is when the
    failure began."""
    first = None
    for index in range(len(calls) - 1, -1, -1):
        if not calls[index]:
            continue
        if errors[index] < health.FAILING_ERROR_RATE * calls[index]:
            break
        first = index
    return start + timedelta(seconds=interval * first) if first is not None else None


def breaker_since(
    transitions: Sequence[tuple[Any, datetime | None]], state: str, start: datetime
) -> tuple[datetime, bool] | None:
    """Since when the breaker is in ``state``: its last transition in the window (``(at, True)``), or without any,
    the window's start "or before" (``(start, False)``); ``None`` when the last transition went elsewhere (a report
    read between a transition and its mark). ``transitions`` are the window's ``(state, at)``, oldest first."""
    if not transitions:
        return start, False
    last, at = transitions[-1]
    return (at, True) if last == state and at is not None else None


def _failing_since(values: Mapping[str, list[Any]], status: Any, start: datetime, interval: float) -> str:
    since = failing_since(values["calls"], values["errors"], start, interval) if status == "failing" else None
    return f'<p class="since">Failing since {_clock(since)}</p>\n' if since is not None else ""


def _since(marks: Sequence[Mapping[str, Any]], state: Any, start: datetime) -> str:
    if not isinstance(state, str):
        return ""
    transitions = [(mark.get("state"), _moment(mark.get("at"))) for mark in marks if mark.get("kind") == "breaker"]
    since = breaker_since(transitions, state, start)
    if since is None:
        return ""
    if since[1]:
        return f'<p class="since">Breaker {html.escape(state)} since {_clock(since[0])}</p>\n'
    whole = f"for all of the window (since {_clock(since[0])} or before)"
    return f'<p class="since">Breaker {html.escape(state)} {whole}</p>\n'


def _mark_list(marks: Sequence[Mapping[str, Any]]) -> str:
    if not marks:
        return '<p class="muted marks-none">No breaker transitions or pauses in the window.</p>\n'
    items = []
    for mark in marks:
        at = _moment(mark.get("at"))
        if at is None:
            continue
        if mark.get("kind") == "pause":
            until = _moment(mark.get("until"))
            text = f"paused until {_clock(until)}" if until else "paused"
        else:
            text = f"breaker {html.escape(str(mark.get('text') or mark.get('state', '')))}"
        items.append(f"<li>{_clock(at)} {text}</li>")
    return f'<ol class="marks">{"".join(items)}</ol>\n'


def _clock(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    return f'<time datetime="{moment.isoformat(timespec="seconds")}">{moment:%H:%M:%S}</time>'


def _duration(seconds: float) -> str:
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: float) -> str:
    return f"{value:g}"
