"""Row 18 (issue 23): what importing outbound costs a process, against importing requests.

Each figure is a fresh interpreter (``python -c "import X"``) with bytecode caches written and warm (one untimed run
of each first, ``PYTHONDONTWRITEBYTECODE`` removed from its environment), minus a fresh interpreter that imports
nothing: the import alone, as a ``manage.py`` command or a test run pays it. The variants alternate run by run
(requests, outbound, outbound_django, outbound_flask, nothing; again), and each round's ratio compares runs made side
by side. Target: ``import outbound`` and ``import outbound_django`` at most 1.5x ``import requests``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from benchmarks._harness import ROOT, Row, Target

if TYPE_CHECKING:
    from benchmarks._harness import UpstreamProcess
    from benchmarks._scenarios import Settings

MEASUREMENT = 18
ROW_KEYS = ("18a", "18b", "18c")
MODULES = ("requests", "outbound", "outbound_django", "outbound_flask")
RUNS_PER_ROUND = 3  # of each variant, alternated; a round keeps each variant's fastest (the least disturbed)
AT_MOST_1_5 = Target("<=", 1.5, "<= 1.5")


def imports(up: UpstreamProcess, s: Settings) -> list[Row]:
    del up
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    for module in (*MODULES, None):
        _run(module, env)  # write and warm the bytecode caches
    seconds: dict[str | None, list[float]] = {module: [] for module in (*MODULES, None)}
    for _ in range(s.rounds):
        runs: dict[str | None, list[float]] = {module: [] for module in seconds}
        for _ in range(RUNS_PER_ROUND):
            for module in seconds:
                runs[module].append(_run(module, env))
        for module, times in runs.items():
            seconds[module].append(min(times))
    alone = {
        module: [took - empty for took, empty in zip(seconds[module], seconds[None], strict=True)] for module in MODULES
    }

    def ratio(module: str) -> list[float]:
        return [mine / theirs for mine, theirs in zip(alone[module], alone["requests"], strict=True)]

    detail = ", ".join(f"import {module} {statistics.median(alone[module]) * 1e3:.0f} ms" for module in MODULES)
    detail += f" (an interpreter that imports nothing: {statistics.median(seconds[None]) * 1e3:.0f} ms, subtracted)"
    return [
        Row(
            "18a", "import outbound / import requests, fresh interpreters", "x", ratio("outbound"), AT_MOST_1_5, detail
        ),
        Row(
            "18b",
            "import outbound_django / import requests, fresh interpreters",
            "x",
            ratio("outbound_django"),
            AT_MOST_1_5,
            detail,
        ),
        Row(
            "18c",
            "import outbound_flask / import requests, fresh interpreters",
            "x",
            ratio("outbound_flask"),
            None,
            detail,
        ),
    ]


def _run(module: str | None, env: dict[str, str]) -> float:
    code = f"import {module}" if module else "pass"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=60)
    return time.perf_counter() - started
