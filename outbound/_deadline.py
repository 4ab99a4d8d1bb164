"""Deadlines that follow the work of one inbound request: ``outbound.deadline(seconds)`` and the budget headers.

A deadline is an absolute ``time.monotonic()`` instant held in a context variable, so it follows the code that
works for one inbound request: into asyncio tasks (each copies the context when it is created), into threads run
with ``contextvars.copy_context().run`` and into asgiref's ``sync_to_async`` / ``async_to_sync`` bridges (which copy
it too). Every outbound call made inside a scope gets at most the time left of it.

The inbound budget is read from one of three headers, and a service can send what is left upstream in one of them
(``deadline_header``), so a chain of services shares one budget:

    grpc-timeout                      1 to 8 digits, then a unit: H M S m u n     "2S", "1500m", "250000u"
    x-request-timeout                 decimal seconds                             "2", "1.5", "0.25"
    x-envoy-expected-rq-timeout-ms    integer milliseconds                        "1500"

Parsing is strict: a header is a client's claim, so anything else (a sign, a space, an exponent, ``inf``, too many
digits) is malformed and ignored rather than guessed at. Formatting rounds down, so the next hop never gets more
time than this one had.
"""

from __future__ import annotations

import math
import numbers
import re
import sys
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import TypeVar

from ._config import DEADLINE_HEADERS, DeadlineConfig
from ._outcome import Reason, Rejection
from ._scope import Scope

GRPC_TIMEOUT, REQUEST_TIMEOUT, ENVOY_TIMEOUT_MS = DEADLINE_HEADERS

_DEADLINE: ContextVar[float | None] = ContextVar("outbound_deadline", default=None)
# Whether any scope was ever entered in this process: until one is, a call need not read the context variable.
_scopes = False

# grpc-timeout (gRPC over HTTP/2, "Timeout"): TimeoutValue is at most 8 ASCII digits. re's [0-9] is ASCII only,
# unlike \d, so the other scripts' digits that int() would accept are malformed too.
_GRPC = re.compile(r"([0-9]{1,8})([HMSmun])")
# The units from the finest to the coarsest, with their length in nanoseconds.
_GRPC_UNITS = (("n", 1), ("u", 10**3), ("m", 10**6), ("S", 10**9), ("M", 60 * 10**9), ("H", 3600 * 10**9))
_NANOS = dict(_GRPC_UNITS)
_GRPC_MAX = 99_999_999
# x-request-timeout: a decimal number of seconds, bounded (ten digits of seconds is over 300 years), no sign,
# no exponent, no leading or trailing dot.
_DECIMAL = re.compile(r"[0-9]{1,10}(\.[0-9]{1,9})?")
_DECIMAL_MAX_MS = 10**13 - 1  # 9999999999.999 s, the largest value the format above writes with milliseconds
_MILLIS = re.compile(r"[0-9]{1,10}")
_MILLIS_MAX = 10**10 - 1

HeaderSource = Mapping[str, str] | Callable[[str], "str | None"]


class deadline(Scope):  # lower case: used like a function, `with outbound.deadline(2):`, as contextlib.suppress is
    """A scope whose outbound calls must all end within ``seconds`` of entering it.

    Use it as ``with outbound.deadline(2):`` or ``async with outbound.deadline(2):``. Inside, each call through a
    managed client gets at most the time left (the shorter of that and the service's ``timeout.total``), and a call
    that would start with less than ``deadline.min_time`` left fails at once with ``DeadlineExceededError``,
    without sending anything.

    The clock starts when the scope is entered. Scopes nest: an inner scope can shorten the deadline, never extend
    it; leaving it brings back the outer one. The deadline is a context variable, so it holds in asyncio tasks
    created inside the scope and in threads run with ``contextvars.copy_context().run`` (asgiref's bridges do that),
    but not in threads started plainly. One object may be entered again after it is left (the clock restarts); do
    not share one between threads at the same time.

    Args:
        seconds: the budget, a finite number >= 0 (0: no time at all, every call fails fast).

    Raises:
        ValueError: ``seconds`` is not a number, negative, infinite or NaN.
    """

    __slots__ = ("seconds",)
    _var = _DEADLINE

    def __init__(self, seconds: float) -> None:
        self.seconds = _checked_seconds(seconds)
        super().__init__()

    def _entered(self) -> float:
        global _scopes
        _scopes = True
        ends = time.monotonic() + self.seconds
        outer = _DEADLINE.get()
        return ends if outer is None else min(outer, ends)

    def __repr__(self) -> str:
        return f"outbound.deadline({self.seconds!r})"


def _checked_seconds(seconds: object) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
        raise ValueError(f"a deadline must be a number of seconds, got {type(seconds).__name__}")
    try:
        value = float(seconds)
    except OverflowError:  # an int or Fraction beyond the float range
        value = math.inf
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a deadline must be a finite number of seconds >= 0, got {value!r}")
    return value


class Deadline:
    """When a call must end, on both clocks: ``at`` on the policy's ``clock`` (a test's fake clock, or
    ``time.monotonic``) and ``real_at`` on ``time.monotonic`` (what sockets, the watchdog and event-loop timers run
    on); ``scoped`` when an ``outbound.deadline`` scope set it rather than ``timeout.total``. Made once per call, so
    no backend converts between the two."""

    __slots__ = ("at", "clock", "real_at", "scoped")

    def __init__(self, at: float, real_at: float, scoped: bool, clock: Callable[[], float]) -> None:
        self.at = at
        self.real_at = real_at
        self.scoped = scoped
        self.clock = clock

    def left(self) -> float:
        """Seconds left (negative once past it)."""
        return self.at - self.clock()

    def passed(self) -> bool:
        """Whether it has struck (a millisecond early counts: a read cut to it ends right at it)."""
        return self.clock() >= self.at - 0.001

    def refusal(self, min_time: float) -> Rejection | None:
        """The refusal of an attempt that would start with less than ``min_time`` left (``deadline.min_time``)."""
        left = self.at - self.clock()
        if left >= min_time:
            return None
        detail = f"{max(0.0, left) * 1000:.1f} ms left of the deadline, less than deadline.min_time ({min_time:g}s)"
        return Rejection(Reason.DEADLINE_EXCEEDED, 0.0, detail)

    def cut(
        self, connect: float | None, read: float | None, write: float | None, pool: float | None
    ) -> tuple[float | None, float | None, float | None, float | None, float]:
        """Each phase's timeout cut to what is left (``None``, no limit, becomes what is left), and what is left."""
        left = max(0.001, self.at - self.clock())
        # Spelled out rather than a generator over the four: this runs on every attempt.
        return (
            left if connect is None else min(connect, left),
            left if read is None else min(read, left),
            left if write is None else min(write, left),
            left if pool is None else min(pool, left),
            left,
        )


def call_deadline(
    clock: Callable[[], float],
    now: float,
    total: float | None,
    real_clock: bool,
    asked: tuple[float | None, ...] = (),
) -> Deadline | None:
    """The deadline of a call that starts at ``now`` on ``clock`` (``real_clock``: that clock is
    ``time.monotonic``) with ``total`` seconds (``None``: none), cut shorter by the current scope, if any.

    ``asked`` are the per-phase timeouts the caller set for this one call: one longer than ``total`` makes the
    deadline that long, and one without a limit (httpx's ``timeout=None``) means no deadline for that call.
    """
    if asked and total is not None:
        for phase in asked:
            if phase is None:
                total = None
                break
            total = max(total, phase)
    real_now = now if real_clock else time.monotonic()
    if _scopes:
        ends = _DEADLINE.get()
        if ends is not None and (total is None or ends < real_now + total):
            return Deadline(now + (ends - real_now), ends, True, clock)
    if total is None:
        return None
    return Deadline(now + total, real_now + total, False, clock)


def current_deadline() -> float | None:
    """The ``time.monotonic()`` instant by which the calls of the current scope must end; ``None`` outside any."""
    return _DEADLINE.get()


def time_left() -> float | None:
    """Seconds left before the current ``outbound.deadline`` scope's deadline (negative once it passed); ``None``
    outside any scope.

    Use it to bound other work by the same budget: a database statement timeout, a queue wait.
    """
    ends = _DEADLINE.get()
    return None if ends is None else ends - time.monotonic()


def parse_budget(name: str, value: str) -> float | None:
    """The seconds one budget header's value asks for, or ``None`` when the value is malformed.

    ``grpc-timeout``: 1 to 8 ASCII digits and one unit (``H`` hours, ``M`` minutes, ``S`` seconds, ``m``
    milliseconds, ``u`` microseconds, ``n`` nanoseconds), nothing else. ``x-request-timeout``: seconds as 1 to 10
    digits with an optional fraction of 1 to 9 digits (``"2"``, ``"0.5"``). ``x-envoy-expected-rq-timeout-ms``: 1 to
    10 digits of milliseconds. No sign, spaces, exponent, ``inf`` or ``nan``. Zero is valid: no time at all.

    Args:
        name: one of ``DEADLINE_HEADERS``, in any case.
        value: the header's value as received.

    Raises:
        ValueError: ``name`` is not a budget header.
    """
    kind = _kind(name)
    if not isinstance(value, str):
        return None
    if kind == GRPC_TIMEOUT:
        match = _GRPC.fullmatch(value)
        if match is None:
            return None
        # Exact integers and one correctly rounded division: never more than the header said.
        return int(match[1]) * _NANOS[match[2]] / 10**9
    if kind == REQUEST_TIMEOUT:
        return float(value) if _DECIMAL.fullmatch(value) else None
    return int(value) / 1000 if _MILLIS.fullmatch(value) else None


def format_budget(name: str, seconds: float) -> str:
    """The value of header ``name`` that gives the next hop ``seconds``, rounded down and never negative.

    ``grpc-timeout``: the finest unit whose value fits in 8 digits, then written in the coarsest unit that holds
    it exactly (1.5 s is ``"1500m"``, 2 s ``"2S"``, 0.25 ms ``"250u"``). ``x-request-timeout``: seconds with
    millisecond precision (``"1.5"``, ``"0.001"``). ``x-envoy-expected-rq-timeout-ms``: whole milliseconds. No time
    left (zero, negative or NaN) gives zero (``"0n"``, ``"0"``); more than the format can say gives its largest
    value. ``parse_budget`` reads every value this writes.

    Raises:
        ValueError: ``name`` is not a budget header.
    """
    kind = _kind(name)
    # NaN compares false: no time left. Infinity becomes the largest float, which every format caps.
    seconds = min(float(seconds), sys.float_info.max) if seconds > 0 else 0.0
    if kind == GRPC_TIMEOUT:
        return _format_grpc(seconds)
    millis = min(_floor(seconds, 1000, 1), _DECIMAL_MAX_MS if kind == REQUEST_TIMEOUT else _MILLIS_MAX)
    if kind == ENVOY_TIMEOUT_MS:
        return str(millis)
    whole, fraction = divmod(millis, 1000)
    return f"{whole}.{fraction:03d}".rstrip("0") if fraction else str(whole)


def _format_grpc(seconds: float) -> str:
    # The finest unit whose value fits in 8 digits keeps the most precision ...
    units = iter(_GRPC_UNITS)
    fitting = next((unit for unit in units if _floor(seconds, 10**9, unit[1]) <= _GRPC_MAX), None)
    if fitting is None:  # more than 99999999 hours
        return f"{_GRPC_MAX}H"
    unit, nanos = fitting
    value = _floor(seconds, 10**9, nanos)
    if value == 0:
        return "0n"  # as grpc-go writes it
    # ... and the coarsest unit that holds that value exactly writes it shortest.
    for coarser, coarser_nanos in units:
        step = coarser_nanos // nanos  # neighbouring units differ by a whole factor (1000 or 60)
        if value % step:
            break
        value, unit, nanos = value // step, coarser, coarser_nanos
    return f"{value}{unit}"


def _floor(seconds: float, numerator: int, denominator: int) -> int:
    """``floor(seconds * numerator / denominator)``, exactly: a float product could round up past the budget."""
    top, bottom = seconds.as_integer_ratio()
    return (top * numerator) // (bottom * denominator)


def _kind(name: str) -> str:
    kind = name.lower() if isinstance(name, str) else name
    if kind not in DEADLINE_HEADERS:
        raise ValueError(f"{name!r} is not a deadline header; use one of {', '.join(DEADLINE_HEADERS)}")
    return kind


def budget_from(
    headers: HeaderSource, config: DeadlineConfig, *, default: float | Callable[[], float | None] | None = None
) -> tuple[float | None, str | None]:
    """The budget an inbound request asks for, in seconds, and the name of a malformed budget header it sent.

    The first of ``config.headers`` that is present and well formed wins, cut to ``config.max`` (a client cannot
    ask for more); a malformed one is skipped, never guessed at. Without one, the budget is ``default`` (a view's
    own), else ``config.default``, else ``None``: no deadline.

    Args:
        headers: the request's headers, looked up by lower-case name: a case-insensitive mapping (Django's
            ``request.headers``) or a function (Werkzeug's ``request.headers.get``).
        config: the settings' ``deadline`` section (``registry.config.deadline``).
        default: the budget when the request sends none, in place of ``config.default``; or a function returning
            it (or ``None``), called only then, for a default that costs something to find (resolving the view).

    Returns:
        ``(seconds or None, the first malformed header's name or None)``; log the name, never the value.
    """
    get = headers if callable(headers) else headers.get
    malformed: str | None = None
    for name in config.headers:
        value = get(name)
        if value is None:
            continue
        seconds = parse_budget(name, value)
        if seconds is None:
            malformed = malformed or name
            continue
        return min(seconds, config.max), malformed
    if callable(default):
        default = default()
    return (config.default if default is None else default), malformed


# A view's own default budget (the adapters' @default_deadline), as an attribute of the view function or class.
VIEW_ATTRIBUTE = "outbound_default_deadline"

V = TypeVar("V")


def mark_view_default(seconds: float) -> Callable[[V], V]:
    """The decorator behind both adapters' ``@default_deadline(seconds)``: the view, unchanged, with the default.

    Raises:
        ValueError: ``seconds`` is not a finite number > 0.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (0 < seconds < math.inf):
        raise ValueError(f"a view's default deadline must be a finite number of seconds > 0, got {seconds!r}")

    def decorate(view: V) -> V:
        setattr(view, VIEW_ATTRIBUTE, float(seconds))
        return view

    return decorate


def view_default(view: object) -> float | None:
    """The default budget ``@default_deadline`` gave ``view`` (a view function, or ``as_view()``'s function of a
    class-based view, which carries the class), or ``None``."""
    seconds = getattr(view, VIEW_ATTRIBUTE, None)
    if seconds is None:
        seconds = getattr(getattr(view, "view_class", None), VIEW_ATTRIBUTE, None)
    return seconds if isinstance(seconds, float) else None
