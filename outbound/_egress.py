"""The egress guard: which URLs and addresses a service that takes user-supplied URLs may reach (``egress:``).

Webhook targets, avatar and feed URLs, "import from URL": every URL a user gives is a server-side request forgery
risk (``http://169.254.169.254/latest/meta-data/``, an admin on ``10.0.0.5``, a name that resolves to
``127.0.0.1``, a redirect from a public host to a private one). A service with ``egress`` settings is checked in two
places, each the only place that knows what it checks:

    the URL       every request and every redirect hop, before anything is sent: the scheme (http or https), the
                  port (``allow_ports``), the host's name (``allow_hosts`` / ``deny_hosts``) and, for a literal
                  address in any spelling a resolver accepts (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``0``,
                  ``[::ffff:127.0.0.1]``), the address (``check_url``)
    the address   when the client opens a connection: the host is resolved *once*, every address it resolves to
                  is checked (one bad address refuses the host), and the connection is made to a checked address,
                  never by name again, so a DNS answer with TTL 0 that changes between the check and the connect
                  (rebinding) cannot slip through (``resolve``). The host name stays the TLS server name (SNI and
                  certificate checks) and the ``Host`` header: only the socket's peer is pinned.

The backends call these from their own connection layers: urllib3's connection (``_backends/requests.py``),
httpcore's network backend (``_backends/_httpcore.py``) and aiohttp's resolver (``_backends/aiohttp.py``). With a
proxy, the proxy resolves names: only the URL is checked here (see ``docs/egress.md``).

By default every address that is not globally routable is refused: loopback, RFC 1918 private, link-local (with
the cloud metadata addresses 169.254.169.254 and fd00:ec2::254), shared CGNAT 100.64.0.0/10, multicast,
unspecified, documentation and reserved ranges, and the IPv6 forms that carry an IPv4 address (mapped
``::ffff:a.b.c.d``, compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged by that IPv4
address. ``allow_cidrs`` opens ranges on purpose (an internal network, a test's loopback).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import idna

from ._backends._attempt import SendRefused
from ._config import EgressConfig
from ._outcome import Reason, Rejection

__all__ = ["Egress", "EgressRefused", "address_problem", "body_too_large", "literal_address", "normalize_host"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEMES = {"http": 80, "https": 443}
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
# What inet_aton accepts besides dotted quads: 1 to 4 parts, each decimal, octal (leading 0) or hex (0x).
_LEGACY_IPV4 = re.compile(r"(0[xX][0-9a-fA-F]*|[0-9]+)(\.(0[xX][0-9a-fA-F]*|[0-9]+)){0,3}\Z")
# Bounded: one entry per host name a service has been asked for since the last clear.
_HOST_CACHE_SIZE = 1024


class EgressRefused(SendRefused):
    """An egress rule refused a connection as it was being made: nothing was sent, and the backends report the
    attempt as refused, as they do a send gate's refusal."""


def normalize_host(host: str) -> str:
    """``host`` as the clients send it: lower case, IDNA (UTS 46) ASCII, without a trailing dot or IPv6 brackets.

    Raises ``ValueError`` for a name IDNA refuses."""
    host = host.strip("[]").rstrip(".").lower()
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise ValueError(f"invalid host name {host!r}") from error


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` (normalized) spells, in any form a resolver reads as one, or ``None`` for a name.

    ``getaddrinfo`` (through ``inet_aton``) reads ``2130706433``, ``0x7f.1``, ``0177.0.0.1`` and ``0`` as IPv4
    addresses: so does this."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    # The IPv4 address an IPv6 one reaches: mapped, compatible (not :: and ::1 themselves), NAT64, 6to4.
    mapped = address.ipv4_mapped
    if mapped is not None:
        return mapped
    value = int(address)
    if value >> 32 == 0 and value > 1:
        return ipaddress.IPv4Address(value)
    if address in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF)
    return None


def address_problem(address: IPAddress, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why ``address`` may not be reached (``"loopback"``, ``"link-local"``...), or ``None`` when it may.

    An IPv6 address that carries an IPv4 one is judged by it; an address in ``allowed`` may always be reached."""
    if isinstance(address, ipaddress.IPv6Address):
        address = _embedded_ipv4(address) or address
    for network in allowed:
        if address.version == network.version and address in network:
            return None
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata lives there)"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "shared CGNAT (100.64.0.0/10)"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved (not globally routable)"
    return None


def _matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


class Egress:
    """One service's egress rules, built once from its ``egress`` settings; safe to share between threads."""

    def __init__(self, config: EgressConfig) -> None:
        self.config = config
        self._allow_hosts = config.allow_hosts
        self._deny_hosts = config.deny_hosts
        self._allowed: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(cidr) for cidr in config.allow_cidrs)
        self._ports = config.allow_ports
        self._hosts: dict[str, Rejection | None] = {}

    # -- the URL ---------------------------------------------------------------------------------------------------

    def check(self, scheme: str, host: str | None, port: int | None) -> Rejection | None:
        """The refusal of a request to ``scheme://host:port`` (``port`` ``None``: the scheme's), or ``None``."""
        if not scheme:
            return _refusal("egress", "the URL has no scheme (a relative URL, or a file path)")
        default = _SCHEMES.get(scheme.lower())
        if default is None:
            return _refusal("egress", f"scheme {scheme!r} is not http or https")
        if not host:
            return _refusal("egress", "the URL has no host")
        if port is None:
            port = default
        if self._ports is not None and port not in self._ports:
            return _refusal("egress.allow_ports", f"port {port} is not allowed")
        verdict = self._hosts.get(host, _UNKNOWN)
        if verdict is _UNKNOWN:
            verdict = self._check_host(host)
            if len(self._hosts) >= _HOST_CACHE_SIZE:
                self._hosts.clear()
            self._hosts[host] = verdict
        return verdict  # type: ignore[return-value]

    def check_url(self, url: str) -> Rejection | None:
        """``check`` for a URL string (parsed as urllib does; the address check catches what parsers disagree on)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return _refusal("egress", "the URL cannot be parsed")
        return self.check(parts.scheme, parts.hostname, port)

    def _check_host(self, raw: str) -> Rejection | None:
        try:
            host = normalize_host(raw)
        except ValueError:
            return _refusal("egress", "the host is not a valid name")
        for pattern in self._deny_hosts:
            if _matches(host, pattern):
                return _refusal("egress.deny_hosts", f"host {host!r} matches {pattern!r}")
        if self._allow_hosts and not any(_matches(host, pattern) for pattern in self._allow_hosts):
            return _refusal("egress.allow_hosts", f"host {host!r} matches no allowed pattern")
        address = literal_address(host)
        if address is not None:
            return self.check_address(host, address)
        return None

    # -- the address -----------------------------------------------------------------------------------------------

    def check_address(self, host: str, address: IPAddress) -> Rejection | None:
        """The refusal of a connection to ``address`` (for ``host``), or ``None``."""
        problem = address_problem(address, self._allowed)
        if problem is None:
            return None
        shown = host if host == str(address) else f"{host!r} ({address})"
        return _refusal("egress", f"{shown} is refused: {problem} address (egress.allow_cidrs can allow it)")

    def addresses(self, host: str, answers: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """``getaddrinfo``'s ``answers`` for ``host``, each checked; raises ``EgressRefused`` if any is refused
        (an attacker's name may mix a public address with a private one) or there is none."""
        checked = list(answers)
        for answer in checked:
            text = answer[4][0]
            address = ipaddress.ip_address(text.split("%", 1)[0])
            rejection = self.check_address(host, address)
            if rejection is not None:
                raise EgressRefused(rejection)
        if not checked:
            raise EgressRefused(_refusal("egress", f"{host!r} resolves to no address"))
        return checked

    def resolve(self, host: str, port: int, family: int = 0) -> list[tuple[Any, ...]]:
        """Resolve ``host`` once (``getaddrinfo``, TCP) and check every address (``addresses``)."""
        answers = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        return self.addresses(host, answers)


_UNKNOWN = object()


def body_too_large(limit: int) -> str:
    """The message of a call whose response body is over ``max_response_bytes``."""
    return f"egress.max_response_bytes: the response body is larger than {limit} bytes; the rest was not read"


def _refusal(rule: str, detail: str) -> Rejection:
    return Rejection(Reason.EGRESS_DENIED, 0.0, f"{rule}: {detail}")
