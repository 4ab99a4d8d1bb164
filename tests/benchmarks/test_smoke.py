"""The benchmark suite runs end to end with tiny counts, so it cannot rot. Speed is not asserted here.

Row 9 starts app servers (gunicorn, uvicorn); its own smoke test is in ``test_brownout.py``, marked ``e2e``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._brownout import MEASUREMENT as BROWNOUT
from benchmarks._scenarios import ROW_KEYS

ROOT = Path(__file__).resolve().parents[2]
COMMITTED_RESULTS = ROOT / "benchmarks" / "RESULTS.md"
IN_PROCESS = [number for number in ROW_KEYS if number != BROWNOUT]  # the rows that start no app server


def run_benchmarks(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # A separate interpreter, as the command runs for real (and so the throwaway clients of row 4's replaced
    # patterns are not judged by this suite's warnings-as-errors). main() is called directly: this interpreter is
    # already the project's, so the script's venv bootstrap has nothing to do.
    code = "import sys; from benchmarks.run import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize("number", IN_PROCESS)
def test_a_quick_run_produces_every_row_and_leaves_the_committed_results_alone(number: int, tmp_path: Path) -> None:
    # One measurement per run, each with its own time limit: every round adds rows, and one run of them all would
    # outgrow any fixed limit on a loaded machine.
    before = COMMITTED_RESULTS.stat().st_mtime_ns if COMMITTED_RESULTS.exists() else None
    results = tmp_path / "results.md"

    done = run_benchmarks("--quick", "--only", str(number), "--results", str(results))

    assert done.returncode == 0, done.stderr[-3000:]
    report = results.read_text()
    table = done.stdout.splitlines()
    for key in ROW_KEYS[number]:
        assert f"| {key} |" in report, f"row {key} of measurement {number} missing from the report"
        assert any(line.startswith(f"{key} ") for line in table), f"row {key} missing from the printed table"
    for header in ("- Python:", "- CPUs:", "- Libraries:", "## Method"):
        assert header in report
    assert (COMMITTED_RESULTS.stat().st_mtime_ns if COMMITTED_RESULTS.exists() else None) == before


def test_only_runs_the_chosen_measurements_and_rejects_unknown_ones(tmp_path: Path) -> None:
    results = tmp_path / "results.md"
    done = run_benchmarks("--quick", "--only", "5", "--results", str(results))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1].strip() for line in results.read_text().splitlines() if line.startswith("| ")]
    assert rows == ["#", "5a", "5b"]

    assert run_benchmarks("--only", str(max(ROW_KEYS) + 1)).returncode == 2
