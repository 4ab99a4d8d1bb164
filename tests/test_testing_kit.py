"""outbound.testing, as a user's test suite meets it: a Django and a Flask suite run in their own pytest sessions.

In each, one test mocks 503s until the breaker opens and the next, unrelated test mocks a 200: without the kit the
second fails with CircuitOpenError; with the reset (fixture or ini option) it passes. The no-waits switch makes a
retry with a 5 s backoff wait zero seconds (observed through the retry event, not a stopwatch).
"""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest-django exported this suite's settings module; the user's suite below names its own in its ini.
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)


BREAKER_THEN_UNRELATED = """
import responses
import pytest

import outbound


@responses.activate
def test_upstream_down(client_get):
    responses.get("http://billing.test/api/invoices", status=503)
    for _ in range(2):
        assert client_get("invoices").status_code == 503
    with pytest.raises(outbound.CircuitOpenError):
        client_get("invoices")


@responses.activate
def test_unrelated_later(client_get):
    responses.get("http://billing.test/api/invoices", status=200, body="ok")
    assert client_get("invoices").status_code == 200
"""

SETTINGS = {
    "services": {"billing": {"base_url": "http://billing.test/api/", "breaker": {"fail_max": 2}, "retry": None}}
}

DJANGO_CONFTEST = """
import pytest
import outbound_django

@pytest.fixture
def client_get():
    return outbound_django.session("billing").get
"""

FLASK_CONFTEST = f"""
import pytest
from flask import Flask
from outbound_flask import Outbound

ext = Outbound()

@pytest.fixture(scope="session")
def app():
    app = Flask("shop")
    app.config["OUTBOUND"] = {SETTINGS!r}
    ext.init_app(app)
    return app

@pytest.fixture
def client_get(app):
    with app.app_context():
        yield ext.session("billing").get
"""


def _django_project(pytester: pytest.Pytester, ini: str) -> None:
    pytester.makepyfile(settings=f"SECRET_KEY = 'x'\nINSTALLED_APPS = ['outbound_django']\nOUTBOUND = {SETTINGS!r}\n")
    pytester.makeini(f"[pytest]\nDJANGO_SETTINGS_MODULE = settings\ndjango_find_project = false\n{ini}")
    pytester.makeconftest(DJANGO_CONFTEST)


def _flask_project(pytester: pytest.Pytester, ini: str) -> None:
    pytester.makeini(f"[pytest]\n{ini}")
    pytester.makeconftest(FLASK_CONFTEST)


@pytest.mark.parametrize("framework", ["django", "flask"])
def test_without_the_kit_an_open_breaker_leaks_into_the_next_test(pytester: pytest.Pytester, framework: str) -> None:
    (_django_project if framework == "django" else _flask_project)(pytester, "")
    pytester.makepyfile(test_app=BREAKER_THEN_UNRELATED)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_unrelated_later*CircuitOpenError*"])


@pytest.mark.parametrize("framework", ["django", "flask"])
def test_the_ini_option_resets_the_registry_before_every_test(pytester: pytest.Pytester, framework: str) -> None:
    (_django_project if framework == "django" else _flask_project)(pytester, "outbound_reset = true\n")
    pytester.makepyfile(test_app=BREAKER_THEN_UNRELATED)
    pytester.runpytest_subprocess().assert_outcomes(passed=2)


@pytest.mark.parametrize("framework", ["django", "flask"])
def test_the_fixture_gives_the_active_registry_reset(pytester: pytest.Pytester, framework: str) -> None:
    (_django_project if framework == "django" else _flask_project)(pytester, "")
    later = BREAKER_THEN_UNRELATED.replace(
        "def test_unrelated_later(client_get):",
        "def test_unrelated_later(outbound_registry, client_get):\n"
        "    assert outbound_registry['billing'].policy.breaker.state == 'closed'",
    )
    pytester.makepyfile(test_app=later)
    pytester.runpytest_subprocess().assert_outcomes(passed=2)


def test_no_waits_makes_retry_waits_zero(pytester: pytest.Pytester) -> None:
    _django_project(pytester, "outbound_no_waits = true\n")
    pytester.makepyfile(
        test_retry=textwrap.dedent(
            """
            import responses
            import outbound

            class Delays(outbound.Observer):
                def __init__(self):
                    self.delays = []
                def retry_scheduled(self, event):
                    self.delays.append(event.delay)

            @responses.activate
            def test_retried_without_waiting(outbound_registry):
                outbound_registry.reset()
                delays = Delays()
                outbound_registry.add_observer(delays)
                responses.get("http://billing.test/api/x", status=503)
                responses.get("http://billing.test/api/x", status=200)
                session = outbound_registry.session("retrying")
                assert session.get("x").status_code == 200
                assert delays.delays == [0.0]
            """
        )
    )
    settings = {
        "services": {
            **SETTINGS["services"],
            "retrying": {"base_url": "http://billing.test/api/", "retry": {"backoff_factor": 5, "backoff_jitter": 0}},
        }
    }
    pytester.makepyfile(settings=f"SECRET_KEY = 'x'\nINSTALLED_APPS = ['outbound_django']\nOUTBOUND = {settings!r}\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
