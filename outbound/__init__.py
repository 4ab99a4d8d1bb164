"""outbound: managed outbound HTTP for Django and Flask apps.

One tuned ``requests.Session`` or ``httpx.Client``/``AsyncClient`` per configured upstream, with timeouts, bounded
pools, budgeted retries and a non-blocking circuit breaker in the transport layer, and a health snapshot.

    registry = outbound.Registry.from_mapping({"services": {"billing": {"base_url": "https://billing/api/"}}})
    registry.session("billing").get("invoices/42")
"""

from __future__ import annotations

import typing
from typing import Any

from ._advice import SettingWarning, setting_warnings
from ._config import (
    BreakerBackoffConfig,
    BreakerConfig,
    BudgetConfig,
    BulkheadConfig,
    ConcurrencyConfig,
    DeadlineConfig,
    EgressConfig,
    HealthConfig,
    HedgeConfig,
    HistoryConfig,
    IdempotencyConfig,
    MetricsConfig,
    OutboundConfig,
    PauseConfig,
    PoolConfig,
    RateLimitConfig,
    RetryConfig,
    SdkConfig,
    ServiceConfig,
    StateConfig,
    ThrottleConfig,
    Timeouts,
    TokensConfig,
    WindowConfig,
    config_errors,
    parse_config,
)
from ._criticality import criticality
from ._deadline import budget_from, deadline, time_left
from ._error_answers import ErrorAnswer, error_answer
from ._errors import (
    BulkheadFullError,
    CallError,
    CircuitOpenError,
    ConcurrencyLimitedError,
    ConfigError,
    ConfigErrorCode,
    ConnectError,
    ConnectTimeoutError,
    DeadlineExceededError,
    EgressDeniedError,
    EventLoopMismatchError,
    OutboundError,
    PoolTimeoutError,
    RateLimitedError,
    ReadError,
    ReadTimeoutError,
    RegistryClosedError,
    RejectedError,
    ServiceLookupError,
    ThrottledError,
    TransportFailure,
    WriteTimeoutError,
)
from ._events import (
    AttemptFinished,
    AttemptSending,
    BreakerTransition,
    CacheServed,
    CallFinished,
    CallRejected,
    CallStarted,
    Observer,
    RetryDenied,
    RetryScheduled,
)
from ._expect import expect
from ._registry import Registry
from ._sdk import sdk_error
from ._service import Service

if typing.TYPE_CHECKING:
    from ._backends.httpx import ServiceAsyncClient, ServiceClient
    from ._backends.requests import ServiceSession

__all__ = [
    "AttemptFinished",
    "AttemptSending",
    "BreakerBackoffConfig",
    "BreakerConfig",
    "BreakerTransition",
    "BudgetConfig",
    "BulkheadConfig",
    "BulkheadFullError",
    "CacheServed",
    "CallError",
    "CallFinished",
    "CallRejected",
    "CallStarted",
    "CircuitOpenError",
    "ConcurrencyConfig",
    "ConcurrencyLimitedError",
    "ConfigError",
    "ConfigErrorCode",
    "ConnectError",
    "ConnectTimeoutError",
    "DeadlineConfig",
    "DeadlineExceededError",
    "EgressConfig",
    "EgressDeniedError",
    "ErrorAnswer",
    "EventLoopMismatchError",
    "HealthConfig",
    "HedgeConfig",
    "HistoryConfig",
    "IdempotencyConfig",
    "MetricsConfig",
    "Observer",
    "OutboundConfig",
    "OutboundError",
    "PauseConfig",
    "PoolConfig",
    "PoolTimeoutError",
    "RateLimitConfig",
    "RateLimitedError",
    "ReadError",
    "ReadTimeoutError",
    "Registry",
    "RegistryClosedError",
    "RejectedError",
    "RetryConfig",
    "RetryDenied",
    "RetryScheduled",
    "SdkConfig",
    "Service",
    "ServiceAsyncClient",
    "ServiceClient",
    "ServiceConfig",
    "ServiceLookupError",
    "ServiceSession",
    "SettingWarning",
    "StateConfig",
    "ThrottleConfig",
    "ThrottledError",
    "Timeouts",
    "TokensConfig",
    "TransportFailure",
    "WindowConfig",
    "WriteTimeoutError",
    "budget_from",
    "config_errors",
    "criticality",
    "deadline",
    "error_answer",
    "expect",
    "parse_config",
    "sdk_error",
    "setting_warnings",
    "time_left",
]


# The managed client classes live with their libraries, imported on first use: `import outbound` needs neither
# requests nor httpx loaded (a service's first client loads its library; so does naming one of these).
_CLIENT_CLASSES = {
    "ServiceAsyncClient": "outbound._backends.httpx",
    "ServiceClient": "outbound._backends.httpx",
    "ServiceSession": "outbound._backends.requests",
}


def __getattr__(name: str) -> Any:
    module = _CLIENT_CLASSES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value
