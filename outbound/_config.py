"""Settings: frozen dataclasses and ``parse_config()``, the one place the ``OUTBOUND`` mapping is validated.

Everything is checked before anything is built, and every mistake raises ``ConfigError`` naming the service and
the key, so nothing fails later with a ``KeyError``. Defaults are finite; the README's configuration reference
gives the reason for each.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from ._errors import ConfigError

ClientKind = Literal["requests", "httpx"]
ShowDetails = Literal["never", "when_authorized", "always"]

# urllib3's Retry.DEFAULT_ALLOWED_METHODS: the idempotent methods (RFC 9110 section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "PUT", "TRACE"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Seconds; ``None`` disables a limit (only when the settings say so)."""

    connect: float | None = 3.05
    read: float | None = 10.0
    write: float | None = 10.0
    pool: float | None = 2.0
    total: float | None = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    max_connections: int = 20
    max_keepalive: int = 20
    keepalive_expiry: float | None = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetConfig:
    ratio: float = 0.2
    min_per_second: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    total: int = 2
    backoff_factor: float = 0.25
    backoff_max: float = 5.0
    backoff_jitter: float = 0.25
    status_forcelist: frozenset[int] = frozenset({429, 502, 503, 504})
    allowed_methods: frozenset[str] = IDEMPOTENT_METHODS
    respect_retry_after: bool = True
    retry_after_max: float = 10.0
    budget: BudgetConfig | None = field(default_factory=BudgetConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    fail_max: int = 5
    reset_timeout: float = 30.0
    success_threshold: int = 1
    half_open_max_calls: int = 1
    failure_statuses: frozenset[int] = frozenset({500, 502, 503, 504})


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    name: str
    base_url: str
    client: ClientKind = "requests"
    timeout: Timeouts = field(default_factory=Timeouts)
    pool: PoolConfig = field(default_factory=PoolConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    headers: Mapping[str, str] = field(default_factory=dict)
    verify: bool | str = True
    cert: str | tuple[str, str] | None = None
    proxy: str | None = None
    http2: bool = False
    critical: bool = False
    probe: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    show_details: ShowDetails = "when_authorized"
    token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundConfig:
    services: Mapping[str, ServiceConfig]
    health: HealthConfig = field(default_factory=HealthConfig)


TOP_LEVEL_KEYS = ("defaults", "services", "health")
SERVICE_KEYS = (
    "base_url",
    "client",
    "timeout",
    "pool",
    "retry",
    "breaker",
    "headers",
    "verify",
    "cert",
    "proxy",
    "http2",
    "critical",
    "probe",
)
TIMEOUT_KEYS = ("connect", "read", "write", "pool", "total")
POOL_KEYS = ("max_connections", "max_keepalive", "keepalive_expiry")
RETRY_KEYS = (
    "total",
    "backoff_factor",
    "backoff_max",
    "backoff_jitter",
    "status_forcelist",
    "allowed_methods",
    "respect_retry_after",
    "retry_after_max",
    "budget",
)
BUDGET_KEYS = ("ratio", "min_per_second")
BREAKER_KEYS = ("fail_max", "reset_timeout", "success_threshold", "half_open_max_calls", "failure_statuses")
HEALTH_KEYS = ("show_details", "token")


class _Reader:
    """Reads one mapping, raising ConfigError with the service and the dotted key path on every mistake."""

    def __init__(self, mapping: Any, service: str | None, prefix: str, allowed: tuple[str, ...]) -> None:
        self.service = service
        self.prefix = prefix
        if not isinstance(mapping, Mapping):
            raise self.error(f"must be a mapping (dict), got {type(mapping).__name__}", key=None)
        for key in mapping:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(allowed)}"
                raise self.error(f"unknown key{suggestion}", key=str(key), code="unknown_key")
        self.mapping: Mapping[str, Any] = mapping

    def path(self, key: str | None) -> str | None:
        if key is None:
            return self.prefix or None
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, message: str, *, key: str | None, code: str = "type") -> ConfigError:
        return ConfigError(message, service=self.service, key=self.path(key), code=code)

    def number(
        self, key: str, default: float | None, *, allow_none: bool = False, allow_zero: bool = True
    ) -> float | None:
        value = self.mapping.get(key, default)
        if value is None:
            if allow_none:
                return None
            raise self.error("must be a number, not null", key=key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.error(f"must be a finite number, got {value!r}", key=key)
        if value < 0 or (value == 0 and not allow_zero):
            raise self.error(f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}", key=key, code="range")
        return float(value)

    def required_number(self, key: str, default: float, *, allow_zero: bool = True) -> float:
        value = self.number(key, default, allow_zero=allow_zero)
        assert value is not None  # allow_none=False
        return value

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self.mapping.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"must be an integer, got {value!r}", key=key)
        if value < minimum:
            raise self.error(f"must be >= {minimum}, got {value!r}", key=key, code="range")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.mapping.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"must be true or false, got {value!r}", key=key)
        return value

    def optional_string(self, key: str) -> str | None:
        value = self.mapping.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.error(f"must be a non-empty string or null, got {value!r}", key=key)
        return value

    def statuses(self, key: str, default: frozenset[int]) -> frozenset[int]:
        value = self.mapping.get(key, default)
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple | set | frozenset):
            raise self.error(f"must be a list of HTTP status codes, got {value!r}", key=key)
        for status in value:
            if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                raise self.error(f"must contain HTTP status codes (100-599), got {status!r}", key=key, code="range")
        return frozenset(value)

    def sub(self, key: str, allowed: tuple[str, ...]) -> _Reader:
        return _Reader(self.mapping.get(key, {}), self.service, self.path(key) or key, allowed)


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_timeouts(reader: _Reader) -> Timeouts:
    value = reader.mapping.get("timeout", {})
    if value is None:
        return Timeouts(connect=None, read=None, write=None, pool=None, total=None)
    defaults = Timeouts()
    if isinstance(value, int | float) and not isinstance(value, bool):
        # One number bounds each phase, as httpx.Timeout(10) does.
        seconds = reader.required_number("timeout", 0.0, allow_zero=False)
        return Timeouts(connect=seconds, read=seconds, write=seconds, pool=seconds, total=_default_total(seconds))
    sub = reader.sub("timeout", TIMEOUT_KEYS)
    phases = {
        phase: sub.number(phase, getattr(defaults, phase), allow_none=True, allow_zero=False)
        for phase in ("connect", "read", "write", "pool")
    }
    if "total" in sub.mapping:
        total = sub.number("total", None, allow_none=True, allow_zero=False)
    else:
        total = _default_total(*phases.values())
    return Timeouts(**phases, total=total)


def _default_total(*phases: float | None) -> float:
    # The default deadline never undercuts a longer per-phase limit the settings ask for: "read": 60 means a
    # read may take 60 s, not that the call is cut at 30 s.
    return max([Timeouts().total or 0.0, *(phase for phase in phases if phase is not None)])


def _parse_pool(reader: _Reader) -> PoolConfig:
    sub = reader.sub("pool", POOL_KEYS)
    max_connections = sub.integer("max_connections", PoolConfig().max_connections, minimum=1)
    # Keep every connection alive by default: a pool sized to the worker's concurrency has no idle surplus.
    max_keepalive = sub.integer("max_keepalive", max_connections, minimum=0)
    if max_keepalive > max_connections:
        raise sub.error(
            f"must be <= max_connections ({max_connections}), got {max_keepalive}", key="max_keepalive", code="range"
        )
    return PoolConfig(
        max_connections=max_connections,
        max_keepalive=max_keepalive,
        keepalive_expiry=sub.number("keepalive_expiry", PoolConfig().keepalive_expiry, allow_none=True),
    )


def _parse_methods(reader: _Reader, key: str, default: frozenset[str]) -> frozenset[str]:
    value = reader.mapping.get(key, default)
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple | set | frozenset):
        raise reader.error(f"must be a list of HTTP methods, got {value!r}", key=key)
    for method in value:
        if not isinstance(method, str) or not method.isalpha():
            raise reader.error(f"must contain HTTP method names like 'GET', got {method!r}", key=key)
    return frozenset(method.upper() for method in value)


def _parse_retry(reader: _Reader) -> RetryConfig:
    if "retry" in reader.mapping and reader.mapping["retry"] is None:
        return RetryConfig(total=0)
    sub = reader.sub("retry", RETRY_KEYS)
    defaults = RetryConfig()
    budget: BudgetConfig | None
    if "budget" in sub.mapping and sub.mapping["budget"] is None:
        budget = None
    else:
        budget_reader = sub.sub("budget", BUDGET_KEYS)
        budget_defaults = BudgetConfig()
        budget = BudgetConfig(
            ratio=budget_reader.required_number("ratio", budget_defaults.ratio),
            min_per_second=budget_reader.required_number("min_per_second", budget_defaults.min_per_second),
        )
    return RetryConfig(
        total=sub.integer("total", defaults.total, minimum=0),
        backoff_factor=sub.required_number("backoff_factor", defaults.backoff_factor),
        backoff_max=sub.required_number("backoff_max", defaults.backoff_max),
        backoff_jitter=sub.required_number("backoff_jitter", defaults.backoff_jitter),
        status_forcelist=sub.statuses("status_forcelist", defaults.status_forcelist),
        allowed_methods=_parse_methods(sub, "allowed_methods", defaults.allowed_methods),
        respect_retry_after=sub.boolean("respect_retry_after", defaults.respect_retry_after),
        retry_after_max=sub.required_number("retry_after_max", defaults.retry_after_max),
        budget=budget,
    )


def _parse_breaker(reader: _Reader) -> BreakerConfig:
    sub = reader.sub("breaker", BREAKER_KEYS)
    defaults = BreakerConfig()
    return BreakerConfig(
        fail_max=sub.integer("fail_max", defaults.fail_max, minimum=1),
        reset_timeout=sub.required_number("reset_timeout", defaults.reset_timeout, allow_zero=False),
        success_threshold=sub.integer("success_threshold", defaults.success_threshold, minimum=1),
        half_open_max_calls=sub.integer("half_open_max_calls", defaults.half_open_max_calls, minimum=1),
        failure_statuses=sub.statuses("failure_statuses", defaults.failure_statuses),
    )


def _parse_base_url(reader: _Reader) -> str:
    value = reader.mapping.get("base_url")
    if value is None:
        raise reader.error(
            "is required: the upstream's root URL, e.g. 'https://api.example.com/v1/'", key="base_url", code="missing"
        )
    if not isinstance(value, str):
        raise reader.error(f"must be a string, got {type(value).__name__}", key="base_url")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise reader.error(
            f"must use http or https, got scheme {parts.scheme or '(none)'!r}", key="base_url", code="url"
        )
    if not parts.hostname:
        raise reader.error("must include a host", key="base_url", code="url")
    if parts.query or parts.fragment:
        raise reader.error(
            "must not contain a query string or fragment; pass params per request", key="base_url", code="url"
        )
    # Relative URLs are joined below the base path for both clients, as httpx does: "v1" + "x" -> "v1/x".
    return value if value.endswith("/") else value + "/"


def _parse_headers(reader: _Reader) -> Mapping[str, str]:
    value = reader.mapping.get("headers", {})
    if not isinstance(value, Mapping):
        raise reader.error(f"must be a mapping of header names to values, got {type(value).__name__}", key="headers")
    for name, header_value in value.items():
        if not isinstance(name, str) or not isinstance(header_value, str):
            raise reader.error(f"names and values must be strings, got {name!r}: {header_value!r}", key="headers")
    return MappingProxyType(dict(value))  # read-only, like the rest of the frozen settings


def _parse_tls(reader: _Reader) -> tuple[bool | str, str | tuple[str, str] | None]:
    verify = reader.mapping.get("verify", True)
    if not isinstance(verify, bool | str) or verify == "":
        raise reader.error(f"must be true, false or a CA bundle path, got {verify!r}", key="verify")
    cert = reader.mapping.get("cert")
    if cert is None or (isinstance(cert, str) and cert):
        return verify, cert
    if isinstance(cert, list | tuple) and len(cert) == 2 and all(isinstance(p, str) and p for p in cert):
        return verify, (cert[0], cert[1])
    raise reader.error(f"must be a path or a [cert_path, key_path] pair, got {cert!r}", key="cert")


def _parse_service(name: str, raw: Any, defaults: Mapping[str, Any]) -> ServiceConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"must be a mapping (dict), got {type(raw).__name__}", service=name)
    reader = _Reader(_deep_merge(defaults, raw), name, "", SERVICE_KEYS)
    client = reader.mapping.get("client", "requests")
    if client not in ("requests", "httpx"):
        raise reader.error(f"must be 'requests' or 'httpx', got {client!r}", key="client", code="unsupported")
    http2 = reader.boolean("http2", False)
    if http2 and client != "httpx":
        raise reader.error("is only supported with client 'httpx'", key="http2", code="unsupported")
    if http2 and importlib.util.find_spec("h2") is None:
        raise reader.error("needs the h2 package: pip install 'outbound-http[http2]'", key="http2", code="unsupported")
    proxy = reader.optional_string("proxy")
    if proxy is not None and urlsplit(proxy).scheme not in ("http", "https", "socks5", "socks5h"):
        raise reader.error(
            f"must be an http(s):// or socks5:// URL, got scheme {urlsplit(proxy).scheme!r}", key="proxy", code="url"
        )
    verify, cert = _parse_tls(reader)
    return ServiceConfig(
        name=name,
        base_url=_parse_base_url(reader),
        client=client,
        timeout=_parse_timeouts(reader),
        pool=_parse_pool(reader),
        retry=_parse_retry(reader),
        breaker=_parse_breaker(reader),
        headers=_parse_headers(reader),
        verify=verify,
        cert=cert,
        proxy=proxy,
        http2=http2,
        critical=reader.boolean("critical", False),
        probe=reader.optional_string("probe"),
    )


def _parse_health(raw: Any) -> HealthConfig:
    reader = _Reader(raw, None, "health", HEALTH_KEYS)
    show_details = reader.mapping.get("show_details", "when_authorized")
    if show_details not in ("never", "when_authorized", "always"):
        raise reader.error(
            f"must be 'never', 'when_authorized' or 'always', got {show_details!r}",
            key="show_details",
            code="unsupported",
        )
    return HealthConfig(show_details=show_details, token=reader.optional_string("token"))


def parse_config(mapping: Any) -> OutboundConfig:
    """Validate the whole ``OUTBOUND`` mapping and return it as frozen dataclasses.

    Raises:
        ConfigError: the first mistake, naming the service and the key (``config_errors`` lists them all).
    """
    errors: list[ConfigError] = []
    config = _parse(mapping, errors, stop_at_first=True)
    if config is None:
        raise errors[0]
    return config


def config_errors(mapping: Any) -> list[ConfigError]:
    """Every mistake in the mapping: the first of each service, of ``health`` and of the top level."""
    errors: list[ConfigError] = []
    _parse(mapping, errors, stop_at_first=False)
    return errors


def _parse(mapping: Any, errors: list[ConfigError], *, stop_at_first: bool) -> OutboundConfig | None:
    def attempt(parse: Any, *args: Any) -> Any:
        if errors and stop_at_first:
            return None
        try:
            return parse(*args)
        except ConfigError as error:
            errors.append(error)
            return None

    top = attempt(_Reader, mapping, None, "", TOP_LEVEL_KEYS)
    if top is None:
        return None
    defaults = top.mapping.get("defaults", {})
    if attempt(_Reader, defaults, None, "defaults", SERVICE_KEYS) is None:
        return None
    services = top.mapping.get("services", {})
    if not isinstance(services, Mapping):
        message = f"must be a mapping of service names to settings, got {type(services).__name__}"
        errors.append(top.error(message, key="services"))
        return None
    parsed: dict[str, ServiceConfig] = {}
    for name, raw in services.items():
        if not isinstance(name, str) or not name or name != name.strip():
            message = f"service names must be non-empty strings without surrounding spaces, got {name!r}"
            errors.append(top.error(message, key="services"))
            continue
        service = attempt(_parse_service, name, raw, defaults)
        if service is not None:
            parsed[name] = service
    health = attempt(_parse_health, top.mapping.get("health", {}))
    if errors:
        return None
    return OutboundConfig(services=parsed, health=health)
