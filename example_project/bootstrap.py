"""Bootstrap shared by the README's two commands (the demo and the tests): a project virtualenv, made once.

Standard library only, because it runs under whatever ``python3`` a fresh machine has.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".outbound-installed"


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def ensure_venv() -> str:
    """Create ``.venv`` and install the project with ``[dev]``; skip the install when nothing changed."""
    if not _python().exists():
        if importlib.util.find_spec("ensurepip") is None:
            # Debian and Ubuntu ship venv's pip bootstrap separately; say so instead of failing half-way.
            sys.exit("this python3 cannot create virtualenvs with pip: install python3-venv (apt) and run again")
        print(f"creating virtualenv in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text() != wanted:
        print("installing outbound with its [dev] extra into .venv", flush=True)
        pip = [str(_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "--editable", f"{ROOT}[dev]"], check=True)
        STAMP.write_text(wanted)
    return str(_python())
