"""The demo: ``python3 example_project/run.py [--framework django|flask] [--serve] [--redis]``.

Creates ``.venv`` and installs the project on first use, starts the upstream simulator and an example app under a
real server (Django under uvicorn, Flask under gunicorn), then drives traffic while the upstream fails and heals,
printing the breaker opening, calls failing fast, ``/health/outbound`` turning 503, the half-open trial and the
breaker closing. It exits 0 when all of that happened, and stops everything it started. ``--serve`` keeps both
running and prints the URLs to open instead. ``--redis`` runs the app as two workers, each a gunicorn on its own
port, sharing their state through a redis-server of the demo's own, and shows the fleet agreeing (it needs the
``redis-server`` binary).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder is first on sys.path, where a module named like one of the standard library's
# (venv.py did once) would shadow it for everything imported later. The project root takes that place instead, so
# the project's modules are reached by package name only (tests/test_layout.py keeps stdlib names out of it too).
sys.path[0] = str(ROOT)

from example_project.bootstrap import VENV, ensure_venv  # noqa: E402 (the path must be set first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=["django", "flask"], default="django")
    parser.add_argument("--serve", action="store_true", help="keep the app and simulator running; print the URLs")
    parser.add_argument("--redis", action="store_true", help="two workers sharing state through Redis (fleet mode)")
    args = parser.parse_args()

    if Path(sys.prefix).resolve() != VENV.resolve():
        python = ensure_venv()
        os.execv(python, [python, __file__, *sys.argv[1:]])  # noqa: S606 (continue as the venv's interpreter)

    from example_project.scenario import run_fleet_scenario, run_scenario, serve

    if args.serve:
        return serve(args.framework, redis=args.redis)
    return run_fleet_scenario(args.framework) if args.redis else run_scenario(args.framework)


if __name__ == "__main__":
    sys.exit(main())
