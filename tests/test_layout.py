"""The project's layout cannot shadow the standard library for its own scripts.

``python3 dir/script.py`` puts ``dir/`` first on ``sys.path``: a module there named like a standard library module
(``venv.py``, ``logging.py``, ``http/``) would be imported instead of it by the script and everything the script
imports. The README's two commands and the benchmarks are such scripts; each replaces its folder on ``sys.path`` with
the project root, and no folder they run from (nor the root) holds a standard-library name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("example_project/run.py", "tests/run.py", "benchmarks/run.py")


def _module_names(folder: Path) -> set[str]:
    names = set()
    for entry in folder.iterdir():
        if entry.suffix == ".py":
            names.add(entry.stem)
        elif entry.is_dir() and (entry / "__init__.py").exists():
            names.add(entry.name)
    return names


@pytest.mark.parametrize("folder", ["", *sorted({str(Path(script).parent) for script in SCRIPTS})])
def test_no_module_on_a_script_path_is_named_like_a_standard_library_module(folder: str) -> None:
    clashes = _module_names(ROOT / folder) & set(sys.stdlib_module_names)
    assert not clashes, f"{folder or 'the project root'} holds {sorted(clashes)}: rename them"


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_replaces_its_own_folder_on_sys_path(script: str) -> None:
    # --help exits before any work, but after the module-level imports that a shadowing module would break.
    result = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
