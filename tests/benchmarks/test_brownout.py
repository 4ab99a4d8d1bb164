"""Row 9 (an app whose upstream browns out): its quick run under real servers, its table, and the README's copy.

The quick run starts gunicorn and uvicorn (``e2e``); the other tests are pure and take milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import _brownout
from benchmarks._brownout import (
    MARKER_END,
    MARKER_START,
    VARIANTS,
    Cell,
    RouteFigures,
    extract_block,
    pooled,
    render_table,
    update_readme,
)
from benchmarks._brownout_load import Sample, percentile, summarise
from benchmarks._harness import Row
from benchmarks._scenarios import QUICK, ROW_KEYS
from tests.benchmarks.test_smoke import COMMITTED_RESULTS, ROOT, run_benchmarks

README = ROOT / "README.md"
QUICK_RUN_TIMEOUT = 240.0  # the quick row takes under a minute on two cores; a loaded CI machine gets slack


def mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


@pytest.mark.e2e
def test_quick_run_measures_every_variant_under_real_servers(tmp_path: Path) -> None:
    before = {path: mtime(path) for path in (README, COMMITTED_RESULTS)}
    results = tmp_path / "results.md"

    done = run_benchmarks(
        "--quick", "--only", str(_brownout.MEASUREMENT), "--results", str(results), timeout=QUICK_RUN_TIMEOUT
    )

    assert done.returncode == 0, done.stderr[-3000:]
    report = results.read_text()
    for key in ROW_KEYS[_brownout.MEASUREMENT]:
        assert f"| {key} |" in report, f"row {key} missing from the report"
        assert any(line.startswith(f"{key} ") for line in done.stdout.splitlines()), f"row {key} not printed"
    table = extract_block(report)
    assert table is not None, "the report has no brownout table between the markers"
    assert table in done.stdout, "the printed table differs from the report's"
    for variant in VARIANTS:
        assert f"| {variant.label} |" in table
    # A quick or partial run never touches the committed results nor the README's copy of their table.
    assert {path: mtime(path) for path in before} == before


def test_readme_shows_the_table_of_the_committed_results() -> None:
    readme = extract_block(README.read_text())
    assert readme is not None, f"README.md has no {MARKER_START} ... {MARKER_END} block"
    committed = extract_block(COMMITTED_RESULTS.read_text())
    assert committed, "benchmarks/RESULTS.md has no brownout table: run python3 benchmarks/run.py"
    assert readme == committed, "README.md's brownout table differs from RESULTS.md's: run python3 benchmarks/run.py"


def test_the_readme_block_is_replaced_between_the_markers_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Why\n\nbefore\n{MARKER_START}\n| old |\n{MARKER_END}\nafter\n")

    assert update_readme("| new |", readme)

    assert readme.read_text() == f"# Why\n\nbefore\n{MARKER_START}\n| new |\n{MARKER_END}\nafter\n"
    assert extract_block(readme.read_text()) == "| new |"


@pytest.mark.parametrize(
    "text",
    ["# Why\n\nno markers\n", f"only the start {MARKER_START}\n", f"{MARKER_END}\nout of order\n{MARKER_START}\n"],
)
def test_a_readme_without_both_markers_in_order_is_left_untouched(tmp_path: Path, text: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(text)
    written = mtime(readme)

    assert not update_readme("| new |", readme)

    assert readme.read_text() == text
    assert mtime(readme) == written
    assert extract_block(text) is None


def figures(per_second: float, p50: float | None, p99: float | None) -> RouteFigures:
    return RouteFigures(
        per_second=per_second, all_per_second=per_second, p50_ms=p50, p99_ms=p99, count=10, statuses={"200": 10}
    )


def test_the_table_has_a_line_per_variant_and_a_column_per_scenario() -> None:
    def cell(per_second: float, p50: float | None, p99: float | None) -> Cell:
        local = figures(per_second, p50, p99)
        return Cell(local=local, upstream=local, ramp=local)

    cells = {"healthy": cell(1234.4, 5.04, 40.2), "brownout": cell(15.2, 18.0, 530.0), "outage": cell(0.0, None, None)}
    rows = [
        Row("9a", "brownout", "x", [0.01], extra={"brownout": ("Flask, plain", cells, None)}),
        Row("9b", "outage", "x", [0.0]),  # the second row of a variant carries no table data
        Row("9c", "brownout", "x", [1.0], extra={"brownout": ("Flask, outbound", cells, [0.9, 1.02, 0.97])}),
    ]

    table = render_table(rows, QUICK)

    assert table is not None
    lines = table.splitlines()
    assert lines[0] == (
        "| app and its client | upstream healthy | brownout: upstream answers after 2 s | "
        "outage: upstream refuses connections |"
    )
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == (
        "| Flask, plain | 1,234 req/s, p50 5.0 ms, p99 40 ms | 15 req/s, p50 18 ms, p99 530 ms | "
        "0 req/s, p50 -, p99 - |"
    )
    # A variant measured alternated with the plain Session shows its ratio to it, with the rounds' spread.
    assert lines[3].startswith(
        "| Flask, outbound | 1,234 req/s, p50 5.0 ms, p99 40 ms "
        "(0.97x [0.90-1.02] of the plain Session's, alternated) |"
    )
    assert len([line for line in lines if line.startswith("| ")]) == 3  # the header and the two variants
    assert render_table([Row("1a", "other", "x", [1.0])], QUICK) is None


def test_windows_pool_into_one_cell_by_requests_and_time() -> None:
    def window(ok: float, every: float, count: int, p50: float) -> Cell:
        route = RouteFigures(
            per_second=ok, all_per_second=every, p50_ms=p50, p99_ms=p50 * 4, count=count, statuses={"200": count}
        )
        return Cell(local=route, upstream=route, ramp=route)

    # 100 requests in 1 s, then 300 in 2 s: 400 in 3 s, not the mean of 100/s and 150/s.
    cell = pooled([window(100.0, 100.0, 100, 5.0), window(150.0, 150.0, 300, 7.0), window(0.0, 0.0, 0, 9.0)])
    assert cell.local.all_per_second == pytest.approx(400 / 3)
    assert cell.local.per_second == pytest.approx(400 / 3)
    assert cell.local.count == 400
    assert cell.local.statuses == {"200": 400}
    assert cell.local.p50_ms == 7.0  # the windows' median


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def test_the_load_summary_counts_the_whole_window_and_shows_its_ramp_apart() -> None:
    opened = 100.0
    samples = [
        Sample(local=True, started=100.1, seconds=0.5, status=200),  # in the ramp: the breaker has not opened
        Sample(local=False, started=100.2, seconds=1.0, status=502),
        Sample(local=True, started=101.5, seconds=0.01, status=200),
        Sample(local=True, started=103.0, seconds=0.02, status=0),  # no answer: counted, not a success
        Sample(local=False, started=103.9, seconds=0.1, status=503),  # in flight at the end: finishes, counts
    ]

    summary = summarise(samples, opened, ramp=1.0)

    assert summary["seconds"] == pytest.approx(4.0)
    assert summary["local"]["count"] == 3
    assert summary["local"]["per_second"] == pytest.approx(2 / 4.0)
    assert summary["local"]["statuses"] == {"200": 2, "0": 1}
    assert summary["upstream"]["all_per_second"] == pytest.approx(2 / 4.0)
    assert summary["upstream"]["statuses"] == {"502": 1, "503": 1}
    assert summary["ramp"]["count"] == 1
    assert summary["ramp"]["p50_ms"] == pytest.approx(500.0)
