"""Run the whole test suite from a fresh clone: ``python3 tests/run.py [pytest args]``.

First checks that the system programs the selected tests start are installed (``redis-server``, Chromium) and, if
one is missing, says what to install and exits at once, before the virtualenv is built or a test runs. Then creates
``.venv`` beside the project on first use, installs the project with its ``[dev]`` extra (again only when
``pyproject.toml`` changes), and runs pytest in it. ``.ci/run`` calls exactly this command.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")  # the binary tests/browser/test_status_page.py launches (tests/test_run.py)
# pytest options with which no test runs: such a run needs no program.
NO_TESTS_RUN = frozenset(
    ["--co", "--collect-only", "-h", "--help", "--version", "-V", "--fixtures", "--fixtures-per-test", "--markers"]
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Program:
    """A system program some tests start, and the test paths (files or folders, from the root) that start it."""

    name: str
    why: str
    install: str  # the Debian package
    installed: Callable[[], bool]
    needed_by: tuple[str, ...]


PROGRAMS = (
    Program(
        name="redis-server",
        why="the fleet tests start their own, on free ports",
        install="redis-server",
        installed=lambda: shutil.which("redis-server") is not None,
        needed_by=(
            "tests/core/test_adaptive.py",
            "tests/core/test_cache.py",
            "tests/core/test_chaos_fleet.py",
            "tests/core/test_cli.py",
            "tests/core/test_endpoints.py",
            "tests/core/test_fleet.py",
            "tests/core/test_fleet_hostile.py",
            "tests/core/test_fleet_ratelimit.py",
            "tests/core/test_fleet_scale.py",
            "tests/core/test_fleet_tls.py",
            "tests/core/test_fleet_topologies.py",
            "tests/core/test_history_fleet.py",
            "tests/core/test_policy_live.py",
            "tests/django/test_command.py",
            "tests/example/test_scenario.py",
            "tests/flask/test_cli.py",
            "tests/test_fleet_e2e.py",
        ),
    ),
    Program(
        name=f"Chromium ({CHROMIUM})",
        why="the status page tests drive it through Playwright",
        install="chromium",
        installed=lambda: CHROMIUM.exists(),
        needed_by=("tests/browser",),
    ),
    Program(
        name="tmux",
        why="the terminal view's tests (status --watch) draw it in a real terminal",
        install="tmux",
        installed=lambda: shutil.which("tmux") is not None,
        needed_by=("tests/django/test_watch.py", "tests/flask/test_watch.py"),
    ),
)


def selected_paths(args: list[str]) -> list[Path] | None:
    """The test paths among pytest's arguments (resolved from the root, where pytest runs), ``[]`` for the whole
    suite, or ``None`` when the arguments run no test at all (``--co``, ``--help``...)."""
    if NO_TESTS_RUN & set(args):
        return None
    paths = []
    for arg in args:
        # An argument is a path when it names one (a node id's ``::`` part aside); anything else is an option or an
        # option's value (``-k breaker``, ``-m "not e2e"``).
        path = ROOT / arg.split("::", 1)[0]
        if not arg.startswith("-") and path.exists():
            paths.append(path.resolve())
    return paths


def needed(args: list[str]) -> list[Program]:
    """The programs a run with these pytest arguments needs: every one for the whole suite, none for a run that runs
    no test, else those that a selected path starts (the path is, is inside, or holds one of ``needed_by``).

    ``-k`` and ``-m`` are not looked at: a run that deselects every test needing a program still asks for it.
    """
    paths = selected_paths(args)
    if paths is None:
        return []
    if not paths:
        return list(PROGRAMS)

    def starts(program: Program, path: Path) -> bool:
        users = [(ROOT / user).resolve() for user in program.needed_by]
        return any(path == user or path in user.parents or user in path.parents for user in users)

    return [program for program in PROGRAMS if any(starts(program, path) for path in paths)]


def missing_message(args: list[str]) -> str | None:
    """What to install before this run can pass, or ``None`` when nothing it needs is missing."""
    missing = [program for program in needed(args) if not program.installed()]
    if not missing:
        return None
    lines = [f"  {program.name}: {program.why}" for program in missing]
    packages = " ".join(sorted(program.install for program in missing))
    return "\n".join(
        [
            "tests/run.py: the selected tests start programs that are not installed:",
            *lines,
            f"Install (as root, on Debian or Ubuntu): apt-get install -y {packages}",
            "or select tests that start none of them (docs/development.md lists which tests do).",
        ]
    )


def main() -> None:
    message = missing_message(sys.argv[1:])
    if message is not None:
        sys.exit(message)
    # This folder is first on sys.path when run as a script; the project root replaces it (see example_project/run.py).
    sys.path[0] = str(ROOT)
    from example_project.bootstrap import ensure_venv

    python = ensure_venv()
    os.chdir(ROOT)
    os.execv(python, [python, "-m", "pytest", *sys.argv[1:]])  # noqa: S606 (replace this process: pytest's exit code is ours)


if __name__ == "__main__":
    main()
