"""Settings: frozen dataclasses and ``parse_config()``, the one place the ``OUTBOUND`` mapping is validated.

Every key is read here and checked before anything is built: type, range (with sane upper bounds, so no value can
overflow a client later), URLs as both requests and httpx would parse them, header names and values as both would
send them, and the TLS files. Every mistake found is a ``ConfigError`` naming the service and the key, and all of
them are reported at once, so nothing fails later with a ``KeyError``, an ``OverflowError`` or a library's
``InvalidURL``. Each dataclass field is documented where it is declared; the key names users write are derived
from the fields, so a new setting is declared once. The configuration reference (``docs/configuration.md``) gives
the reason for each default.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import ipaddress
import math
import os
import re
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from ._cache._settings import CacheConfig, FallbackConfig, parse_cache, parse_fallback
from ._errors import ConfigError, ConfigErrorCode

ClientKind = Literal["requests", "httpx", "httpx2"]
# The clients with httpx's API: httpx, and httpx2, its maintained fork (one backend serves both).
HTTPX_CLIENTS = ("httpx", "httpx2")
ShowDetails = Literal["never", "when_authorized", "always"]

# urllib3's Retry.DEFAULT_ALLOWED_METHODS: the idempotent methods (RFC 9110 section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "PUT", "TRACE"})
# Headers that carry credentials, always: never sent across origins on a redirect, never logged.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})

# Upper bounds: generous for any real deployment, and far below what overflows a client (a socket timeout of
# 10**100 seconds, 2.0 ** 1025 in a backoff, urllib3 pre-filling a queue of five million slots).
MAX_SECONDS = 86_400.0  # one day
MAX_RETRIES = 100
MAX_CONNECTIONS = 10_000
MAX_COUNT = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Seconds; ``None`` disables a limit (only when the settings say so)."""

    connect: float | None = 3.05
    """To establish the TCP/TLS connection."""
    read: float | None = 10.0
    """For each chunk of the response."""
    write: float | None = 10.0
    """For each chunk of the request (httpx only; requests has no write timeout)."""
    pool: float | None = 2.0
    """For a free pooled connection before ``PoolTimeoutError``."""
    total: float | None = 30.0
    """For the whole call, retries, waits and every read included."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    max_connections: int = 20
    """Connections per host: the pool's size."""
    max_keepalive: int = 20
    """Idle connections kept for reuse (httpx); defaults to ``max_connections``."""
    keepalive_expiry: float | None = 5.0
    """Seconds an idle httpx connection is kept."""
    max_connection_age: float | None = 120.0
    """Seconds a connection is used at most: older ones are closed when next returned to or taken from the pool."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetConfig:
    ratio: float = 0.2
    """Retries may add at most this fraction of the requests of the last 10 s."""
    min_per_second: float = 1.0
    """Retries per second always allowed, so a quiet service can still retry."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyConfig:
    header: str = "Idempotency-Key"
    """The header carrying the call's key; a key the caller set in it is kept."""
    methods: frozenset[str] = frozenset({"POST", "PATCH"})
    """Methods that get a key, and are then retried as the idempotent ones are."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    total: int = 2
    """Retries after the first attempt."""
    backoff_factor: float = 0.25
    """Wait before retry *n*: ``backoff_factor * 2 ** (n - 1)``, plus jitter, capped by ``backoff_max``."""
    backoff_max: float = 5.0
    """Cap on one backoff wait."""
    backoff_jitter: float = 0.25
    """Up to this many random seconds added to each wait."""
    status_forcelist: frozenset[int] = frozenset({429, 502, 503, 504})
    """Response statuses retried (for ``allowed_methods``)."""
    allowed_methods: frozenset[str] = IDEMPOTENT_METHODS
    """Methods retried after a read error, read timeout or retryable status."""
    respect_retry_after: bool = True
    """Wait what ``Retry-After`` asks on 413/429/503, instead of the backoff."""
    retry_after_max: float = 10.0
    """The longest ``Retry-After`` waited for; longer asks return the response at once."""
    budget: BudgetConfig | None = field(default_factory=BudgetConfig)
    """The retry budget shared by every thread and task of the service; ``None``: no budget."""
    idempotency_key: IdempotencyConfig | None = None
    """Send one key with every attempt of a call of these methods, and retry them; ``None``: off."""
    tokens: TokensConfig | None = None
    """One token pool for retries and hedges (gRPC's retry throttling); ``None``: off."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TokensConfig:
    max: float = 10.0
    """Tokens in the pool (it starts full); a failed attempt takes one, and retries stop at half."""
    ratio: float = 0.1
    """Tokens a successful attempt gives back."""
    scope: Literal["process", "fleet"] = "process"
    """Whose pool: this process's, or ``"fleet"``: one pool for every worker, in the state backend's Redis (each
    worker spends from its view and sends its changes every ``sync_interval``)."""
    sync_interval: float = 0.1
    """With ``scope: "fleet"``: seconds between a worker's syncs of its changes to the pool (one Redis script)."""


WindowType = Literal["count", "time"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowConfig:
    type: WindowType = "count"
    """``"count"``: the last ``size`` calls; ``"time"``: the calls of the last ``seconds``."""
    size: int = 100
    """Calls in a count window."""
    seconds: float = 30.0
    """Seconds of a time window."""


BreakerMode = Literal["consecutive", "rate"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    mode: BreakerMode = "consecutive"
    """What opens the breaker: ``fail_max`` failures in a row, or a failure (or slow-call) rate over a window."""
    fail_max: int = 5
    """Consecutive failed attempts that open the breaker (mode ``consecutive``)."""
    reset_timeout: float = 30.0
    """Seconds open before a trial call is admitted."""
    success_threshold: int = 1
    """Successful trial calls needed to close."""
    half_open_max_calls: int = 1
    """Trial calls admitted at once while half-open."""
    failure_statuses: frozenset[int] = frozenset({500, 502, 503, 504})
    """Response statuses that count as failures."""
    window: WindowConfig = field(default_factory=WindowConfig)
    """The calls a rate is measured over (mode ``rate``)."""
    failure_rate: float = 0.5
    """The share of failed calls in the window that opens the breaker (mode ``rate``)."""
    minimum_calls: int = 20
    """Calls the window must hold before a rate is judged (mode ``rate``)."""
    slow_call_duration: float | None = None
    """Seconds from which a call counts as slow (mode ``rate``); ``None``: slowness is not judged."""
    slow_call_rate: float = 1.0
    """The share of slow calls in the window that opens the breaker (mode ``rate``)."""
    enforce: bool = True
    """Refuse calls (``true``), or only count what it would have refused (``false``: observe-only)."""
    backoff: BreakerBackoffConfig | None = None
    """Grow the open period after each failed trial; ``None``: every opening lasts ``reset_timeout``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerBackoffConfig:
    factor: float = 2.0
    """The open period after the n-th failed trial in a row: ``reset_timeout * factor ** n``."""
    max: float = 300.0
    """Cap on the open period, in seconds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadConfig:
    max_in_flight: int
    """Calls in flight at once, across threads and tasks."""
    max_wait: float = 0.0
    """Seconds a call waits for room before ``BulkheadFullError`` (0: fail fast)."""
    enforce: bool = True
    """Refuse calls (``true``), or only count what it would have refused (``false``: observe-only)."""


RateScope = Literal["process", "fleet"]
ConcurrencyAlgorithm = Literal["gradient2", "vegas", "aimd"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConcurrencyConfig:
    limit: Literal["adaptive"] = "adaptive"
    """How the limit is set: ``"adaptive"``, learned from the latency of the upstream's answers."""
    algorithm: ConcurrencyAlgorithm = "gradient2"
    """How the limit follows latency: ``"gradient2"`` (Netflix), ``"vegas"`` or ``"aimd"``."""
    min: int = 1
    """The lowest the limit goes."""
    max: int = 200
    """The highest the limit goes."""
    initial: int = 20
    """The limit before anything is learned."""
    scope: Literal["process", "fleet"] = "process"
    """Where the limit holds: ``"process"``, or ``"fleet"``: one limit learned from every worker's answers and shared
    out among the workers by their demand, through the state backend's Redis (``state.backend: "redis"``)."""
    max_wait: float = 0.0
    """Seconds a critical call waits for room before ``ConcurrencyLimitedError`` (0: fail fast)."""
    sync_interval: float = 0.1
    """With ``scope: "fleet"``: seconds between a worker's syncs with the fleet (one Redis script each): how soon
    its samples reach the fleet's limit and a new share of the limit reaches it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleConfig:
    k: float = 2.0
    """Requests may exceed accepted ones by this factor before first attempts are refused (Google SRE's K)."""
    window: float = 120.0
    """Seconds of requests and accepts the refusal probability is computed over."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitConfig:
    rate: str
    """The limit in the ``limits`` library's syntax: ``"100/second"``, ``"10 per minute"``."""
    max_wait: float = 0.5
    """Seconds a call waits for a permit (never past its deadline) before ``RateLimitedError``."""
    scope: RateScope = "process"
    """The limit holds for this process, or for the whole fleet (through ``state``'s Redis)."""
    enforce: bool = True
    """Refuse calls (``true``), or only count what it would have refused (``false``: observe-only)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseConfig:
    statuses: frozenset[int] = frozenset({429, 503})
    """Responses whose ``Retry-After`` pauses the whole service (capped by ``retry.retry_after_max``)."""
    max_wait: float = 0.0
    """Seconds a call waits out a pause (never past its deadline) before ``RateLimitedError`` (0: fail fast)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeConfig:
    delay: float | Literal["p95"] = "p95"
    """Seconds without an answer before a second attempt goes out, or ``"p95"``: the service's live p95."""
    max: int = 1
    """Extra attempts at most."""
    methods: frozenset[str] = frozenset({"GET", "HEAD"})
    """Methods hedged (idempotent ones only)."""


FaultKind = Literal["connect_error", "read_timeout", "reset", "status", "latency", "trickle"]
FAULT_KINDS: tuple[FaultKind, ...] = ("connect_error", "read_timeout", "reset", "status", "latency", "trickle")


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultConfig:
    kind: FaultKind
    """What goes wrong: ``connect_error``, ``read_timeout``, ``reset``, ``status``, ``latency`` or ``trickle``."""
    rate: float = 0.05
    """The share of attempts this fault hits (0 to 1; the faults of a service add up to 1 at most)."""
    status: int = 503
    """The status a ``status`` fault answers with."""
    retry_after: float | None = None
    """The ``Retry-After`` seconds a ``status`` fault sends; ``None``: no header."""
    seconds: float = 0.5
    """How long a ``latency`` delays the answer, a ``trickle`` spreads the body, a ``read_timeout`` waits."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosConfig:
    enabled: bool = False
    """Inject the faults now (only where the process allows it: ``OUTBOUND_CHAOS=1`` or ``chaos.allow``)."""
    faults: tuple[FaultConfig, ...] = ()
    """The faults injected below the policy, each at its own rate."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosSwitch:
    allow: bool = False
    """Allow fault injection in this process (as ``OUTBOUND_CHAOS=1`` does): without it nothing is ever injected."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SdkConfig:
    """For a vendor SDK (openai, anthropic, stripe...) given the service's client: one retry layer, fast refusals."""

    answer_refusals: bool = True
    """Answer a refusal (open breaker, bulkhead, rate limit, pause, deadline, pool timeout) or an unusable client
    (registry closed, another event loop) with an HTTP response the SDKs do not retry, instead of an exception they
    retry."""
    final_responses: bool = True
    """Mark a retryable status that outbound already retried so the SDK does not retry it again, and answer a
    transport failure outbound gave up on (connect error, timeout, broken connection) the same way."""
    timeout_max: float | None = None
    """The longest per-call timeout an SDK may ask for (its read and total); ``None``: what it asks stands."""
    expected: Mapping[str, frozenset[int]] = field(default_factory=dict)
    """Per path (below ``base_url``, a prefix): statuses that are its answer, neither failures nor retried."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressConfig:
    allow_hosts: tuple[str, ...] = ()
    """Host patterns calls may go to (``"api.example.com"``, ``"*.example.com"``); empty: any host."""
    deny_hosts: tuple[str, ...] = ("localhost", "*.localhost", "metadata.google.internal")
    """Host patterns calls never go to (checked before ``allow_hosts``)."""
    allow_cidrs: tuple[str, ...] = ()
    """Address ranges allowed although not globally routable (``"10.20.0.0/16"``); none by default."""
    allow_ports: frozenset[int] | None = frozenset({80, 443})
    """Ports calls may go to; ``None``: any."""
    max_redirects: int = 5
    """Redirects a call follows at most (each hop is checked again)."""
    max_response_bytes: int | None = 10 * 1024 * 1024
    """The largest response body a call reads; ``None``: no limit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    url: str
    """One address of the upstream, a root URL like ``base_url`` (same scheme as the others)."""
    weight: int = 1
    """Its share of the traffic against the other endpoints of its priority."""
    priority: int = 0
    """Lower first: a higher priority gets calls only while no endpoint of a lower one is available."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierConfig:
    consecutive_failures: int = 5
    """Failures in a row (as the breaker counts them) that eject an endpoint."""
    base_ejection: float = 30.0
    """Seconds of the first ejection; each further ejection of the same endpoint lasts one more of these."""
    max_ejection: float = 300.0
    """The longest ejection, in seconds."""
    max_ejected_percent: int = 50
    """The share of endpoints that may be ejected at once (at least one may be)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryConfig:
    dns: str
    """The name whose A/AAAA records are the endpoints (a Kubernetes headless service: ``catalog.ns.svc``)."""
    port: int | None = None
    """The endpoints' port; ``None``: the scheme's (80, 443)."""
    scheme: Literal["http", "https"] = "https"
    """The endpoints' scheme; with ``https`` each is verified against ``dns``."""
    path: str = "/"
    """The root path of every endpoint, like ``base_url``'s."""
    refresh: float = 30.0
    """Seconds between lookups at most (a record's shorter TTL wins, 1 s at least)."""
    nameserver: str | None = None
    """``"host"`` or ``"host:port"`` of the DNS server to ask (Consul's ``"127.0.0.1:8600"``); ``None``: the
    system's."""


BalanceKind = Literal["p2c", "round_robin"]
TransportKind = Literal["httpcore", "aiohttp"]
DEADLINE_HEADERS = ("grpc-timeout", "x-request-timeout", "x-envoy-expected-rq-timeout-ms")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    name: str
    """The service's name in the settings (not a key users write)."""
    base_url: str
    """The upstream's root URL, with a trailing ``/`` and without credentials (those are in ``auth``)."""
    client: ClientKind = "requests"
    """Which client the service gets."""
    timeout: Timeouts = field(default_factory=Timeouts)
    """Per-phase and total timeouts."""
    pool: PoolConfig = field(default_factory=PoolConfig)
    """Connection pool limits."""
    retry: RetryConfig = field(default_factory=RetryConfig)
    """Retries, backoff and the retry budget."""
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    """The circuit breaker."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Default headers for every call."""
    sensitive_headers: frozenset[str] = frozenset()
    """More header names (lower case) that carry secrets, treated like ``Authorization``."""
    verify: bool | str = True
    """TLS verification, or a CA bundle file or directory."""
    cert: str | tuple[str, str] | None = None
    """A client certificate: one PEM file, or a (certificate, key) pair."""
    ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None
    """An ``ssl.SSLContext``, or a callable returning one per client, in place of ``verify`` and ``cert``."""
    proxy: str | None = None
    """A proxy for every call of the service."""
    trust_env: bool = True
    """Read proxies (and, for requests, CA bundles) from the environment, as both libraries do by default."""
    http2: bool = False
    """HTTP/2 (httpx and httpx2 only)."""
    follow_redirects: bool = False
    """Whether the httpx clients follow redirects (a requests session always does, unless a call says otherwise)."""
    critical: bool = False
    """Whether an open breaker takes the whole health report down."""
    probe: str | None = None
    """A path for ``outbound probe``."""
    shared: bool = True
    """With a fleet state backend, share this service's breaker, trials and stats with the fleet."""
    bulkhead: BulkheadConfig | None = None
    """A cap on calls in flight; ``None``: no cap (the pool still bounds connections)."""
    rate_limit: RateLimitConfig | None = None
    """A client-side rate limit; ``None``: none."""
    concurrency: ConcurrencyConfig | None = None
    """An adaptive limit on attempts in flight; ``None``: off."""
    throttle: ThrottleConfig | None = None
    """Client-side adaptive throttling of first attempts; ``None``: off."""
    pause: PauseConfig | None = field(default_factory=PauseConfig)
    """Pause the service while the upstream asks (429/503 with ``Retry-After``); ``None``: never."""
    hedge: HedgeConfig | None = None
    """Hedged attempts for slow answers; ``None``: off."""
    sdk: SdkConfig | None = None
    """How the service's client serves a vendor SDK (``_sdk.py``); ``None``: as any caller."""
    deadline_header: str | None = None
    """Send the call's remaining time in this header (one of ``DEADLINE_HEADERS``); ``None``: don't."""
    cache: CacheConfig | None = None
    """An HTTP cache above the policy (GET and HEAD); ``None``: off."""
    fallback: FallbackConfig | None = None
    """The answer of a call that failed, after the cache; ``None``: none."""
    egress: EgressConfig | None = None
    """Rules for a service that calls URLs its users give (SSRF guard); ``None``: off."""
    discovery: DiscoveryConfig | None = None
    """Endpoints from a DNS name's A/AAAA records, in place of ``base_url`` (``_discovery.py``); ``None``: off."""
    endpoints: tuple[EndpointConfig, ...] = ()
    """Several addresses of one upstream, in place of ``base_url`` (``_endpoints.py``); empty: ``base_url`` alone."""
    balance: BalanceKind = "p2c"
    """How a call picks among the endpoints: the less busy of two (``p2c``) or ``round_robin``."""
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    """When an endpoint is ejected, and for how long."""
    transport: TransportKind = "httpcore"
    """The async client's transport (httpx and httpx2 services): httpcore (the library's own) or aiohttp."""
    enforce: bool = True
    """The default of ``enforce`` for the service's breaker, bulkhead and rate limit (``false``: observe-only)."""
    chaos: ChaosConfig | None = None
    """Fault injection for game days and tests (``None``: none)."""
    chaos_allowed: bool = False
    """Whether the process allows fault injection (the allow switch): not a key users write."""
    auth: tuple[str, str] | None = None
    """Basic credentials taken from ``base_url`` (``https://user:pass@host/``): not a key users write."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryConfig:
    interval: float = 10.0
    """Seconds per bucket of a service's history (the trends of the status page, ``?history=1``)."""
    buckets: int = 90
    """Buckets kept: ``interval * buckets`` seconds of history (15 minutes by default)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    show_details: ShowDetails = "when_authorized"
    """Who sees the full report at ``/health/outbound``."""
    token: str | None = None
    """A bearer token that authorizes the full report."""
    history: HistoryConfig | None = None
    """Keep each service's recent history in buckets (``true``, or a mapping); ``None``: kept by nobody."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    prometheus: bool = False
    """Register outbound's metrics on prometheus_client's default registry (extra ``outbound-http[prometheus]``)."""
    otel: bool = False
    """Record outbound's metrics through OpenTelemetry's meter API (extra ``outbound-http[otel]``)."""


StateBackend = Literal["memory", "redis"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StateConfig:
    backend: StateBackend = "memory"
    """Where breakers, trials and stats live: this process alone, or a Redis shared by the fleet."""
    url: str = "redis://127.0.0.1:6379/0"
    """The Redis to share state through (redis-py URL: ``redis://``, ``rediss://``, ``unix://``; or
    ``redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]`` for a primary behind Sentinel)."""
    cluster: bool = False
    """``url`` names a node of a Redis Cluster: keys share one hash tag (``{prefix}``), so every script runs there."""
    prefix: str = "outbound"
    """The start of every Redis key this registry writes."""
    sync_interval: float = 1.0
    """Seconds between a process's publishes of its stats, and its polls of the fleet's breaker states."""
    timeout: float = 0.05
    """Seconds allowed per Redis command."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadlineConfig:
    min_time: float = 0.005
    """A call that starts with less of its deadline left fails fast with ``DeadlineExceededError``."""
    max: float = 300.0
    """The longest budget an inbound request may ask for (longer ones are cut to it)."""
    headers: tuple[str, ...] = DEADLINE_HEADERS
    """Inbound headers the middleware reads a budget from, in order (lower case)."""
    default: float | None = None
    """The budget of an inbound request that sends none; ``None``: no deadline."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundConfig:
    services: Mapping[str, ServiceConfig]
    health: HealthConfig = field(default_factory=HealthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    state: StateConfig = field(default_factory=StateConfig)
    deadline: DeadlineConfig = field(default_factory=DeadlineConfig)
    chaos: ChaosSwitch = field(default_factory=ChaosSwitch)


def keys_of(cls: type, *, exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The settings keys of a config dataclass: its fields, minus those the parser derives."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in exclude)


DERIVED_SERVICE_FIELDS = ("name", "auth", "chaos_allowed")
TOP_LEVEL_KEYS = ("defaults", "services", "health", "metrics", "state", "deadline", "chaos")
# Optional dependencies: the import that must work, and the extra that brings it.
EXTRAS = {
    "prometheus": ("prometheus_client", "outbound-http[prometheus]"),
    "otel": ("opentelemetry.metrics", "outbound-http[otel]"),
    "redis": ("redis", "outbound-http[redis]"),
    "ratelimit": ("limits", "outbound-http[ratelimit]"),
    "aiohttp": ("httpx_aiohttp", "outbound-http[aiohttp]"),
    "httpx2": ("httpx2", "outbound-http[httpx2]"),
    "dns": ("dns.resolver", "outbound-http[dns]"),
    "cache": ("hishel", "outbound-http[cache]"),
}
# What an extra needs for an httpx2 service instead (httpx-aiohttp's transport for httpx2).
_HTTPX2_MODULES = {"aiohttp": "httpx_aiohttp.httpx2"}
SERVICE_KEYS = keys_of(ServiceConfig, exclude=DERIVED_SERVICE_FIELDS)

# RFC 9110 token characters for header names; printable ASCII values (httpx encodes values as ASCII, requests
# refuses CR/LF and leading whitespace).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HEADER_VALUE = re.compile(r"([\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?)?\Z")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?\Z")
_METHOD = re.compile(r"[A-Za-z]+\Z")
_ABSOLUTE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

T = TypeVar("T")


class _Skip(Exception):
    """A value could not be read; its mistake is already recorded."""


# What a section must be, in its error message: every form the key accepts, so "timeout": "5" is told a number works.
_MAPPING = "a mapping (dict)"
_MAPPING_OR_NULL = "a mapping (dict) or null"


class _Reader:
    """Reads one mapping, recording a ConfigError (service, dotted key path) for every mistake it finds.

    Accessors return the value read, or the default after recording the mistake, so one pass finds them all.
    """

    def __init__(
        self,
        mapping: Any,
        service: str | None,
        prefix: str,
        allowed: tuple[str, ...],
        errors: list[ConfigError],
        *,
        accepted: str = _MAPPING,
    ) -> None:
        self.service = service
        self.prefix = prefix
        self.errors = errors
        self.mapping: Mapping[str, Any] = {}
        if not isinstance(mapping, Mapping):
            self.fail(f"must be {accepted}, got {type(mapping).__name__}", key=None)
            raise _Skip
        for key in mapping:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(allowed)}"
                self.fail(f"unknown key{suggestion}", key=str(key), code="unknown_key")
        self.mapping = mapping

    def path(self, key: str | None) -> str | None:
        if key is None:
            return self.prefix or None
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, message: str, *, key: str | None, code: ConfigErrorCode = "type") -> None:
        self.errors.append(ConfigError(message, service=self.service, key=self.path(key), code=code))

    def read(self, key: str, default: T, parse: Callable[[Any], T]) -> T:
        """``parse(value)`` for a present key (it raises ``_Skip`` after recording a mistake), else ``default``."""
        if key not in self.mapping:
            return default
        try:
            return parse(self.mapping[key])
        except _Skip:
            return default

    def seconds(
        self, key: str, default: float | None, *, allow_none: bool = False, allow_zero: bool = True
    ) -> float | None:
        def parse(value: Any) -> float | None:
            if value is None:
                if allow_none:
                    return None
                self.fail("must be a number, not null", key=key)
                raise _Skip
            return self._number(key, value, allow_zero=allow_zero, maximum=MAX_SECONDS)

        return self.read(key, default, parse)

    def required_seconds(self, key: str, default: float, *, allow_zero: bool = True) -> float:
        value = self.seconds(key, default, allow_zero=allow_zero)
        return default if value is None else value

    def fraction(self, key: str, default: float, *, maximum: float = 1.0) -> float:
        return self.read(key, default, lambda value: self._number(key, value, allow_zero=True, maximum=maximum))

    def _number(self, key: str, value: Any, *, allow_zero: bool, maximum: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"must be a number, got {_shown(value)}", key=key)
            raise _Skip
        # Compare before converting: an int like 10**400 has no float.
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(f"must be a finite number, got {value!r}", key=key)
            raise _Skip
        if value < 0 or (value == 0 and not allow_zero):
            self.fail(f"must be {'>= 0' if allow_zero else '> 0'}, got {_shown(value)}", key=key, code="range")
            raise _Skip
        if value > maximum:
            self.fail(f"must be <= {maximum:g}, got {_shown(value)}", key=key, code="range")
            raise _Skip
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        def parse(value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(f"must be an integer, got {_shown(value)}", key=key)
                raise _Skip
            if value < minimum:
                self.fail(f"must be >= {minimum}, got {_shown(value)}", key=key, code="range")
                raise _Skip
            if value > maximum:
                self.fail(f"must be <= {maximum}, got {_shown(value)}", key=key, code="range")
                raise _Skip
            return value

        return self.read(key, default, parse)

    def boolean(self, key: str, default: bool) -> bool:
        def parse(value: Any) -> bool:
            if not isinstance(value, bool):
                self.fail(f"must be true or false, got {_shown(value)}", key=key)
                raise _Skip
            return value

        return self.read(key, default, parse)

    def choice(self, key: str, default: str, choices: tuple[str, ...], code: ConfigErrorCode = "unsupported") -> Any:
        """One of ``choices`` (the caller's ``Literal`` type), or ``default`` after recording the mistake."""

        def parse(value: Any) -> Any:
            if value not in choices:
                names = " or ".join(repr(choice) for choice in choices)
                self.fail(f"must be {names}, got {_shown(value)}", key=key, code=code)
                raise _Skip
            return value

        return self.read(key, default, parse)

    def optional_string(self, key: str) -> str | None:
        def parse(value: Any) -> str | None:
            if value is not None and (not isinstance(value, str) or not value):
                self.fail(f"must be a non-empty string or null, got {_shown(value)}", key=key)
                raise _Skip
            return value

        return self.read(key, None, parse)

    def statuses(self, key: str, default: frozenset[int]) -> frozenset[int]:
        def parse(value: Any) -> frozenset[int]:
            if isinstance(value, str | bytes) or not isinstance(value, list | tuple | set | frozenset):
                self.fail(f"must be a list of HTTP status codes, got {_shown(value)}", key=key)
                raise _Skip
            for status in value:
                if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                    self.fail(f"must contain HTTP status codes (100-599), got {_shown(status)}", key=key, code="range")
                    raise _Skip
            return frozenset(value)

        return self.read(key, default, parse)

    def methods(self, key: str, default: frozenset[str]) -> frozenset[str]:
        def parse(value: Any) -> frozenset[str]:
            if isinstance(value, str | bytes) or not isinstance(value, list | tuple | set | frozenset):
                self.fail(f"must be a list of HTTP methods, got {_shown(value)}", key=key)
                raise _Skip
            for method in value:
                if not isinstance(method, str) or not _METHOD.match(method):
                    self.fail(f"must contain HTTP method names like 'GET', got {_shown(method)}", key=key)
                    raise _Skip
            return frozenset(method.upper() for method in value)

        return self.read(key, default, parse)

    def sub(self, key: str, allowed: tuple[str, ...], *, accepted: str = _MAPPING) -> _Reader:
        """A reader for the nested mapping at ``key`` (an empty one when absent); raises ``_Skip`` when it is not a
        mapping, after recording that it must be ``accepted`` (every form the key takes, for the message)."""
        path = self.path(key) or key
        return _Reader(self.mapping.get(key, {}), self.service, path, allowed, self.errors, accepted=accepted)


def _shown(value: Any) -> str:
    # Values are quoted in messages to help fix them, but never a long one (a token pasted in the wrong key).
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return (
        text
        if len(text) <= 40
        else f"a {type(value).__name__} of length {len(value) if hasattr(value, '__len__') else '?'}"
    )


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# -- sections -------------------------------------------------------------------------------------------------------


def _parse_timeouts(reader: _Reader) -> Timeouts:
    value = reader.mapping.get("timeout", {})
    if value is None:
        return Timeouts(connect=None, read=None, write=None, pool=None, total=None)
    if isinstance(value, int | float) and not isinstance(value, bool):
        # One number bounds each phase, as httpx.Timeout(10) does.
        seconds = reader.required_seconds("timeout", 1.0, allow_zero=False)
        return Timeouts(connect=seconds, read=seconds, write=seconds, pool=seconds, total=_default_total(seconds))
    try:
        sub = reader.sub("timeout", keys_of(Timeouts), accepted="a number or a mapping (dict), or null for no timeouts")
    except _Skip:
        return Timeouts()
    defaults = Timeouts()
    phases = {
        phase: sub.seconds(phase, getattr(defaults, phase), allow_none=True, allow_zero=False)
        for phase in ("connect", "read", "write", "pool")
    }
    if "total" in sub.mapping:
        total = sub.seconds("total", None, allow_none=True, allow_zero=False)
    else:
        total = _default_total(*phases.values())
    return Timeouts(**phases, total=total)


def _default_total(*phases: float | None) -> float:
    # The default deadline never undercuts a longer per-phase limit the settings ask for: "read": 60 means a
    # read may take 60 s, not that the call is cut at 30 s.
    return max([Timeouts().total or 0.0, *(phase for phase in phases if phase is not None)])


def _parse_pool(reader: _Reader) -> PoolConfig:
    try:
        sub = reader.sub("pool", keys_of(PoolConfig))
    except _Skip:
        return PoolConfig()
    defaults = PoolConfig()
    max_connections = sub.integer("max_connections", defaults.max_connections, minimum=1, maximum=MAX_CONNECTIONS)
    # Keep every connection alive by default: a pool sized to the worker's concurrency has no idle surplus.
    max_keepalive = sub.integer("max_keepalive", max_connections, minimum=0, maximum=MAX_CONNECTIONS)
    if max_keepalive > max_connections:
        sub.fail(
            f"must be <= max_connections ({max_connections}), got {max_keepalive}", key="max_keepalive", code="range"
        )
        max_keepalive = max_connections
    return PoolConfig(
        max_connections=max_connections,
        max_keepalive=max_keepalive,
        keepalive_expiry=sub.seconds("keepalive_expiry", defaults.keepalive_expiry, allow_none=True),
        max_connection_age=sub.seconds(
            "max_connection_age", defaults.max_connection_age, allow_none=True, allow_zero=False
        ),
    )


def _parse_budget(reader: _Reader) -> BudgetConfig | None:
    if "budget" in reader.mapping and reader.mapping["budget"] is None:
        return None
    defaults = BudgetConfig()
    try:
        sub = reader.sub("budget", keys_of(BudgetConfig), accepted=_MAPPING_OR_NULL)
    except _Skip:
        return defaults
    return BudgetConfig(
        ratio=sub.fraction("ratio", defaults.ratio, maximum=100.0),
        min_per_second=sub.fraction("min_per_second", defaults.min_per_second, maximum=float(MAX_COUNT)),
    )


def _parse_retry(reader: _Reader) -> RetryConfig:
    if "retry" in reader.mapping and reader.mapping["retry"] is None:
        return RetryConfig(total=0)
    try:
        sub = reader.sub("retry", keys_of(RetryConfig), accepted=_MAPPING_OR_NULL)
    except _Skip:
        return RetryConfig()
    defaults = RetryConfig()
    return RetryConfig(
        total=sub.integer("total", defaults.total, minimum=0, maximum=MAX_RETRIES),
        backoff_factor=sub.required_seconds("backoff_factor", defaults.backoff_factor),
        backoff_max=sub.required_seconds("backoff_max", defaults.backoff_max),
        backoff_jitter=sub.required_seconds("backoff_jitter", defaults.backoff_jitter),
        status_forcelist=sub.statuses("status_forcelist", defaults.status_forcelist),
        allowed_methods=sub.methods("allowed_methods", defaults.allowed_methods),
        respect_retry_after=sub.boolean("respect_retry_after", defaults.respect_retry_after),
        retry_after_max=sub.required_seconds("retry_after_max", defaults.retry_after_max),
        budget=_parse_budget(sub),
        idempotency_key=_parse_idempotency(sub),
        tokens=_parse_tokens(sub),
    )


def _parse_tokens(reader: _Reader) -> TokensConfig | None:
    sub = _optional_sub(reader, "tokens", TokensConfig)
    if sub is None:
        return None
    defaults = TokensConfig()
    maximum = sub.fraction("max", defaults.max, maximum=float(MAX_COUNT))
    if maximum < 1:
        sub.fail(f"must be >= 1 (a failure costs one token), got {_shown(maximum)}", key="max", code="range")
        maximum = defaults.max
    return TokensConfig(
        max=maximum,
        ratio=sub.fraction("ratio", defaults.ratio, maximum=maximum),
        scope=sub.choice("scope", defaults.scope, ("process", "fleet")),
        sync_interval=sub.required_seconds("sync_interval", defaults.sync_interval, allow_zero=False),
    )


def _optional_sub(reader: _Reader, key: str, cls: type) -> _Reader | None:
    """The reader of an optional section ``key`` (fields of ``cls``), or ``None`` when it is absent, null or broken."""
    if reader.mapping.get(key) is None:
        return None
    try:
        return reader.sub(key, keys_of(cls), accepted=_MAPPING_OR_NULL)
    except _Skip:
        return None


def _parse_idempotency(reader: _Reader) -> IdempotencyConfig | None:
    sub = _optional_sub(reader, "idempotency_key", IdempotencyConfig)
    if sub is None:
        return None
    defaults = IdempotencyConfig()
    header = sub.mapping.get("header", defaults.header)
    if not isinstance(header, str) or not _HEADER_NAME.match(header):
        sub.fail(f"must be a header name, got {_shown(header)}", key="header")
        header = defaults.header
    return IdempotencyConfig(header=header, methods=sub.methods("methods", defaults.methods))


def _parse_breaker(reader: _Reader) -> BreakerConfig:
    try:
        sub = reader.sub("breaker", keys_of(BreakerConfig))
    except _Skip:
        return BreakerConfig()
    defaults = BreakerConfig()
    return BreakerConfig(
        mode=sub.choice("mode", defaults.mode, ("consecutive", "rate")),
        window=_parse_window(sub),
        failure_rate=_rate(sub, "failure_rate", defaults.failure_rate),
        minimum_calls=sub.integer("minimum_calls", defaults.minimum_calls, minimum=1, maximum=MAX_COUNT),
        slow_call_duration=sub.seconds("slow_call_duration", None, allow_none=True, allow_zero=False),
        slow_call_rate=_rate(sub, "slow_call_rate", defaults.slow_call_rate),
        fail_max=sub.integer("fail_max", defaults.fail_max, minimum=1, maximum=MAX_COUNT),
        reset_timeout=sub.required_seconds("reset_timeout", defaults.reset_timeout, allow_zero=False),
        success_threshold=sub.integer("success_threshold", defaults.success_threshold, minimum=1, maximum=MAX_COUNT),
        half_open_max_calls=sub.integer(
            "half_open_max_calls", defaults.half_open_max_calls, minimum=1, maximum=MAX_COUNT
        ),
        failure_statuses=sub.statuses("failure_statuses", defaults.failure_statuses),
        enforce=sub.boolean("enforce", _enforce(reader)),
        backoff=_parse_breaker_backoff(sub),
    )


def _parse_breaker_backoff(reader: _Reader) -> BreakerBackoffConfig | None:
    sub = _optional_sub(reader, "backoff", BreakerBackoffConfig)
    if sub is None:
        return None
    defaults = BreakerBackoffConfig()
    factor = sub.fraction("factor", defaults.factor, maximum=100.0)
    if factor < 1:
        sub.fail(f"must be >= 1 (the open period grows), got {_shown(factor)}", key="factor", code="range")
        factor = defaults.factor
    return BreakerBackoffConfig(factor=factor, max=sub.required_seconds("max", defaults.max, allow_zero=False))


def _rate(reader: _Reader, key: str, default: float) -> float:
    value = reader.fraction(key, default, maximum=1.0)
    if value == 0:
        reader.fail("must be > 0 (0 would open the breaker on any call)", key=key, code="range")
        return default
    return value


def _parse_window(reader: _Reader) -> WindowConfig:
    try:
        sub = reader.sub("window", keys_of(WindowConfig))
    except _Skip:
        return WindowConfig()
    defaults = WindowConfig()
    kind = sub.choice("type", defaults.type, ("count", "time"))
    if kind == "count" and "seconds" in sub.mapping:
        sub.fail("belongs to a time window ({'type': 'time', 'seconds': ...})", key="seconds", code="unsupported")
    if kind == "time" and "size" in sub.mapping:
        sub.fail("belongs to a count window ({'type': 'count', 'size': ...})", key="size", code="unsupported")
    return WindowConfig(
        type=kind,
        size=sub.integer("size", defaults.size, minimum=1, maximum=MAX_COUNT),
        seconds=sub.required_seconds("seconds", defaults.seconds, allow_zero=False),
    )


def _parse_bulkhead(reader: _Reader) -> BulkheadConfig | None:
    sub = _optional_sub(reader, "bulkhead", BulkheadConfig)
    if sub is None:
        return None
    if "max_in_flight" not in sub.mapping:
        sub.fail("is required: the most calls in flight at once", key="max_in_flight", code="missing")
    return BulkheadConfig(
        max_in_flight=sub.integer("max_in_flight", 1, minimum=1, maximum=MAX_COUNT),
        max_wait=sub.required_seconds("max_wait", 0.0),
        enforce=sub.boolean("enforce", _enforce(reader)),
    )


def _parse_concurrency(reader: _Reader) -> ConcurrencyConfig | None:
    sub = _optional_sub(reader, "concurrency", ConcurrencyConfig)
    if sub is None:
        return None
    defaults = ConcurrencyConfig()
    sub.choice("limit", defaults.limit, ("adaptive",))
    minimum = sub.integer("min", defaults.min, minimum=1, maximum=MAX_COUNT)
    maximum = sub.integer("max", max(defaults.max, minimum), minimum=1, maximum=MAX_COUNT)
    if minimum > maximum:
        sub.fail(f"must be <= max ({maximum}), got {minimum}", key="min", code="range")
        minimum = maximum
    initial = sub.integer("initial", min(max(defaults.initial, minimum), maximum), minimum=1, maximum=MAX_COUNT)
    if not minimum <= initial <= maximum:
        sub.fail(f"must be between min ({minimum}) and max ({maximum}), got {initial}", key="initial", code="range")
        initial = min(max(initial, minimum), maximum)
    scope = sub.choice("scope", defaults.scope, ("process", "fleet"))
    return ConcurrencyConfig(
        algorithm=sub.choice("algorithm", defaults.algorithm, ("gradient2", "vegas", "aimd")),
        min=minimum,
        max=maximum,
        initial=initial,
        scope=scope,
        max_wait=sub.required_seconds("max_wait", defaults.max_wait),
        sync_interval=sub.required_seconds("sync_interval", defaults.sync_interval, allow_zero=False),
    )


def _parse_throttle(reader: _Reader) -> ThrottleConfig | None:
    sub = _optional_sub(reader, "throttle", ThrottleConfig)
    if sub is None:
        return None
    defaults = ThrottleConfig()
    k = sub.fraction("k", defaults.k, maximum=1000.0)
    if k < 1:
        sub.fail(
            f"must be >= 1 (below 1 it refuses calls to a healthy upstream), got {_shown(k)}", key="k", code="range"
        )
        k = defaults.k
    window = sub.required_seconds("window", defaults.window, allow_zero=False)
    if window < 1 or window > 3600:
        sub.fail(f"must be from 1 to 3600 seconds, got {_shown(window)}", key="window", code="range")
        window = defaults.window
    return ThrottleConfig(k=k, window=window)


def _parse_rate_limit(reader: _Reader) -> RateLimitConfig | None:
    sub = _optional_sub(reader, "rate_limit", RateLimitConfig)
    if sub is None:
        return None
    rate = sub.mapping.get("rate")
    if rate is None:
        sub.fail("is required, e.g. '100/second' or '10 per minute'", key="rate", code="missing")
        rate = "1/second"
    elif not isinstance(rate, str):
        sub.fail(f"must be a string like '100/second', got {_shown(rate)}", key="rate")
        rate = "1/second"
    elif not _installed("limits"):
        _require_extra(sub, "rate", "ratelimit")
    else:
        from limits import parse_many

        try:
            parsed = parse_many(rate)
        except ValueError:
            parsed = []
        if len(parsed) != 1 or parsed[0].amount < 1:
            sub.fail(f"must be one limit like '100/second' or '10 per minute', got {_shown(rate)}", key="rate")
            rate = "1/second"
    scope = sub.choice("scope", "process", ("process", "fleet"))
    return RateLimitConfig(
        rate=rate,
        max_wait=sub.required_seconds("max_wait", 0.5),
        scope=scope,
        enforce=sub.boolean("enforce", _enforce(reader)),
    )


def _enforce(reader: _Reader) -> bool:
    """The service's ``enforce`` (the sections' default); a mistake in it is reported where it is read."""
    value = reader.mapping.get("enforce", True)
    return value if isinstance(value, bool) else True


def _parse_pause(reader: _Reader) -> PauseConfig | None:
    if "pause" in reader.mapping and reader.mapping["pause"] is None:
        return None
    try:
        sub = reader.sub("pause", keys_of(PauseConfig), accepted=_MAPPING_OR_NULL)
    except _Skip:
        return PauseConfig()
    defaults = PauseConfig()
    return PauseConfig(
        statuses=sub.statuses("statuses", defaults.statuses),
        max_wait=sub.required_seconds("max_wait", defaults.max_wait),
    )


def _parse_sdk(reader: _Reader) -> SdkConfig | None:
    sub = _optional_sub(reader, "sdk", SdkConfig)
    if sub is None:
        return None
    defaults = SdkConfig()
    sdk = SdkConfig(
        answer_refusals=sub.boolean("answer_refusals", defaults.answer_refusals),
        final_responses=sub.boolean("final_responses", defaults.final_responses),
        timeout_max=sub.seconds("timeout_max", None, allow_none=True, allow_zero=False),
        expected=_parse_expected(sub),
    )
    return sdk if sdk != SdkConfig(answer_refusals=False, final_responses=False) else None  # all off: absent


def _parse_expected(reader: _Reader) -> Mapping[str, frozenset[int]]:
    raw = reader.mapping.get("expected", {})
    if not isinstance(raw, Mapping):
        reader.fail(f"must be a mapping of paths to lists of statuses, got {_shown(raw)}", key="expected")
        return {}
    paths = _Reader(raw, reader.service, reader.path("expected") or "expected", tuple(map(str, raw)), reader.errors)
    expected = {}
    for path in raw:
        if not isinstance(path, str) or not path.strip("/") or any(ord(char) < 0x21 for char in path):
            paths.fail("must be a path below base_url, like 'v1/sys/health'", key=str(path), code="url")
            continue
        statuses = paths.statuses(path, frozenset())
        if statuses:
            expected[path.lstrip("/")] = statuses
    return expected


def _parse_hedge(reader: _Reader) -> HedgeConfig | None:
    sub = _optional_sub(reader, "hedge", HedgeConfig)
    if sub is None:
        return None
    defaults = HedgeConfig()
    delay: float | Literal["p95"] = defaults.delay
    raw_delay = sub.mapping.get("delay", defaults.delay)
    if raw_delay == "p95":
        delay = "p95"
    elif isinstance(raw_delay, bool) or not isinstance(raw_delay, int | float):
        sub.fail(f"must be a number of seconds or 'p95', got {_shown(raw_delay)}", key="delay")
    else:
        delay = sub.required_seconds("delay", 0.1, allow_zero=False)
    methods = sub.methods("methods", defaults.methods)
    unsafe = sorted(methods - IDEMPOTENT_METHODS)
    if unsafe:
        sub.fail(
            f"must be idempotent methods (a hedge sends the request twice), got {', '.join(unsafe)}",
            key="methods",
            code="unsupported",
        )
    return HedgeConfig(delay=delay, max=sub.integer("max", defaults.max, minimum=1, maximum=10), methods=methods)


def _parse_endpoints(reader: _Reader) -> tuple[EndpointConfig, ...]:
    """``endpoints``: URL strings or ``{url, weight, priority}``; a ConfigError for an empty list, a duplicate, a
    scheme that differs from the others' or ``base_url`` given too."""
    raw = reader.mapping.get("endpoints")
    if reader.mapping.get("base_url") is not None:
        reader.fail("is given with base_url: give one of them (endpoints replaces base_url)", key="endpoints")
        return ()
    if isinstance(raw, str | bytes | Mapping) or not isinstance(raw, list | tuple) or not raw:
        reader.fail(
            f"must be a non-empty list of URLs or {{url, weight, priority}}, got {_shown(raw)}", key="endpoints"
        )
        return ()
    found: list[EndpointConfig] = []
    for index, item in enumerate(raw):
        key = f"endpoints[{index}]"
        entry: Any = {"url": item} if isinstance(item, str) else item
        if not isinstance(entry, Mapping) or set(entry) - {"url", "weight", "priority"} or "url" not in entry:
            reader.fail(f"must be a URL or {{url, weight, priority}}, got {_shown(item)}", key=key)
            return ()
        url, weight, priority = entry["url"], entry.get("weight", 1), entry.get("priority", 0)
        problem: tuple[str, ConfigErrorCode] | None = ("must be a string", "type")
        if isinstance(url, str):
            problem = url_problem(url, ("http", "https"))
        if problem is None and (urlsplit(url).query or urlsplit(url).fragment or urlsplit(url).username):
            problem = ("must not contain credentials, a query string or a fragment", "url")
        if problem is not None:
            reader.fail(problem[0], key=f"{key}.url", code=problem[1])
            return ()
        for name, value, minimum in (("weight", weight, 1), ("priority", priority, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= 1000:
                reader.fail(
                    f"must be an integer from {minimum} to 1000, got {_shown(value)}", key=f"{key}.{name}", code="range"
                )
                return ()
        url = url if url.endswith("/") else url + "/"
        if any(other.url == url for other in found):
            reader.fail(f"lists {url!r} twice", key="endpoints", code="unsupported")
            return ()
        if found and urlsplit(url).scheme != urlsplit(found[0].url).scheme:
            reader.fail(
                f"mixes schemes ({urlsplit(found[0].url).scheme} and {urlsplit(url).scheme}): one upstream, one scheme",
                key="endpoints",
                code="unsupported",
            )
            return ()
        found.append(EndpointConfig(url=url, weight=weight, priority=priority))
    return tuple(found)


def _parse_discovery(reader: _Reader) -> DiscoveryConfig | None:
    sub = _optional_sub(reader, "discovery", DiscoveryConfig)
    if sub is None:
        return None
    for other in ("base_url", "endpoints"):
        if reader.mapping.get(other) is not None:
            reader.fail(f"is given with {other}: give one of them", key="discovery")
            return None
    name = sub.mapping.get("dns")
    if not isinstance(name, str) or url_problem(f"http://{name}/", ("http",)) is not None or "/" in name:
        sub.fail(f"must be a DNS name, got {_shown(name)}", key="dns", code="missing" if name is None else "url")
        return None
    port = sub.mapping.get("port")
    if port is not None:
        port = sub.integer("port", 443, minimum=1, maximum=65535)
    path = sub.mapping.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/") or any(ord(char) < 0x21 for char in path) or "?" in path:
        sub.fail(f"must be a path starting with '/', got {_shown(path)}", key="path", code="url")
        path = "/"
    _require_extra(reader, "discovery", "dns")
    nameserver = sub.optional_string("nameserver")
    if nameserver is not None and nameserver.count(":") == 1 and not nameserver.partition(":")[2].isdigit():
        sub.fail(f"must be 'host' or 'host:port', got {_shown(nameserver)}", key="nameserver", code="url")
        nameserver = None
    return DiscoveryConfig(
        dns=name.rstrip("."),
        port=port,
        scheme=sub.choice("scheme", "https", ("http", "https")),
        path=path if path.endswith("/") else path + "/",
        refresh=sub.required_seconds("refresh", 30.0, allow_zero=False),
        nameserver=nameserver,
    )


def _parse_outlier(reader: _Reader) -> OutlierConfig:
    try:
        sub = reader.sub("outlier", keys_of(OutlierConfig))
    except _Skip:
        return OutlierConfig()
    defaults = OutlierConfig()
    base = sub.required_seconds("base_ejection", defaults.base_ejection, allow_zero=False)
    longest = sub.required_seconds("max_ejection", defaults.max_ejection, allow_zero=False)
    if longest < base:
        sub.fail(f"must be at least base_ejection ({base:g}), got {longest:g}", key="max_ejection", code="range")
        longest = base
    return OutlierConfig(
        consecutive_failures=sub.integer(
            "consecutive_failures", defaults.consecutive_failures, minimum=1, maximum=1000
        ),
        base_ejection=base,
        max_ejection=longest,
        max_ejected_percent=sub.integer("max_ejected_percent", defaults.max_ejected_percent, minimum=0, maximum=100),
    )


def _parse_egress(reader: _Reader) -> EgressConfig | None:
    sub = _optional_sub(reader, "egress", EgressConfig)
    if sub is None:
        return None
    defaults = EgressConfig()
    return EgressConfig(
        allow_hosts=sub.read(
            "allow_hosts", defaults.allow_hosts, lambda value: _host_patterns(sub, "allow_hosts", value)
        ),
        deny_hosts=sub.read("deny_hosts", defaults.deny_hosts, lambda value: _host_patterns(sub, "deny_hosts", value)),
        allow_cidrs=sub.read("allow_cidrs", defaults.allow_cidrs, lambda value: _cidrs(sub, value)),
        allow_ports=sub.read("allow_ports", defaults.allow_ports, lambda value: _ports(sub, value)),
        max_redirects=sub.integer("max_redirects", defaults.max_redirects, minimum=0, maximum=MAX_RETRIES),
        max_response_bytes=sub.read(
            "max_response_bytes",
            defaults.max_response_bytes,
            lambda value: None if value is None else _byte_count(sub, value),
        ),
    )


def _string_list(reader: _Reader, key: str, value: Any, what: str) -> list[str]:
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple | set | frozenset):
        reader.fail(f"must be a list of {what}, got {_shown(value)}", key=key)
        raise _Skip
    for item in value:
        if not isinstance(item, str) or not item:
            reader.fail(f"must contain {what}, got {_shown(item)}", key=key)
            raise _Skip
    return list(value)


def _host_patterns(reader: _Reader, key: str, value: Any) -> tuple[str, ...]:
    from ._egress import normalize_host  # imported by services that set egress only

    patterns = []
    for pattern in _string_list(reader, key, value, "host patterns like 'api.example.com' or '*.example.com'"):
        name = pattern[2:] if pattern.startswith("*.") else pattern
        try:
            normalized = normalize_host(name)
        except ValueError:
            normalized = ""
        if not normalized or not all(_HOST_LABEL.match(label) for label in normalized.split(".")):
            reader.fail(
                f"must contain host names, optionally starting with '*.', got {_shown(pattern)}", key=key, code="url"
            )
            raise _Skip
        patterns.append(f"*.{normalized}" if pattern.startswith("*.") else normalized)
    return tuple(patterns)


def _cidrs(reader: _Reader, value: Any) -> tuple[str, ...]:
    networks = []
    for cidr in _string_list(reader, "allow_cidrs", value, "address ranges like '10.0.0.0/8'"):
        try:
            networks.append(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError:
            reader.fail(f"must contain address ranges like '10.0.0.0/8', got {_shown(cidr)}", key="allow_cidrs")
            raise _Skip from None
    return tuple(networks)


def _ports(reader: _Reader, value: Any) -> frozenset[int] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple | set | frozenset):
        reader.fail(f"must be a list of ports or null (any port), got {_shown(value)}", key="allow_ports")
        raise _Skip
    for port in value:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            reader.fail(f"must contain ports (1-65535), got {_shown(port)}", key="allow_ports", code="range")
            raise _Skip
    return frozenset(value)


def _byte_count(reader: _Reader, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        reader.fail(f"must be a positive number of bytes or null, got {_shown(value)}", key="max_response_bytes")
        raise _Skip
    return value


def url_problem(value: str, schemes: tuple[str, ...]) -> tuple[str, ConfigErrorCode] | None:
    """Why ``value`` is not a URL both requests and httpx can call (a message and a code), or ``None``."""
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in value):
        return "must not contain spaces or control characters", "url"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as error:
        return f"is not a valid URL ({error})", "url"
    if parts.scheme not in schemes:
        allowed = " or ".join(schemes) if len(schemes) <= 2 else ", ".join(schemes)
        return f"must use {allowed}, got scheme {parts.scheme or '(none)'!r}", "url"
    host = parts.hostname
    if not host:
        return "must include a host", "url"
    if port == 0:
        return "must not use port 0", "url"
    if parts.netloc.rsplit("@", 1)[-1].startswith("["):
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return f"has an invalid IPv6 address {host!r}", "url"
    elif not all(_HOST_LABEL.match(label) for label in host.rstrip(".").split(".")):
        try:
            host.encode("idna")
        except UnicodeError:
            return f"has an invalid host name {host!r}", "url"
        if not all(_HOST_LABEL.match(label) for label in host.encode("idna").decode().rstrip(".").split(".")):
            return f"has an invalid host name {host!r}", "url"
    return None


def _parse_base_url(reader: _Reader) -> tuple[str, tuple[str, str] | None]:
    value = reader.mapping.get("base_url")
    fallback = "http://invalid.invalid/"
    if value is None:
        reader.fail(
            "is required: the upstream's root URL, e.g. 'https://api.example.com/v1/' (a service that calls URLs its "
            "users give has no base_url: give it egress rules instead, egress: {})",
            key="base_url",
            code="missing",
        )
        return fallback, None
    if not isinstance(value, str):
        reader.fail(f"must be a string, got {type(value).__name__}", key="base_url")
        return fallback, None
    problem = url_problem(value, ("http", "https"))
    if problem is not None:
        reader.fail(problem[0], key="base_url", code=problem[1])
        return fallback, None
    parts = urlsplit(value)
    if parts.query or parts.fragment:
        reader.fail("must not contain a query string or fragment; pass params per request", key="base_url", code="url")
        return fallback, None
    auth = None
    if parts.username is not None or parts.password is not None:
        # Credentials leave the URL here, so no URL a client logs (httpx logs every request at INFO) carries them.
        auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        netloc = parts.netloc.rsplit("@", 1)[1]
        value = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    # Relative URLs are joined below the base path for both clients, as httpx does: "v1" + "x" -> "v1/x".
    return (value if value.endswith("/") else value + "/"), auth


def _parse_headers(reader: _Reader) -> Mapping[str, str]:
    value = reader.mapping.get("headers", {})
    if not isinstance(value, Mapping):
        reader.fail(f"must be a mapping of header names to values, got {type(value).__name__}", key="headers")
        return MappingProxyType({})
    for name, header_value in value.items():
        if not isinstance(name, str) or not isinstance(header_value, str):
            # Values are not quoted: a header value is often a credential.
            reader.fail(
                f"names and values must be strings, got a {type(header_value).__name__} for {name!r}", key="headers"
            )
        elif not _HEADER_NAME.match(name):
            reader.fail(
                f"has an invalid header name {name!r} (letters, digits and !#$%&'*+-.^_`|~ only)", key="headers"
            )
        elif not _HEADER_VALUE.match(header_value):
            reader.fail(
                f"has an invalid value for {name!r}: printable ASCII only, without line breaks or surrounding spaces",
                key="headers",
            )
    return MappingProxyType(dict(value))  # read-only, like the rest of the frozen settings


def _parse_sensitive_headers(reader: _Reader) -> frozenset[str]:
    def parse(value: Any) -> frozenset[str]:
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple | set | frozenset):
            reader.fail(f"must be a list of header names, got {_shown(value)}", key="sensitive_headers")
            raise _Skip
        for name in value:
            if not isinstance(name, str) or not _HEADER_NAME.match(name):
                reader.fail(f"must contain header names, got {_shown(name)}", key="sensitive_headers")
                raise _Skip
        return frozenset(name.lower() for name in value)

    return reader.read("sensitive_headers", frozenset(), parse)


def _parse_tls(reader: _Reader) -> tuple[bool | str, str | tuple[str, str] | None]:
    verify = reader.mapping.get("verify", True)
    if not isinstance(verify, bool | str) or verify == "":
        reader.fail(f"must be true, false or a CA bundle path, got {_shown(verify)}", key="verify")
        verify = True
    elif isinstance(verify, str):
        problem = _tls_file_problem(
            verify,
            directory_ok=True,
            load=lambda: ssl.create_default_context(
                **({"capath": verify} if os.path.isdir(verify) else {"cafile": verify})
            ),
        )
        if problem is not None:
            reader.fail(problem, key="verify", code="file")
            verify = True
    cert = reader.mapping.get("cert")
    if cert is None or (isinstance(cert, str) and cert):
        pair: str | tuple[str, str] | None = cert
    elif isinstance(cert, list | tuple) and len(cert) == 2 and all(isinstance(p, str) and p for p in cert):
        pair = (cert[0], cert[1])
    else:
        reader.fail(f"must be a path or a [cert_path, key_path] pair, got {_shown(cert)}", key="cert")
        return verify, None
    if pair is not None:
        files = (pair,) if isinstance(pair, str) else pair
        problem = next((p for p in (_tls_file_problem(f, directory_ok=False) for f in files) if p), None)
        if problem is None:
            problem = _load_problem(lambda: ssl.create_default_context().load_cert_chain(*files))
        if problem is not None:
            reader.fail(problem, key="cert", code="file")
            return verify, None
    return verify, pair


def _tls_file_problem(path: str, *, directory_ok: bool, load: Callable[[], object] | None = None) -> str | None:
    # TLS files are read at startup: a missing or broken one is a settings mistake, not a call failure later.
    if not os.path.exists(path):
        return f"file not found: {path!r}"
    if os.path.isdir(path) and not directory_ok:
        return f"is a directory, not a file: {path!r}"
    if not os.access(path, os.R_OK):
        return f"is not readable: {path!r}"
    return _load_problem(load) if load is not None else None


def _load_problem(load: Callable[[], object]) -> str | None:
    try:
        load()
    except (ssl.SSLError, OSError, ValueError) as error:
        return f"could not be loaded as PEM ({type(error).__name__}: {error})"
    return None


def _parse_ssl_context(reader: _Reader) -> ssl.SSLContext | Callable[[], ssl.SSLContext] | None:
    value = reader.mapping.get("ssl_context")
    if value is None:
        return None
    if not isinstance(value, ssl.SSLContext) and not callable(value):
        reader.fail(f"must be an ssl.SSLContext or a callable returning one, got {_shown(value)}", key="ssl_context")
        return None
    if "verify" in reader.mapping or "cert" in reader.mapping:
        reader.fail(
            "replaces verify and cert: configure the certificates on the context and remove those keys",
            key="ssl_context",
            code="unsupported",
        )
    return value  # type: ignore[no-any-return]


def _parse_proxy(reader: _Reader, transport: TransportKind) -> str | None:
    proxy = reader.optional_string("proxy")
    if proxy is None:
        return None
    problem = url_problem(proxy, ("http", "https", "socks5", "socks5h"))
    if problem is not None:
        reader.fail(problem[0], key="proxy", code=problem[1])
        return None
    if transport == "aiohttp" and proxy.lower().startswith("socks"):
        reader.fail(
            "a SOCKS proxy is not supported with transport 'aiohttp': use transport 'httpcore'",
            key="proxy",
            code="unsupported",
        )
        return None
    return proxy


def _parse_service(name: str, raw: Any, defaults: Mapping[str, Any], errors: list[ConfigError]) -> ServiceConfig:
    if not isinstance(raw, Mapping):
        errors.append(ConfigError(f"must be a mapping (dict), got {type(raw).__name__}", service=name))
        raise _Skip
    reader = _Reader(_deep_merge(defaults, raw), name, "", SERVICE_KEYS, errors)
    client = reader.choice("client", "requests", ("requests", *HTTPX_CLIENTS))
    if client == "httpx2":
        _require_extra(reader, "client", "httpx2")
    http2 = reader.boolean("http2", False)
    if http2 and client not in HTTPX_CLIENTS:
        reader.fail("is only supported with client 'httpx' or 'httpx2'", key="http2", code="unsupported")
    elif http2 and not _installed("h2"):
        reader.fail("needs the h2 package: pip install 'outbound-http[http2]'", key="http2", code="unsupported")
    follow_redirects = reader.boolean("follow_redirects", False)
    if client == "requests" and reader.mapping.get("follow_redirects") is False:
        reader.fail(
            "a requests session follows redirects; pass allow_redirects=False to the calls that must not",
            key="follow_redirects",
            code="unsupported",
        )
    transport = reader.choice("transport", "httpcore", ("httpcore", "aiohttp"))
    if transport == "aiohttp":
        if client not in HTTPX_CLIENTS:
            reader.fail(
                "is only supported with client 'httpx' or 'httpx2' (their async client)",
                key="transport",
                code="unsupported",
            )
        elif http2:
            reader.fail(
                "aiohttp speaks HTTP/1.1 only: remove http2 or use transport 'httpcore'",
                key="transport",
                code="unsupported",
            )
        else:
            _require_extra(reader, "transport", "aiohttp", client)
    deadline_header = reader.optional_string("deadline_header")
    if deadline_header is not None and deadline_header.lower() not in DEADLINE_HEADERS:
        reader.fail(
            f"must be one of {', '.join(DEADLINE_HEADERS)}, got {_shown(deadline_header)}",
            key="deadline_header",
            code="unsupported",
        )
        deadline_header = None
    verify, cert = _parse_tls(reader)
    egress = _parse_egress(reader)
    endpoints = _parse_endpoints(reader) if reader.mapping.get("endpoints") is not None else ()
    discovery = _parse_discovery(reader) if reader.mapping.get("discovery") is not None else None
    if endpoints:
        base_url, auth = endpoints[0].url, None  # the URLs a call builds; each attempt goes to its endpoint
    elif discovery is not None:
        port = f":{discovery.port}" if discovery.port is not None else ""
        base_url, auth = f"{discovery.scheme}://{discovery.dns}{port}{discovery.path}", None
    elif egress is not None and "base_url" not in reader.mapping:
        base_url, auth = "", None  # absolute URLs only: the ones its users give
    else:
        base_url, auth = _parse_base_url(reader)
    probe = reader.optional_string("probe")
    if probe is not None and any(ord(char) < 0x21 for char in probe):
        reader.fail("must not contain spaces or control characters", key="probe", code="url")
        probe = None
    elif probe is not None and not base_url and not _ABSOLUTE_URL.match(probe):
        reader.fail("is a path below base_url, which this service has not: give an absolute URL", key="probe")
        probe = None
    return ServiceConfig(
        name=name,
        base_url=base_url,
        client=client,
        timeout=_parse_timeouts(reader),
        pool=_parse_pool(reader),
        retry=_parse_retry(reader),
        breaker=_parse_breaker(reader),
        headers=_parse_headers(reader),
        sensitive_headers=_parse_sensitive_headers(reader),
        verify=verify,
        cert=cert,
        ssl_context=_parse_ssl_context(reader),
        proxy=_parse_proxy(reader, transport),
        trust_env=reader.boolean("trust_env", True),
        http2=http2,
        follow_redirects=follow_redirects or client == "requests",
        critical=reader.boolean("critical", False),
        probe=probe,
        shared=reader.boolean("shared", True),
        bulkhead=_parse_bulkhead(reader),
        rate_limit=_parse_rate_limit(reader),
        concurrency=_parse_concurrency(reader),
        throttle=_parse_throttle(reader),
        pause=_parse_pause(reader),
        hedge=_parse_hedge(reader),
        sdk=_parse_sdk(reader),
        cache=parse_cache(reader),
        fallback=parse_fallback(reader),
        deadline_header=deadline_header.lower() if deadline_header else None,
        egress=egress,
        endpoints=endpoints if len(endpoints) > 1 else (),
        discovery=discovery,
        balance=reader.choice("balance", "p2c", ("p2c", "round_robin")),
        outlier=_parse_outlier(reader),
        transport=transport,
        enforce=reader.boolean("enforce", True),
        chaos=_parse_chaos(reader),
        auth=auth,
    )


def _parse_chaos(reader: _Reader) -> ChaosConfig | None:
    sub = _optional_sub(reader, "chaos", ChaosConfig)
    if sub is None:
        return None
    raw = sub.mapping.get("faults", [])
    faults: list[FaultConfig] = []
    if isinstance(raw, str | bytes | Mapping) or not isinstance(raw, list | tuple):
        sub.fail(f"must be a list of faults like {{'kind': 'status', 'rate': 0.05}}, got {_shown(raw)}", key="faults")
        raw = []
    for index, item in enumerate(raw):
        try:
            fault = _Reader(item, reader.service, f"{sub.prefix}.faults[{index}]", keys_of(FaultConfig), reader.errors)
        except _Skip:
            continue
        if "kind" not in fault.mapping:
            fault.fail(f"is required: one of {', '.join(FAULT_KINDS)}", key="kind", code="missing")
            continue
        kind = fault.choice("kind", "", FAULT_KINDS)
        if not kind:
            continue
        status = fault.integer("status", 503, minimum=100, maximum=599)
        faults.append(
            FaultConfig(
                kind=kind,
                rate=fault.fraction("rate", 0.05),
                status=status,
                retry_after=fault.seconds("retry_after", None, allow_none=True),
                seconds=fault.required_seconds("seconds", 0.5),
            )
        )
    if sum(fault.rate for fault in faults) > 1.0 + 1e-9:
        sub.fail("the faults' rates add up to more than 1", key="faults", code="range")
    return ChaosConfig(enabled=sub.boolean("enabled", False), faults=tuple(faults))


def _parse_chaos_switch(raw: Any, errors: list[ConfigError]) -> ChaosSwitch:
    reader = _Reader(raw, None, "chaos", keys_of(ChaosSwitch), errors)
    return ChaosSwitch(allow=reader.boolean("allow", False))


def chaos_allowed(switch: ChaosSwitch) -> bool:
    """Whether this process allows fault injection: ``chaos.allow``, or the environment's ``OUTBOUND_CHAOS=1``."""
    return switch.allow or os.environ.get("OUTBOUND_CHAOS", "") == "1"


def _parse_health(raw: Any, errors: list[ConfigError]) -> HealthConfig:
    reader = _Reader(raw, None, "health", keys_of(HealthConfig), errors)
    show_details = reader.choice("show_details", "when_authorized", ("never", "when_authorized", "always"))
    return HealthConfig(
        show_details=show_details, token=reader.optional_string("token"), history=_parse_history(reader)
    )


def _parse_history(reader: _Reader) -> HistoryConfig | None:
    # ``true`` keeps the default history, ``false`` or null none; a mapping sets its interval and length.
    raw = reader.mapping.get("history")
    if raw is None or raw is False:
        return None
    if raw is True:
        return HistoryConfig()
    try:
        sub = reader.sub("history", keys_of(HistoryConfig), accepted="true, false, null or a mapping")
    except _Skip:
        return None
    defaults = HistoryConfig()
    return HistoryConfig(
        interval=sub.required_seconds("interval", defaults.interval, allow_zero=False),
        buckets=sub.integer("buckets", defaults.buckets, minimum=2, maximum=360),
    )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _require_extra(reader: _Reader, key: str, extra: str, client: str = "") -> None:
    module, install = EXTRAS[extra]
    if client == "httpx2":
        module = _HTTPX2_MODULES.get(extra, module)
    if not _installed(module):
        # httpx2 installs on Python 3.11 and later only; the rest of outbound runs on 3.10 too.
        needs = " (Python 3.11 or later)" if extra == "httpx2" and sys.version_info < (3, 11) else ""
        reader.fail(f"needs the {extra} extra: pip install '{install}'{needs}", key=key, code="unsupported")


def _parse_metrics(raw: Any, errors: list[ConfigError]) -> MetricsConfig:
    reader = _Reader(raw, None, "metrics", keys_of(MetricsConfig), errors)
    config = MetricsConfig(prometheus=reader.boolean("prometheus", False), otel=reader.boolean("otel", False))
    if config.prometheus:
        _require_extra(reader, "prometheus", "prometheus")
    if config.otel:
        _require_extra(reader, "otel", "otel")
    return config


def _parse_state(raw: Any, errors: list[ConfigError]) -> StateConfig:
    reader = _Reader(raw, None, "state", keys_of(StateConfig), errors)
    defaults = StateConfig()
    backend = reader.choice("backend", "memory", ("memory", "redis"))
    url = reader.mapping.get("url", defaults.url)
    schemes = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
    if not isinstance(url, str) or urlsplit(url).scheme not in schemes:
        shown = _shown(url) if not isinstance(url, str) else f"{urlsplit(url).scheme or 'no scheme'!r}"
        reader.fail(
            f"must be a redis://, rediss://, unix:// or redis+sentinel:// URL, got {shown}", key="url", code="url"
        )
        url = defaults.url
    cluster = reader.boolean("cluster", defaults.cluster)
    if cluster and urlsplit(url).scheme not in ("redis", "rediss"):
        reader.fail("needs a redis:// or rediss:// url naming a node of the cluster", key="cluster")
        cluster = False
    prefix = reader.mapping.get("prefix", defaults.prefix)
    if not isinstance(prefix, str) or not prefix or any(ord(char) < 0x21 for char in prefix):
        reader.fail(f"must be a non-empty string without spaces, got {_shown(prefix)}", key="prefix")
        prefix = defaults.prefix
    if backend == "redis":
        _require_extra(reader, "backend", "redis")
    return StateConfig(
        backend=backend,
        url=url,
        cluster=cluster,
        prefix=prefix,
        sync_interval=reader.required_seconds("sync_interval", defaults.sync_interval, allow_zero=False),
        timeout=reader.required_seconds("timeout", defaults.timeout, allow_zero=False),
    )


def _parse_deadline(raw: Any, errors: list[ConfigError]) -> DeadlineConfig:
    reader = _Reader(raw, None, "deadline", keys_of(DeadlineConfig), errors)
    defaults = DeadlineConfig()
    headers = reader.mapping.get("headers", defaults.headers)
    if (
        isinstance(headers, str)
        or not isinstance(headers, list | tuple)
        or not all(isinstance(h, str) and h.lower() in DEADLINE_HEADERS for h in headers)
    ):
        reader.fail(
            f"must be a list of some of {', '.join(DEADLINE_HEADERS)}, got {_shown(headers)}",
            key="headers",
            code="unsupported",
        )
        headers = defaults.headers
    return DeadlineConfig(
        min_time=reader.required_seconds("min_time", defaults.min_time),
        max=reader.required_seconds("max", defaults.max, allow_zero=False),
        headers=tuple(h.lower() for h in headers),
        default=reader.seconds("default", None, allow_none=True, allow_zero=False),
    )


def parse_config(mapping: Any) -> OutboundConfig:
    """Validate the whole ``OUTBOUND`` mapping and return it as frozen dataclasses.

    Raises:
        ConfigError: naming the service and key of the first mistake, and listing every mistake found (also in
            its ``errors`` attribute).
    """
    errors: list[ConfigError] = []
    config = _parse(mapping, errors)
    if errors:
        raise ConfigError.combine(errors)
    assert config is not None
    return config


def config_errors(mapping: Any) -> list[ConfigError]:
    """Every mistake in the mapping (an empty list when it is valid)."""
    errors: list[ConfigError] = []
    _parse(mapping, errors)
    return errors


def _parse(mapping: Any, errors: list[ConfigError]) -> OutboundConfig | None:
    try:
        top = _Reader(mapping, None, "", TOP_LEVEL_KEYS, errors)
    except _Skip:
        return None
    defaults = top.mapping.get("defaults", {})
    try:
        _Reader(defaults, None, "defaults", SERVICE_KEYS, errors)
        # An unknown key in defaults is reported once, above, not again for every service it is merged into.
        defaults = {key: value for key, value in defaults.items() if key in SERVICE_KEYS}
    except _Skip:
        defaults = {}
    services = top.mapping.get("services", {})
    parsed: dict[str, ServiceConfig] = {}
    if not isinstance(services, Mapping):
        top.fail(f"must be a mapping of service names to settings, got {type(services).__name__}", key="services")
        services = {}
    for name, raw in services.items():
        if not isinstance(name, str) or not name or name != name.strip():
            message = f"service names must be non-empty strings without surrounding spaces, got {_shown(name)}"
            top.fail(message, key="services")
            continue
        try:
            parsed[name] = _parse_service(name, raw, defaults, errors)
        except _Skip:
            continue
    health = _section(_parse_health, top.mapping.get("health", {}), errors, HealthConfig)
    metrics = _section(_parse_metrics, top.mapping.get("metrics", {}), errors, MetricsConfig)
    state = _section(_parse_state, top.mapping.get("state", {}), errors, StateConfig)
    deadline = _section(_parse_deadline, top.mapping.get("deadline", {}), errors, DeadlineConfig)
    switch = _section(_parse_chaos_switch, top.mapping.get("chaos", {}), errors, ChaosSwitch)
    allowed = chaos_allowed(switch)
    for name, service in parsed.items():
        if service.chaos is not None and service.chaos.enabled and not allowed:
            message = (
                "fault injection is enabled but this process does not allow it: set OUTBOUND_CHAOS=1 in its "
                "environment or the top-level chaos: {'allow': true} (never in production)"
            )
            errors.append(ConfigError(message, service=name, key="chaos.enabled", code="unsupported"))
        if allowed:
            parsed[name] = service = dataclasses.replace(service, chaos_allowed=True)
        if service.rate_limit is not None and service.rate_limit.scope == "fleet" and state.backend != "redis":
            message = "a fleet-wide rate limit needs a shared state backend (state.backend: 'redis')"
            errors.append(ConfigError(message, service=name, key="rate_limit.scope", code="unsupported"))
        if service.concurrency is not None and service.concurrency.scope == "fleet" and state.backend != "redis":
            message = "a fleet-wide adaptive limit needs a shared state backend (state.backend: 'redis')"
            errors.append(ConfigError(message, service=name, key="concurrency.scope", code="unsupported"))
        tokens = service.retry.tokens
        if tokens is not None and tokens.scope == "fleet" and state.backend != "redis":
            message = "a fleet-wide retry token pool needs a shared state backend (state.backend: 'redis')"
            errors.append(ConfigError(message, service=name, key="retry.tokens.scope", code="unsupported"))
    if errors:
        return None
    return OutboundConfig(services=parsed, health=health, metrics=metrics, state=state, deadline=deadline, chaos=switch)


S = TypeVar("S")


def _section(parse: Callable[[Any, list[ConfigError]], S], raw: Any, errors: list[ConfigError], default: type[S]) -> S:
    try:
        return parse(raw, errors)
    except _Skip:  # not a mapping: recorded
        return default()
