"""outbound: managed outbound HTTP for Django and Flask apps.

One tuned ``requests.Session`` or ``httpx.Client``/``AsyncClient`` per configured upstream, with timeouts, bounded
pools, budgeted retries and a non-blocking circuit breaker in the transport layer, and a health snapshot.

    registry = outbound.Registry.from_mapping({"services": {"billing": {"base_url": "https://billing/api/"}}})
    registry.session("billing").get("invoices/42")
"""

from __future__ import annotations

from ._backends.httpx import ServiceAsyncClient, ServiceClient
from ._backends.requests import ServiceSession
from ._config import (
    BreakerConfig,
    BudgetConfig,
    HealthConfig,
    MetricsConfig,
    OutboundConfig,
    PoolConfig,
    RetryConfig,
    ServiceConfig,
    StateConfig,
    Timeouts,
    config_errors,
    parse_config,
)
from ._errors import (
    BulkheadFullError,
    CallError,
    CircuitOpenError,
    ConfigError,
    ConfigErrorCode,
    ConnectError,
    ConnectTimeoutError,
    DeadlineExceededError,
    EventLoopMismatchError,
    OutboundError,
    PoolTimeoutError,
    RateLimitedError,
    ReadError,
    ReadTimeoutError,
    RegistryClosedError,
    RejectedError,
    ServiceLookupError,
    TransportFailure,
    WriteTimeoutError,
)
from ._events import (
    AttemptFinished,
    BreakerTransition,
    CallFinished,
    CallRejected,
    CallStarted,
    Observer,
    RetryDenied,
    RetryScheduled,
)
from ._registry import Registry
from ._service import Service

__all__ = [
    "AttemptFinished",
    "BreakerConfig",
    "BreakerTransition",
    "BudgetConfig",
    "BulkheadFullError",
    "CallError",
    "CallFinished",
    "CallRejected",
    "CallStarted",
    "CircuitOpenError",
    "ConfigError",
    "ConfigErrorCode",
    "ConnectError",
    "ConnectTimeoutError",
    "DeadlineExceededError",
    "EventLoopMismatchError",
    "HealthConfig",
    "MetricsConfig",
    "Observer",
    "OutboundConfig",
    "OutboundError",
    "PoolConfig",
    "PoolTimeoutError",
    "RateLimitedError",
    "ReadError",
    "ReadTimeoutError",
    "Registry",
    "RegistryClosedError",
    "RejectedError",
    "RetryConfig",
    "RetryDenied",
    "RetryScheduled",
    "Service",
    "ServiceAsyncClient",
    "ServiceClient",
    "ServiceConfig",
    "ServiceLookupError",
    "ServiceSession",
    "StateConfig",
    "Timeouts",
    "TransportFailure",
    "WriteTimeoutError",
    "config_errors",
    "parse_config",
]
