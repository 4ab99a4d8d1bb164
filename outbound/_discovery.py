"""Endpoints from DNS (``discovery``, issue 31): a name's A/AAAA records, looked up again as their TTL says.

A service with ``discovery: {dns: "catalog.ns.svc", port: 8000, scheme: "http", path: "/v1/"}`` builds its calls
against ``scheme://dns:port/path`` and sends each attempt to one of the name's addresses (``_endpoints.py``), with the
name as ``Host`` and, over TLS, as the server name its certificate is checked against. The lookup (dnspython) runs
once as the registry is built — a name that does not resolve is a ``ConfigError`` then — and again in a thread of its
own when the shortest TTL (at most ``refresh``, at least one second) has passed, on the first call after it. A lookup
that fails or finds nothing keeps the last good set, with one WARNING until one succeeds again. An address that
leaves the set takes its state with it; one that stays keeps its ejection.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._config import EndpointConfig
from ._errors import ConfigError
from ._lifecycle import on_fork

if TYPE_CHECKING:
    from ._config import DiscoveryConfig, ServiceConfig
    from ._endpoints import Endpoints

logger = logging.getLogger("outbound.endpoints")
MIN_TTL = 1.0
LOOKUP_SECONDS = 2.0  # a lookup's time limit (dnspython's lifetime)


def lookup(config: DiscoveryConfig) -> tuple[list[str], float]:
    """The name's addresses (A, then AAAA) and the seconds until they should be looked up again."""
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=config.nameserver is None)
    server = config.nameserver
    if server is not None:
        host, port = server, 53
        if server.count(":") == 1:  # "host:port" (an IPv6 address alone has more colons)
            host, _, text = server.partition(":")
            port = int(text)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = LOOKUP_SECONDS
    addresses: list[str] = []
    ttl = config.refresh
    for kind in ("A", "AAAA"):
        try:
            answer = resolver.resolve(config.dns, kind)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            continue
        if answer.rrset is None:
            continue
        ttl = min(ttl, float(answer.rrset.ttl))
        for record in answer:
            address = str(record.address)
            ipaddress.ip_address(address)  # what a server answered is checked: an address, or an error
            addresses.append(address)
    return sorted(set(addresses), key=addresses.index), max(ttl, MIN_TTL)


def endpoint_configs(config: DiscoveryConfig, addresses: list[str]) -> list[EndpointConfig]:
    port = f":{config.port}" if config.port is not None else ""
    hosts = [f"[{address}]" if ":" in address else address for address in addresses]
    return [EndpointConfig(url=f"{config.scheme}://{host}{port}{config.path}") for host in hosts]


class Discovery:
    """Keeps one service's ``Endpoints`` in step with its DNS name."""

    def __init__(self, config: ServiceConfig, endpoints: Endpoints, clock: Callable[[], float]) -> None:
        assert config.discovery is not None
        self._service = config.name
        self._config = config.discovery
        self._endpoints = endpoints
        self._clock = clock
        self._running = threading.Lock()
        self._warned = False
        on_fork(self, child=Discovery._after_fork)

    def _after_fork(self) -> None:
        # A lookup thread of the parent's does not exist here, and may have held the lock: a new one, and a lookup on
        # the child's first call.
        self._running = threading.Lock()
        if self._endpoints.refresher is not None:
            self._endpoints.refresh_due = self._clock()

    def start(self) -> None:
        """The first lookup, as the registry is built: a ``ConfigError`` when the name gives no address."""
        try:
            addresses, ttl = lookup(self._config)
        except Exception as error:  # any failure of the first lookup is the settings' problem
            raise ConfigError(
                f"{self._config.dns!r} did not resolve ({type(error).__name__}: {error})",
                service=self._service,
                key="discovery.dns",
                code="url",
            ) from error
        if not addresses:
            raise ConfigError(
                f"{self._config.dns!r} has no A or AAAA record", service=self._service, key="discovery.dns", code="url"
            )
        self._endpoints.replace(endpoint_configs(self._config, addresses), name=self._config.dns)
        self._endpoints.refresh_due = self._clock() + ttl
        self._endpoints.refresher = self.refresh_soon

    def refresh_soon(self) -> None:
        """Look the name up again in a thread of its own (one at a time); calls go on with the current set."""
        if self._running.acquire(blocking=False):
            threading.Thread(target=self._refresh, name="outbound-discovery", daemon=True).start()

    def _refresh(self) -> None:
        ttl = self._config.refresh
        try:
            addresses, ttl = lookup(self._config)
            if not addresses:
                raise LookupError("no A or AAAA record")
        except Exception as error:  # noqa: BLE001 (a failed lookup keeps the last good set)
            if not self._warned:
                self._warned = True
                logger.warning(
                    "service %r: looking up %r failed (%s: %s); the last %d endpoints stay in use",
                    self._service,
                    self._config.dns,
                    type(error).__name__,
                    error,
                    len(self._endpoints.endpoints),
                )
        else:
            self._warned = False
            self._endpoints.replace(endpoint_configs(self._config, addresses), name=self._config.dns)
        finally:
            self._endpoints.refresh_due = self._clock() + ttl
            self._running.release()
