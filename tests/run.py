"""Run the whole test suite from a fresh clone: ``python3 tests/run.py [pytest args]``.

Creates ``.venv`` beside the project on first use, installs the project with its ``[dev]`` extra (again only when
``pyproject.toml`` changes), then runs pytest in it. ``.ci/run`` calls exactly this command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# This folder would be first on sys.path when run as a script; the project root replaces it
# (see example_project/run.py).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from example_project.bootstrap import ROOT, ensure_venv  # noqa: E402 (the path must be set first)

if __name__ == "__main__":
    python = ensure_venv()
    os.chdir(ROOT)
    os.execv(python, [python, "-m", "pytest", *sys.argv[1:]])  # noqa: S606 (replace this process: pytest's exit code is ours)
