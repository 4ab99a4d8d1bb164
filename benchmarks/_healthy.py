"""Row 17 (issue 23): a healthy app pays nothing it can see for outbound, every capability of round 3 configured off.

The Flask app of row 9 (``benchmarks/brownout_apps/``) under gunicorn ``-w 2 --threads 4``, its ``/upstream`` route
calling a healthy upstream through a plain ``requests.Session`` or through outbound — whose settings configure every
capability of ``benchmarks/_stages.py``'s ``CASES`` and leave it off. Both servers run at once and the load process
visits each in turn, round after round (``_brownout.measure_healthy``), so each round's ratio compares the same
moments of the machine. The value: ``/upstream`` requests per second, outbound's over the plain Session's, median of
the rounds (target >= 0.97).
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from benchmarks import _brownout
from benchmarks._harness import Row, Target

if TYPE_CHECKING:
    from benchmarks._harness import UpstreamProcess
    from benchmarks._scenarios import Settings

MEASUREMENT = 17
ROW_KEYS = ("17",)
PLAIN, OUTBOUND = (
    next(v for v in _brownout.VARIANTS if v.short == short) for short in ("Flask + plain Session", "Flask + outbound")
)


def healthy(up: UpstreamProcess, s: Settings) -> list[Row]:
    del up  # measure_healthy starts its own upstream, as row 9's cells do
    rounds = _brownout.measure_healthy((PLAIN, OUTBOUND), s)
    plain, managed = rounds[PLAIN.short], rounds[OUTBOUND.short]
    ratios = [
        mine.upstream.per_second / theirs.upstream.per_second for mine, theirs in zip(managed, plain, strict=True)
    ]
    return [
        Row(
            "17",
            "healthy Flask app under gunicorn, /upstream req/s: outbound (round 3's capabilities configured off) / "
            "plain Session, alternated",
            "x",
            ratios,
            Target(">=", 0.97, ">= 0.97"),
            f"/upstream: outbound {statistics.median(c.upstream.per_second for c in managed):,.0f} req/s, plain "
            f"{statistics.median(c.upstream.per_second for c in plain):,.0f} req/s (medians of the rounds); /local: "
            f"{statistics.median(c.local.per_second for c in managed):,.0f} vs "
            f"{statistics.median(c.local.per_second for c in plain):,.0f} req/s",
        )
    ]
