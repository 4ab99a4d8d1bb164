"""System checks: every id, their uniqueness, their registration, and `manage.py` surviving bad settings."""

from __future__ import annotations

import re
import typing
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.core import checks as django_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

import outbound
from outbound_django import checks
from tests.django.conftest import django_admin

if TYPE_CHECKING:  # pytest-django exports the fixture's type only in recent versions
    from pytest_django import Settings

ROOT = Path(__file__).resolve().parents[2]
BASE = "http://127.0.0.1:9/"


def ids(messages: list[django_checks.CheckMessage]) -> list[str]:
    return [message.id or "" for message in messages]


def run_checks(settings: Settings, mapping: Any) -> list[django_checks.CheckMessage]:
    settings.OUTBOUND = mapping
    return checks.check_settings()


def one_service(**overrides: Any) -> dict[str, Any]:
    return {"services": {"billing": {"base_url": BASE, **overrides}}}


def test_default_test_settings_are_clean() -> None:
    assert checks.check_settings() == []


@pytest.mark.parametrize(
    ("mapping", "check_id", "key"),
    [
        pytest.param(one_service(timout=1), "outbound.E001", "timout", id="unknown_key"),
        pytest.param({"services": {"billing": {"critical": True}}}, "outbound.E002", "base_url", id="missing"),
        pytest.param(one_service(critical="yes"), "outbound.E003", "critical", id="type"),
        pytest.param(one_service(retry={"total": -1}), "outbound.E004", "retry.total", id="range"),
        pytest.param({"services": {"billing": {"base_url": "ftp://billing/"}}}, "outbound.E005", "base_url", id="url"),
        pytest.param(one_service(client="aiohttp"), "outbound.E006", "client", id="unsupported"),
        pytest.param(one_service(verify="/no/such/ca.pem"), "outbound.E007", "verify", id="file"),
    ],
)
def test_each_config_error_code_has_its_id(settings: Settings, mapping: Any, check_id: str, key: str) -> None:
    [message] = run_checks(settings, mapping)
    assert isinstance(message, django_checks.Error)
    assert message.id == check_id
    assert f"OUTBOUND[services.billing.{key}]" in message.msg  # names the service and the key
    assert message.hint


def test_every_core_error_code_is_mapped() -> None:
    # A new code in the core must get its own documented id, not fall back silently.
    assert (
        set(checks.CONFIG_ERROR_IDS)
        == set(outbound.ConfigError.CODES)
        == set(typing.get_args(outbound.ConfigErrorCode))
    )
    assert set(checks.CONFIG_ERROR_HINTS) == set(outbound.ConfigError.CODES)


def test_every_mistake_is_reported_once_per_section(settings: Settings) -> None:
    messages = run_checks(
        settings,
        {
            "services": {
                "billing": {"base_url": "ftp://billing/"},
                "search": {"base_url": BASE, "pool": {"max_connections": 0}},
                "ok": {"base_url": BASE},
            },
            "health": {"show_details": "sometimes"},
        },
    )
    assert ids(messages) == ["outbound.E005", "outbound.E004", "outbound.E006"]
    assert all(isinstance(message, django_checks.Error) for message in messages)


def test_top_level_mistakes(settings: Settings) -> None:
    assert ids(run_checks(settings, ["not", "a", "mapping"])) == ["outbound.E003"]
    assert ids(run_checks(settings, {"service": {}})) == ["outbound.E001"]


def test_missing_setting_is_a_warning(settings: Settings) -> None:
    del settings.OUTBOUND
    [message] = checks.check_settings()
    assert isinstance(message, django_checks.Warning)
    assert message.id == "outbound.W001"


@pytest.mark.parametrize(
    ("mapping", "check_id", "text"),
    [
        pytest.param(one_service(timeout={"read": None}), "outbound.W002", "timeout.read", id="read-null"),
        pytest.param(one_service(timeout={"total": None}), "outbound.W003", "timeout.total", id="total-null"),
        pytest.param(
            one_service(retry={"allowed_methods": ["GET", "POST", "patch"]}), "outbound.W004", "PATCH, POST", id="post"
        ),
        pytest.param(one_service(retry={"budget": None}), "outbound.W005", "retry.budget", id="no-budget"),
        pytest.param(
            {"services": {"billing": {"base_url": "https://billing/", "verify": False}}},
            "outbound.W006",
            "verify",
            id="no-verify",
        ),
        pytest.param(
            {"services": {}, "health": {"show_details": "always"}}, "outbound.W007", "show_details", id="always"
        ),
        pytest.param({"services": {}, "health": {"token": "short"}}, "outbound.W008", "token", id="short-token"),
        pytest.param(
            {"services": {"billing": {"base_url": "http://billing/", "headers": {"Authorization": "Bearer x"}}}},
            "outbound.W009",
            "Authorization",
            id="cleartext-credentials",
        ),
        pytest.param(
            one_service(
                timeout={"connect": 1, "read": 4, "total": 6},
                breaker={"mode": "rate", "window": {"type": "time", "seconds": 9}},
            ),
            "outbound.W010",
            "shorter than twice the longest attempt (6s)",
            id="short-window",
        ),
        pytest.param(
            one_service(breaker={"mode": "rate", "window": {"size": 10}, "minimum_calls": 20}),
            "outbound.W011",
            "never opens",
            id="window-never-judged",
        ),
    ],
)
def test_each_risky_setting_has_its_warning(settings: Settings, mapping: Any, check_id: str, text: str) -> None:
    [message] = run_checks(settings, mapping)
    assert isinstance(message, django_checks.Warning)
    assert message.id == check_id
    assert text in message.msg
    assert message.hint


def test_timeout_null_names_every_unbounded_phase(settings: Settings) -> None:
    messages = run_checks(settings, one_service(timeout=None))
    assert ids(messages) == ["outbound.W002", "outbound.W003"]
    for phase in ("connect", "read", "write", "pool"):
        assert f"timeout.{phase}" in messages[0].msg


@pytest.mark.parametrize(
    "mapping",
    [
        pytest.param(one_service(retry={"total": 0, "allowed_methods": ["POST"], "budget": None}), id="no-retries"),
        pytest.param(one_service(retry=None), id="retry-null"),
        pytest.param({"services": {"billing": {"base_url": "http://billing/", "verify": False}}}, id="verify-on-http"),
        pytest.param(one_service(headers={"Authorization": "Bearer x"}), id="credentials-to-loopback"),
        pytest.param(
            {"services": {"b": {"base_url": "http://localhost/", "headers": {"X-Api-Key": "k"}}}}, id="localhost"
        ),
        pytest.param({"services": {}, "health": {"show_details": "never", "token": "short"}}, id="token-unused"),
        pytest.param({"services": {}, "health": {"token": "x" * 16}}, id="long-token"),
        pytest.param(
            one_service(timeout={"total": 5}, breaker={"mode": "rate", "window": {"type": "time", "seconds": 10}}),
            id="window-twice-the-attempt",
        ),
        pytest.param(one_service(breaker={"window": {"size": 5}}), id="window-of-consecutive-mode"),
    ],
)
def test_no_warning_for_safe_settings(settings: Settings, mapping: Any) -> None:
    assert run_checks(settings, mapping) == []


def test_ids_are_unique_and_documented() -> None:
    django_source = Path(checks.__file__).read_text()
    core_source = Path(outbound._advice.__file__).read_text()
    found = re.findall(r'id="(outbound\.[EW]\d{3})"', django_source) + list(checks.CONFIG_ERROR_IDS.values())
    found += ["outbound." + code for code in re.findall(r'code="(W\d{3})"', core_source)]
    assert len(found) == len(set(found)), "each id is used in exactly one place"
    warnings = [f"outbound.W{n:03}" for n in range(1, 14)]
    assert sorted(found) == [f"outbound.E00{n}" for n in range(1, 8)] + warnings
    for check_id in found:
        assert check_id in (checks.__doc__ or ""), f"{check_id} missing from the checks module docstring"


def test_hints_name_a_docs_page_by_its_title_not_by_a_repository_path() -> None:
    # The documentation site is not published yet, and an installed package has no docs/ folder.
    for module in (checks, outbound._advice):
        source = Path(module.__file__ or "").read_text()
        assert re.findall(r"docs/[\w-]+\.md", source) == [], module.__name__
    assert "the Configuration page of outbound's documentation" in checks.CONFIG_ERROR_HINTS["unknown_key"]


def test_checks_are_registered_with_the_outbound_tag(settings: Settings) -> None:
    assert "outbound" in django_checks.registry.registry.tags_available()
    out = StringIO()
    call_command("check", "--tag", "outbound", stdout=out)  # a tag nobody registered is an error
    assert "no issues" in out.getvalue()

    settings.OUTBOUND = one_service(retry={"budget": None})
    out = StringIO()
    call_command("check", stdout=out, stderr=out)
    assert "outbound.W005" in out.getvalue()

    settings.OUTBOUND = one_service(retry={"total": -1})
    with pytest.raises(SystemCheckError, match=r"outbound\.E004"):
        call_command("check")


def test_silenced_check(settings: Settings) -> None:
    settings.OUTBOUND = one_service(retry={"budget": None})
    settings.SILENCED_SYSTEM_CHECKS = ["outbound.W005"]
    out = StringIO()
    call_command("check", "--tag", "outbound", stdout=out)
    assert "outbound.W005" not in out.getvalue()


def test_manage_py_reports_bad_settings_instead_of_crashing() -> None:
    result = django_admin("tests.django.broken_settings", "check")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "outbound.E005" in result.stderr
    assert "outbound.E004" in result.stderr
    assert "OUTBOUND[services.billing.base_url]" in result.stderr


def test_outbound_command_exits_2_on_bad_settings() -> None:
    result = django_admin("tests.django.broken_settings", "outbound", "status")
    assert result.returncode == outbound.health.CONFIG_ERROR_EXIT_CODE == 2
    assert "Traceback" not in result.stderr
    assert "CommandError: OUTBOUND[services.billing.base_url]" in result.stderr


def test_chaos_in_a_production_settings_module_warns(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTBOUND_CHAOS", raising=False)
    settings.DEBUG = False
    [message] = run_checks(settings, one_service(chaos={"faults": [{"kind": "status"}]}))
    assert message.id == "outbound.W013"
    assert "billing" in message.msg
    assert "does not allow" in message.msg
    [message] = run_checks(settings, {"chaos": {"allow": True}, "services": {}})
    assert message.id == "outbound.W013"
    settings.DEBUG = True
    assert run_checks(settings, one_service(chaos={"faults": [{"kind": "status"}]})) == []
