"""System checks (``manage.py check``) for ``settings.OUTBOUND``, registered under the tag ``outbound``.

Errors report the core's ``ConfigError``s and warnings its ``setting_warnings`` (valid settings an expert would
question): this module judges nothing itself. Ids are stable: the Django docs page lists them, and silencing one with
``SILENCED_SYSTEM_CHECKS`` must keep working across releases. Every mistake in the settings is reported, each as
its own error.

    outbound.E001  unknown key                    outbound.W001  OUTBOUND is not set
    outbound.E002  required key missing           outbound.W002  a per-phase timeout is null
    outbound.E003  wrong type                     outbound.W003  timeout.total is null
    outbound.E004  value out of range             outbound.W004  retries of non-idempotent methods
    outbound.E005  invalid URL                    outbound.W005  retries without a retry budget
    outbound.E006  unsupported value              outbound.W006  TLS verification disabled
    outbound.E007  TLS file missing or unusable   outbound.W007  health details shown to everyone
                                                  outbound.W008  short health token
                                                  outbound.W009  credentials sent over plain http
                                                  outbound.W010  rate window shorter than 2x an attempt
                                                  outbound.W011  minimum_calls more than the window holds
                                                  outbound.W012  a call can outlast gunicorn's worker timeout
                                                                 (only while gunicorn loads the project)
                                                  outbound.W013  fault injection with DEBUG = False
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks

import outbound
from outbound import ConfigErrorCode

from .conf import SETTING

CONFIG_ERROR_IDS: dict[ConfigErrorCode, str] = {
    "unknown_key": "outbound.E001",
    "missing": "outbound.E002",
    "type": "outbound.E003",
    "range": "outbound.E004",
    "url": "outbound.E005",
    "unsupported": "outbound.E006",
    "file": "outbound.E007",
}
CONFIG_ERROR_HINTS: dict[ConfigErrorCode, str] = {
    "unknown_key": "Fix the spelling or remove the key; the Configuration page of outbound's documentation lists "
    "every key.",
    "missing": "Add the key; the message says what it should hold.",
    "type": "Give the value the type the message asks for.",
    "range": "Use a value inside the range the message gives.",
    "url": "Use an http:// or https:// URL with a host and no query string or fragment (proxies: socks5:// too).",
    "unsupported": "Choose one of the supported values, or install the optional dependency the message names.",
    "file": "Give the path of a readable PEM file (a CA bundle may also be a directory of certificates).",
}


def check_settings(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Report every mistake in ``settings.OUTBOUND`` as an ``Error`` and risky settings as ``Warning``s."""
    if not hasattr(settings, SETTING):
        return [
            checks.Warning(
                "settings.OUTBOUND is not set: no outbound services are configured.",
                hint='Add OUTBOUND = {"services": {"name": {"base_url": "https://..."}}} to your settings, '
                "or remove 'outbound_django' from INSTALLED_APPS.",
                id="outbound.W001",
            )
        ]
    mapping = getattr(settings, SETTING)
    errors = outbound.config_errors(mapping)
    if errors:
        return [_error(error) for error in errors]
    config = outbound.parse_config(mapping)
    return [
        checks.Warning(warning.message, hint=warning.hint, id=f"outbound.{warning.code}")
        for warning in outbound.setting_warnings(config, production=not settings.DEBUG)
    ]


def _error(error: outbound.ConfigError) -> checks.Error:
    return checks.Error(str(error), hint=CONFIG_ERROR_HINTS[error.code], id=CONFIG_ERROR_IDS[error.code])
