"""System checks (``manage.py check``) for ``settings.OUTBOUND``, registered under the tag ``outbound``.

Errors report the core's ``ConfigError``s (this module validates nothing itself); warnings flag valid settings an
expert would question. Ids are stable: the Django docs page lists them, and silencing one with
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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

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
    "unknown_key": "Fix the spelling or remove the key; the configuration reference (docs/configuration.md) lists "
    "every key.",
    "missing": "Add the key; the message says what it should hold.",
    "type": "Give the value the type the message asks for.",
    "range": "Use a value inside the range the message gives.",
    "url": "Use an http:// or https:// URL with a host and no query string or fragment (proxies: socks5:// too).",
    "unsupported": "Choose one of the supported values, or install the optional dependency the message names.",
    "file": "Give the path of a readable PEM file (a CA bundle may also be a directory of certificates).",
}

# RFC 9110 section 9.2.2: a retried request with any other method may act twice on the upstream.
IDEMPOTENT_METHODS = outbound.RetryConfig().allowed_methods  # the core's default: the idempotent methods
CREDENTIAL_HEADER_WORDS = ("authorization", "cookie", "token", "secret", "api-key", "apikey", "password")
MIN_TOKEN_LENGTH = 16


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
    messages: list[checks.CheckMessage] = []
    for service in config.services.values():
        messages.extend(_service_warnings(service))
    messages.extend(_health_warnings(config.health))
    return messages


def _error(error: outbound.ConfigError) -> checks.Error:
    return checks.Error(str(error), hint=CONFIG_ERROR_HINTS[error.code], id=CONFIG_ERROR_IDS[error.code])


def _where(service: outbound.ServiceConfig, key: str) -> str:
    return f"OUTBOUND[services.{service.name}.{key}]"


def _service_warnings(service: outbound.ServiceConfig) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    timeout, retry = service.timeout, service.retry
    unbounded = [phase for phase in ("connect", "read", "write", "pool") if getattr(timeout, phase) is None]
    if unbounded:
        keys = ", ".join(f"timeout.{phase}" for phase in unbounded)
        messages.append(
            checks.Warning(
                f"OUTBOUND[services.{service.name}]: {keys} is null, so a call can wait forever in that phase "
                "and hold a worker for as long as the upstream hangs.",
                hint="Set a number of seconds; for a genuinely slow upstream, a large one.",
                id="outbound.W002",
            )
        )
    if timeout.total is None:
        messages.append(
            checks.Warning(
                f"{_where(service, 'timeout.total')} is null, so retries and backoff have no overall deadline.",
                hint="Set the longest time a caller should wait for this service, retries included.",
                id="outbound.W003",
            )
        )
    if retry.total > 0:
        unsafe = sorted(retry.allowed_methods - IDEMPOTENT_METHODS)
        if unsafe:
            messages.append(
                checks.Warning(
                    f"{_where(service, 'retry.allowed_methods')} includes {', '.join(unsafe)}: a retry after a "
                    "read error or timeout may perform the action twice on the upstream.",
                    hint="Retry only idempotent methods, or make the upstream deduplicate (an idempotency key).",
                    id="outbound.W004",
                )
            )
        if retry.budget is None:
            messages.append(
                checks.Warning(
                    f"{_where(service, 'retry.budget')} is null: when the upstream fails, every call is retried, "
                    f"multiplying its load up to {retry.total + 1}x just when it is struggling.",
                    hint="Remove the null to keep the default budget (retries add at most 20% of the traffic).",
                    id="outbound.W005",
                )
            )
    if service.verify is False and urlsplit(service.base_url).scheme == "https":
        messages.append(
            checks.Warning(
                f"{_where(service, 'verify')} is false: TLS certificates are not checked, so anyone on the network "
                "path can impersonate the upstream.",
                hint="Remove it, or give the path of the CA bundle that signed the upstream's certificate.",
                id="outbound.W006",
            )
        )
    credentials = sorted(name for name in service.headers if _is_credential(name))
    if credentials and _cleartext(service.base_url):
        messages.append(
            checks.Warning(
                f"{_where(service, 'headers')} sends {', '.join(credentials)} over plain http to a remote host.",
                hint="Use an https:// base_url for an upstream that needs credentials.",
                id="outbound.W009",
            )
        )
    return messages


def _health_warnings(health: outbound.HealthConfig) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    if health.show_details == "always":
        messages.append(
            checks.Warning(
                'OUTBOUND[health.show_details] is "always": anyone who can reach /health/outbound sees the '
                "upstreams' addresses, breaker states and last errors.",
                hint='Use "when_authorized" (the default) with a health.token for your monitoring.',
                id="outbound.W007",
            )
        )
    if health.show_details == "when_authorized" and health.token and len(health.token) < MIN_TOKEN_LENGTH:
        messages.append(
            checks.Warning(
                f"OUTBOUND[health.token] is shorter than {MIN_TOKEN_LENGTH} characters and easy to guess.",
                hint="Use a long random value, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'.",
                id="outbound.W008",
            )
        )
    return messages


def _is_credential(header: str) -> bool:
    lowered = header.lower()
    return any(word in lowered for word in CREDENTIAL_HEADER_WORDS)


def _cleartext(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        # Loopback traffic never leaves the machine.
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True
