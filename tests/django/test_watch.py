"""``manage.py outbound status --watch`` in a real terminal (tmux): it draws, and Ctrl-C ends it with exit code 0."""

from __future__ import annotations

import os
import sys

from tests.flask.test_watch import ROOT, Tmux
from tests.upstream import wait_until


def test_the_django_command_watches_and_quits_on_ctrl_c() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings", "PYTHONPATH": str(ROOT)}
    tmux = Tmux([sys.executable, "-m", "django", "outbound", "status", "--watch"], env)
    try:
        assert wait_until(lambda: "TRENDS" in tmux.screen(), timeout=30.0), tmux.screen()
        screen = tmux.screen()
        assert "outbound status --watch" in screen
        assert "SERVICE" in screen
        # These settings keep no history: the view says how to get one rather than drawing nothing.
        assert "(no history: set health.history" in screen
        tmux.keys("C-c")
        assert wait_until(lambda: "EXITED WITH 0" in tmux.screen(), timeout=10.0), tmux.screen()
        assert "Traceback" not in tmux.screen()
    finally:
        tmux.close()
