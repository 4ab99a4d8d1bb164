"""``python3 tests/run.py``: a run that needs a missing system program says what to install and stops at once.

Before, a machine without Chromium ran the suite for minutes and only then reported the browser tests' failures.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import run
from tests.browser.test_status_page import CHROMIUM

ROOT = Path(__file__).resolve().parent.parent
REDIS, BROWSER, TMUX = (program.name for program in run.PROGRAMS)
# How a test module starts a redis-server: the conftest fixtures, the runner itself, the fleet demo, the topologies'
# helpers, or a server of its own.
STARTS_REDIS = re.compile(
    r"\bredis_server\b|\bredis_url\b|\bRedisServer\b|\"--redis\"|\bredis_topologies\b|\"redis-server\""
)
# How a test module draws in tmux: tests/flask/test_watch.py's helper, there or imported.
STARTS_TMUX = re.compile(r"\bTmux\(")


def test_run_checks_the_chromium_the_browser_tests_launch() -> None:
    assert run.CHROMIUM == CHROMIUM


def test_every_module_that_starts_a_redis_server_chromium_or_tmux_is_listed() -> None:
    (redis,) = (program for program in run.PROGRAMS if program.name == REDIS)
    modules = sorted(path for path in (ROOT / "tests").rglob("test_*.py") if path != Path(__file__))
    starting = {path.relative_to(ROOT).as_posix() for path in modules if STARTS_REDIS.search(path.read_text("utf-8"))}
    assert starting == set(redis.needed_by)
    outside = [path for path in modules if "CHROMIUM" in path.read_text("utf-8") and "browser" not in path.parts]
    assert outside == [], "a browser test outside tests/browser: add its path to Chromium's needed_by in run.py"
    (tmux,) = (program for program in run.PROGRAMS if program.name == TMUX)
    drawing = {path.relative_to(ROOT).as_posix() for path in modules if STARTS_TMUX.search(path.read_text("utf-8"))}
    assert drawing == set(tmux.needed_by)


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        ([], [REDIS, BROWSER, TMUX]),  # the whole suite
        (["-q", "-rfE"], [REDIS, BROWSER, TMUX]),  # .ci/run's: still the whole suite
        (
            ["-k", "breaker"],
            [REDIS, BROWSER, TMUX],
        ),  # -k / -m are not looked at: the whole suite, as far as run.py knows
        (["-m", "not e2e"], [REDIS, BROWSER, TMUX]),
        (["tests"], [REDIS, BROWSER, TMUX]),
        (["."], [REDIS, BROWSER, TMUX]),
        (["tests/core/test_config.py"], []),
        (["tests/core/test_config.py::test_defaults", "-x"], []),
        (["tests/core"], [REDIS]),
        (["tests/core/test_fleet.py::test_anything"], [REDIS]),
        (["tests/browser"], [BROWSER]),
        (["tests/flask"], [REDIS, TMUX]),
        (["tests/browser/test_status_page.py", "tests/flask/test_cli.py"], [REDIS, BROWSER]),
        (["--co", "-q"], []),  # collecting runs no test (the preamble's set-up command)
        (["--help"], []),
    ],
)
def test_which_runs_need_which_program(args: list[str], wanted: list[str]) -> None:
    assert [program.name for program in run.needed(args)] == wanted


def test_a_missing_chromium_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(run, "CHROMIUM", tmp_path / "chromium")
    message = run.missing_message(["tests/browser"])
    assert message is not None
    assert "apt-get install -y chromium\n" in message
    assert "redis-server" not in message
    assert run.missing_message(["tests/core/test_config.py"]) is None


def test_all_missing_make_one_install_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(run, "CHROMIUM", tmp_path / "chromium")
    monkeypatch.setenv("PATH", str(tmp_path))
    message = run.missing_message([])
    assert message is not None
    assert "apt-get install -y chromium redis-server tmux\n" in message


def test_a_run_needing_a_missing_redis_server_stops_before_pytest(tmp_path: Path) -> None:
    # An empty PATH: no redis-server. The script runs under this interpreter, so it needs nothing from PATH itself.
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "run.py"), "tests/core/test_fleet.py", "-q"],
        cwd=ROOT,
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0
    assert "redis-server: the fleet tests start their own" in result.stderr
    assert "apt-get install -y redis-server\n" in result.stderr
    assert result.stdout == "", "pytest ran"
