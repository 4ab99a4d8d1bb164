"""Strict readers of untrusted JSON-ish values: what a record read from outside (a fleet's Redis, a server's health
report) may hold, bounded. Each returns a typed value or raises ``Invalid`` (or ``ValueError``, ``TypeError``...:
``INVALID`` lists them) for the caller to skip the record; none trusts its input."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, NoReturn

from .health import LastError

MAX_COUNT = 2**53 - 1
"""The largest counter a record may hold: JSON's exact integers, so a sum over a fleet still prints exactly."""
MAX_SECONDS = 366 * 86_400.0
"""The longest time (a year) a record may ask for; a breaker caps an opening further, a pause by its own cap."""
MAX_TEXT = 1_000
"""Characters kept of a reason or an error message read from outside."""
MAX_NAME = 200
"""Characters allowed in a worker id, an error class name, a rejection reason."""
MAX_RECORD_BYTES = 1_000_000
"""A message or record longer than this is skipped unread."""
MAX_REASONS = 32
"""Rejection reasons kept per stats record."""
LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: later is not a time a process wrote


class Invalid(Exception):
    """A value that is not what its reader expects."""


def bad(problem: str) -> NoReturn:
    raise Invalid(problem)


# -- scalars ----------------------------------------------------------------------------------------------------------


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """A text (bytes or str), cut to ``limit`` characters; anything else is a bad record."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        bad(f"expected a text, got {type(value).__name__}")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def whole(value: Any, low: int = 0, high: int = MAX_COUNT) -> int:
    """A whole number from JSON (an int, never a float, a boolean or a text), within ``low`` and ``high``."""
    if not isinstance(value, int) or isinstance(value, bool):
        bad(f"expected a whole number, got {type(value).__name__}")
    if not low <= value <= high:
        bad(f"{value} is out of range ({low} to {high})")
    return value


def digits(value: Any, low: int = 0, high: int = MAX_COUNT) -> int:
    """A whole number given as its decimal digits (what Redis returns, a JSON object's key) or as an integer."""
    if isinstance(value, bytes | str):
        raw = value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
        if not re.fullmatch(r"-?\d{1,19}", raw):
            bad(f"expected a whole number, got {raw[:40]!r}")
        value = int(raw)
    return whole(value, low, high)


def seconds(value: Any, high: float = MAX_SECONDS) -> float:
    """A finite number of seconds from JSON, from 0 to ``high``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        bad(f"expected seconds, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or not 0 <= number <= high:
        bad(f"{number} seconds is out of range (0 to {high:g})")
    return number


def moment(value: Any) -> datetime:
    """An ISO 8601 time with its UTC offset (as ``LastError.as_dict`` writes it), in UTC."""
    if not isinstance(value, str) or len(value) > 40:
        bad("expected an ISO 8601 time")
    at = datetime.fromisoformat(value)  # ValueError: a bad record
    if at.tzinfo is None:
        bad(f"{value!r} has no UTC offset")
    return at.astimezone(timezone.utc)


def error(value: Any) -> LastError:
    """A ``LastError.as_dict()`` read back."""
    if not isinstance(value, Mapping):
        bad("an error is not a JSON object")
    kind = text(value.get("type"), MAX_NAME)
    if not kind:
        bad("an error without a type")
    return LastError(type=kind, message=text(value.get("message")), at=moment(value.get("at")))


def json_value(raw: Any) -> Any:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="replace")
    if not isinstance(raw, bytes):
        bad(f"expected JSON, got {type(raw).__name__}")
    if len(raw) > MAX_RECORD_BYTES:
        bad(f"{len(raw)} bytes, more than {MAX_RECORD_BYTES}")
    return json.loads(raw)  # ValueError (and RecursionError for absurd nesting): a bad record


# Everything a reader may meet in a bad record; anything else would be a bug, and is left to surface.
INVALID = (Invalid, ValueError, TypeError, OverflowError, RecursionError)
