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
    OutboundConfig,
    PoolConfig,
    RetryConfig,
    ServiceConfig,
    Timeouts,
    config_errors,
    parse_config,
)
from ._errors import (
    CallError,
    CircuitOpenError,
    ConfigError,
    ConnectError,
    ConnectTimeoutError,
    OutboundError,
    PoolTimeoutError,
    ReadError,
    ReadTimeoutError,
    RegistryClosedError,
    ServiceLookupError,
    TransportFailure,
    WriteTimeoutError,
)
from ._health import (
    CONFIG_ERROR_EXIT_CODE,
    ProbeResult,
    bearer_token_matches,
    http_status,
    probe_exit_code,
    render_probe,
    render_status,
    show_details,
    status_exit_code,
)
from ._registry import Registry
from ._service import Service

__all__ = [
    "CONFIG_ERROR_EXIT_CODE",
    "BreakerConfig",
    "BudgetConfig",
    "CallError",
    "CircuitOpenError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeoutError",
    "HealthConfig",
    "OutboundConfig",
    "OutboundError",
    "PoolConfig",
    "PoolTimeoutError",
    "ProbeResult",
    "ReadError",
    "ReadTimeoutError",
    "Registry",
    "RegistryClosedError",
    "RetryConfig",
    "Service",
    "ServiceAsyncClient",
    "ServiceClient",
    "ServiceConfig",
    "ServiceLookupError",
    "ServiceSession",
    "Timeouts",
    "TransportFailure",
    "WriteTimeoutError",
    "bearer_token_matches",
    "config_errors",
    "http_status",
    "parse_config",
    "probe_exit_code",
    "render_probe",
    "render_status",
    "show_details",
    "status_exit_code",
]
