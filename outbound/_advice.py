"""Settings that are valid but that an expert would question: the warnings both adapters report.

Django reports them as system checks (``outbound.W002`` ...; ``SILENCED_SYSTEM_CHECKS`` silences one), Flask logs
them once when ``init_app`` builds the registry. Invalid settings are errors instead (``ConfigError``, at startup).
The codes are stable: the docs list them.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple
from urllib.parse import urlsplit

from ._config import IDEMPOTENT_METHODS, HealthConfig, OutboundConfig, ServiceConfig

__all__ = ["SettingWarning", "setting_warnings"]

CREDENTIAL_HEADER_WORDS = ("authorization", "cookie", "token", "secret", "api-key", "apikey", "password")
MIN_TOKEN_LENGTH = 16
# Polly's rule (.NET Http.Resilience rejects a sampling duration shorter than twice the attempt timeout): a window
# shorter than that judges only the calls that end quickly, so slow failures never count.
WINDOW_TIMEOUT_FACTOR = 2


class SettingWarning(NamedTuple):
    """One questionable setting: what is wrong, what to do about it, and its ``code`` (``"W004"``)."""

    message: str
    hint: str
    code: str


def setting_warnings(config: OutboundConfig) -> list[SettingWarning]:
    """Every warning for valid settings ``config``, service by service, then the health settings."""
    warnings: list[SettingWarning] = []
    for service in config.services.values():
        warnings.extend(_service(service))
    warnings.extend(_health(config.health))
    return warnings


def _where(service: ServiceConfig, key: str) -> str:
    return f"OUTBOUND[services.{service.name}.{key}]"


def _service(service: ServiceConfig) -> list[SettingWarning]:
    warnings: list[SettingWarning] = []
    timeout, retry = service.timeout, service.retry
    unbounded = [phase for phase in ("connect", "read", "write", "pool") if getattr(timeout, phase) is None]
    if unbounded:
        keys = ", ".join(f"timeout.{phase}" for phase in unbounded)
        warnings.append(
            SettingWarning(
                f"OUTBOUND[services.{service.name}]: {keys} is null, so a call can wait forever in that phase "
                "and hold a worker for as long as the upstream hangs.",
                hint="Set a number of seconds; for a genuinely slow upstream, a large one.",
                code="W002",
            )
        )
    if timeout.total is None:
        warnings.append(
            SettingWarning(
                f"{_where(service, 'timeout.total')} is null, so retries and backoff have no overall deadline.",
                hint="Set the longest time a caller should wait for this service, retries included.",
                code="W003",
            )
        )
    if retry.total > 0:
        unsafe = sorted(retry.allowed_methods - IDEMPOTENT_METHODS)
        if unsafe:
            warnings.append(
                SettingWarning(
                    f"{_where(service, 'retry.allowed_methods')} includes {', '.join(unsafe)}: a retry after a "
                    "read error or timeout may perform the action twice on the upstream.",
                    hint="Retry only idempotent methods, or make the upstream deduplicate (an idempotency key).",
                    code="W004",
                )
            )
        if retry.budget is None:
            warnings.append(
                SettingWarning(
                    f"{_where(service, 'retry.budget')} is null: when the upstream fails, every call is retried, "
                    f"multiplying its load up to {retry.total + 1}x just when it is struggling.",
                    hint="Remove the null to keep the default budget (retries add at most 20% of the traffic).",
                    code="W005",
                )
            )
    if service.verify is False and urlsplit(service.base_url).scheme == "https":
        warnings.append(
            SettingWarning(
                f"{_where(service, 'verify')} is false: TLS certificates are not checked, so anyone on the network "
                "path can impersonate the upstream.",
                hint="Remove it, or give the path of the CA bundle that signed the upstream's certificate.",
                code="W006",
            )
        )
    warnings.extend(_window(service))
    credentials = sorted(name for name in service.headers if _is_credential(name))
    if credentials and _cleartext(service.base_url):
        warnings.append(
            SettingWarning(
                f"{_where(service, 'headers')} sends {', '.join(credentials)} over plain http to a remote host.",
                hint="Use an https:// base_url for an upstream that needs credentials.",
                code="W009",
            )
        )
    return warnings


def _window(service: ServiceConfig) -> list[SettingWarning]:
    breaker = service.breaker
    if breaker.mode != "rate":
        return []
    warnings: list[SettingWarning] = []
    window = breaker.window
    attempt = longest_attempt(service)
    if window.type == "time" and attempt is not None and window.seconds < WINDOW_TIMEOUT_FACTOR * attempt:
        warnings.append(
            SettingWarning(
                f"{_where(service, 'breaker.window.seconds')} is {window.seconds:g}s, shorter than twice the longest "
                f"attempt ({attempt:g}s): slow failures end after the window has moved on, so it judges mostly the "
                "calls that end quickly.",
                hint=f"Use a window of at least {WINDOW_TIMEOUT_FACTOR * attempt:g}s, or shorter timeouts.",
                code="W010",
            )
        )
    if window.type == "count" and breaker.minimum_calls > window.size:
        warnings.append(
            SettingWarning(
                f"{_where(service, 'breaker.minimum_calls')} ({breaker.minimum_calls}) is more than the window holds "
                f"(window.size {window.size}): the rate is never judged and the breaker never opens.",
                hint="Make minimum_calls at most window.size.",
                code="W011",
            )
        )
    return warnings


def longest_attempt(service: ServiceConfig) -> float | None:
    """The longest one attempt can take: ``timeout.total``, or the sum of its phases (``None``: unbounded)."""
    timeout = service.timeout
    phases = (timeout.pool, timeout.connect, timeout.write, timeout.read)
    summed = None if None in phases else sum(phase or 0.0 for phase in phases)
    if timeout.total is None:
        return summed
    return timeout.total if summed is None else min(timeout.total, summed)


def _health(health: HealthConfig) -> list[SettingWarning]:
    warnings: list[SettingWarning] = []
    if health.show_details == "always":
        warnings.append(
            SettingWarning(
                'OUTBOUND[health.show_details] is "always": anyone who can reach /health/outbound sees the '
                "upstreams' addresses, breaker states and last errors.",
                hint='Use "when_authorized" (the default) with a health.token for your monitoring.',
                code="W007",
            )
        )
    if health.show_details == "when_authorized" and health.token and len(health.token) < MIN_TOKEN_LENGTH:
        warnings.append(
            SettingWarning(
                f"OUTBOUND[health.token] is shorter than {MIN_TOKEN_LENGTH} characters and easy to guess.",
                hint="Use a long random value, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'.",
                code="W008",
            )
        )
    return warnings


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
