"""The longest call a service's settings allow, and ``W012``: gunicorn's worker timeout, read from the gunicorn
application loading the app (gunicorn's documented custom-application API here; real servers in
tests/flask/test_gunicorn_timeout.py and tests/django/test_e2e.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from gunicorn.app.base import BaseApplication

import outbound
from outbound._advice import gunicorn_worker_timeout, longest_call


def service(**settings: Any) -> outbound.ServiceConfig:
    return outbound.parse_config({"services": {"svc": {"base_url": "http://127.0.0.1:9/", **settings}}}).services["svc"]


PHASES = {"connect": 1, "read": 2, "write": 1, "pool": 1, "total": None}  # an attempt: at most 5 s


@pytest.mark.parametrize(
    ("settings", "seconds"),
    [
        pytest.param({}, 30.0, id="defaults: timeout.total"),
        pytest.param({"timeout": {**PHASES, "total": 12}}, 12.0, id="total-bounds-the-retries"),
        # 3 attempts of 5 s, and before each retry the 10 s Retry-After it may honour (longer than any backoff).
        pytest.param({"timeout": PHASES}, 35.0, id="attempts-and-retry-after"),
        # Backoffs with full jitter instead: min(5, 0.25 + 0.25) and min(5, 0.5 + 0.25).
        pytest.param({"timeout": PHASES, "retry": {"respect_retry_after": False}}, 16.25, id="attempts-and-backoff"),
        pytest.param({"timeout": PHASES, "retry": None}, 5.0, id="no-retries"),
        pytest.param(
            {
                "timeout": PHASES,
                "retry": None,
                "bulkhead": {"max_in_flight": 4, "max_wait": 1},
                "rate_limit": {"rate": "10/second", "max_wait": 0.5},
                "pause": {"max_wait": 2},
            },
            8.5,
            id="admission-waits",
        ),
        pytest.param({"timeout": {**PHASES, "read": None}}, None, id="unbounded"),
        pytest.param({"timeout": {**PHASES, "read": None, "total": 40}}, 40.0, id="unbounded-attempt-total"),
    ],
)
def test_longest_call(settings: dict[str, Any], seconds: float | None) -> None:
    assert longest_call(service(**settings)) == seconds


class Loader(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    """A gunicorn application as gunicorn's docs show custom ones: ``wsgi()`` loads the app with these settings."""

    def __init__(self, options: dict[str, Any], load: Callable[[], Any]) -> None:
        self.options = options
        self.loader = load
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.loader()


def warnings_when_loaded(options: dict[str, Any], config: outbound.OutboundConfig) -> list[outbound.SettingWarning]:
    warnings: list[outbound.SettingWarning] = Loader(options, lambda: outbound.setting_warnings(config)).wsgi()
    return warnings


TEN_SECONDS = outbound.parse_config(
    {
        "services": {
            "slow": {"base_url": "http://127.0.0.1:9/", "timeout": {"total": 10}},
            "quick": {"base_url": "http://127.0.0.1:9/", "timeout": {"connect": 1, "read": 2, "total": 3}},
        }
    }
)


def test_a_call_longer_than_a_sync_workers_timeout_is_w012() -> None:
    [warning] = warnings_when_loaded({"timeout": 8}, TEN_SECONDS)
    assert warning.code == "W012"
    assert warning.message.startswith("OUTBOUND[services.slow]: one call can take up to 10s,")
    assert "gunicorn's worker timeout (8s)" in warning.message
    assert "WORKER TIMEOUT" in warning.message
    assert "below 8s" in warning.hint


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="default-30s"),
        pytest.param({"timeout": 10}, id="equal"),
        pytest.param({"timeout": 8, "worker_class": "gthread"}, id="gthread"),
        pytest.param({"timeout": 8, "threads": 4}, id="threads"),
        pytest.param({"timeout": 0}, id="timeout-off"),
    ],
)
def test_no_w012_when_the_timeout_cannot_cut_a_call(options: dict[str, Any]) -> None:
    assert warnings_when_loaded(options, TEN_SECONDS) == []


def test_other_worker_class_spellings_of_sync() -> None:
    for worker_class in ("sync", "gunicorn.workers.sync.SyncWorker", "egg:gunicorn#sync"):
        assert [w.code for w in warnings_when_loaded({"timeout": 8, "worker_class": worker_class}, TEN_SECONDS)] == [
            "W012"
        ]


def test_outside_gunicorn_there_is_no_worker_timeout() -> None:
    assert gunicorn_worker_timeout() is None
    assert outbound.setting_warnings(TEN_SECONDS) == []


def test_looking_for_gunicorn_keeps_nothing_of_the_callers_alive() -> None:
    # Before Python 3.13, reading a frame's f_locals keeps a snapshot of its locals for as long as the frame runs:
    # only gunicorn's own frame may be read, never the app's (an app factory's, a test's). gunicorn is imported
    # here, so the search runs, and finds no gunicorn frame.
    class Token:
        pass

    token = Token()
    alive = weakref.ref(token)
    assert outbound.setting_warnings(TEN_SECONDS) == []
    del token
    gc.collect()
    assert alive() is None
