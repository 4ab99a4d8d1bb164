"""Row 25 (issue 30, the egress guard): what it costs an allowed call, and whether every SSRF vector is refused.

25a: sequential GETs of a tiny response from the upstream (on 127.0.0.1, allowed by a test rule: ``allow_cidrs``
     ``127.0.0.1/32``, any port) through a service with ``egress`` and the same service without it, alternated in short
     slices in the same run, keep-alive connections and the resolver warm. Each pair of neighbouring slices gives a
     per-call difference in microseconds (the slices are single calls, alternating which goes first); a round keeps
     the median of its 500 pairs, for requests and for httpx, and the row the worse of the two per round
     (target <= 50 us).
25b: the vector suite (decimal, hex, octal and short IPv4 spellings, ``0``, IPv4-mapped and -compatible IPv6, IPv6
     loopback and link-local, userinfo tricks, ``localhost`` and an IDN spelling of it, a name that resolves to
     loopback, DNS rebinding with TTL 0, metadata addresses, private, CGNAT, multicast, ``file://``, ``gopher://``, a
     redirect to the metadata address) on every client — requests, httpx, httpx2, and the async client on httpcore and
     on aiohttp — against the upstream, whose port every vector names. A vector is refused when the call raises and
     the upstream saw no request for it. The share refused (target = 100 %). The same suite through the same services
     without ``egress`` is reported beside it: the check can fail.

Names resolve through a resolver of the row's own while it runs (``socket.getaddrinfo`` patched in this process):
``internal.test`` is 127.0.0.1; ``rebind.test`` answers 127.0.0.2 (allowed by the rule, nothing listens there) once
and 127.0.0.1 afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import outbound
from benchmarks._harness import Row, Target

if TYPE_CHECKING:
    from benchmarks._harness import UpstreamProcess
    from benchmarks._scenarios import Settings

MEASUREMENT = 25
ROW_KEYS = ("25a", "25b")
PAIRS_PER_SLICE = 25  # pairs of calls per slice of the run's settings: 500 per round in a full run
AT_MOST_50_US = Target("<=", 50.0, "<= 50 us")
ALL_REFUSED = Target(">=", 100.0, "= 100 %")
# The test rule that lets the loopback stand-in for a public host through.
OPEN_LOOPBACK: dict[str, Any] = {"allow_cidrs": ["127.0.0.1/32"], "allow_ports": None}
CLIENTS = (("requests", "httpcore"), ("httpx", "httpcore"), ("httpx2", "httpcore"), ("async", "httpcore"))
ASYNC_AIOHTTP = ("async", "aiohttp")


def egress(up: UpstreamProcess, s: Settings) -> list[Row]:
    return [_overhead(up, s), _vector_suite(up)]


# -- 25a -----------------------------------------------------------------------------------------------------------


def _overhead(up: UpstreamProcess, s: Settings) -> Row:
    from benchmarks._scenarios import warm_up

    plain = {"base_url": up.url}
    guarded = {"base_url": up.url, "egress": OPEN_LOOPBACK}
    registry = outbound.Registry.from_mapping(
        {
            "services": {
                "req": plain,
                "req_egress": guarded,
                "hx": {**plain, "client": "httpx"},
                "hx_egress": {**guarded, "client": "httpx"},
            }
        }
    )
    per_client: dict[str, list[float]] = {"requests": [], "httpx": []}
    per_call: list[float] = []
    try:
        calls = {
            "requests": (registry.session("req_egress").get, registry.session("req").get),
            "httpx": (registry.client("hx_egress").get, registry.client("hx").get),
        }
        for name, (with_egress, without) in calls.items():

            def guarded_call(get: Callable[[str], Any] = with_egress) -> None:
                get("ok").raise_for_status()

            def plain_call(get: Callable[[str], Any] = without) -> None:
                get("ok").raise_for_status()

            warm_up(s.warmup_calls, guarded_call, plain_call)
            for _ in range(s.rounds):
                pairs = [
                    _pair(guarded_call, plain_call, first=index % 2) for index in range(PAIRS_PER_SLICE * s.slices)
                ]
                per_client[name].append(statistics.median(on - off for on, off in pairs))
                per_call.append(statistics.median(off for _, off in pairs))
    finally:
        registry.close()
    worst = [max(values) for values in zip(*per_client.values(), strict=True)]
    return Row(
        "25a",
        "egress, an allowed host: added time per call, vs the same service without egress (keep-alive, warm resolver)",
        "us",
        worst,
        AT_MOST_50_US,
        "the worse client per round; "
        + "; ".join(f"{name} {statistics.median(values):.1f} us" for name, values in per_client.items())
        + f"; a call without egress takes {statistics.median(per_call):.0f} us here",
        digits=1,
    )


def _pair(guarded: Callable[[], None], plain: Callable[[], None], *, first: int) -> tuple[float, float]:
    # One call of each, back to back, in alternating order (neither always pays for following the other): on a
    # loaded machine a pair of neighbouring calls shares its disturbances, and the median of many pairs drops them.
    calls = (guarded, plain) if first == 0 else (plain, guarded)
    took = []
    for call in calls:
        started = time.perf_counter()
        call()
        took.append(1e6 * (time.perf_counter() - started))
    return (took[0], took[1]) if first == 0 else (took[1], took[0])


# -- 25b -----------------------------------------------------------------------------------------------------------


def vectors(port: int) -> dict[str, str]:
    """The SSRF vectors, each aimed at the upstream's port (or at an address nothing here answers on)."""
    metadata = quote("http://169.254.169.254/latest/meta-data/", safe="")
    return {
        "loopback": f"http://127.0.0.1:{port}/ok",
        "decimal": f"http://2130706433:{port}/ok",
        "hex": f"http://0x7f.1:{port}/ok",
        "hex-dotted": f"http://0x7f.0x0.0x0.0x1:{port}/ok",
        "octal": f"http://0177.0.0.1:{port}/ok",
        "short": f"http://127.1:{port}/ok",
        "zero": f"http://0:{port}/ok",
        "unspecified": f"http://0.0.0.0:{port}/ok",
        "trailing-dot": f"http://127.0.0.1.:{port}/ok",
        "ipv4-mapped": f"http://[::ffff:127.0.0.1]:{port}/ok",
        "ipv4-compatible": f"http://[::127.0.0.1]:{port}/ok",
        "ipv6-loopback": f"http://[::1]:{port}/ok",
        "ipv6-link-local": f"http://[fe80::1]:{port}/ok",
        "userinfo": f"http://a@127.0.0.1:{port}/ok",
        "userinfo-host-lookalike": f"http://example.com@127.0.0.1:{port}/ok",
        "localhost": f"http://localhost:{port}/ok",
        "idn-localhost": f"http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3:{port}/ok",
        "idn-fullwidth": f"http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}/ok",
        "name-to-loopback": f"http://internal.test:{port}/ok",
        "rebinding-ttl-0": f"http://rebind.test:{port}/ok",
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "metadata-ipv6": "http://[fd00:ec2::254]/latest/meta-data/",
        "private": "http://10.0.0.5/admin",
        "cgnat": "http://100.64.0.1/",
        "multicast": "http://224.0.0.1/",
        "file": "file:///etc/passwd",
        "gopher": f"gopher://127.0.0.1:{port}/_INFO",
        # The only vector whose first hop is allowed: through a second service that opens loopback.
        "redirect-to-metadata": f"http://127.0.0.1:{port}/redirect?to={metadata}",
    }


class _Resolver:
    """``socket.getaddrinfo`` with the row's own names; ``rebinds`` counts the lookups of ``rebind.test``."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.rebinds = 0

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name == "internal.test":
            return self.real("127.0.0.1", port, *args, **kwargs)
        if name == "rebind.test":
            self.rebinds += 1
            return self.real("127.0.0.2" if self.rebinds == 1 else "127.0.0.1", port, *args, **kwargs)
        return self.real(host, port, *args, **kwargs)


@contextmanager
def _own_resolver() -> Iterator[_Resolver]:
    real = socket.getaddrinfo
    resolver = _Resolver(real)
    socket.getaddrinfo = resolver
    try:
        yield resolver
    finally:
        socket.getaddrinfo = real


def _service(client: str, transport: str, rule: dict[str, Any] | None) -> dict[str, Any]:
    service: dict[str, Any] = {
        "client": "httpx" if client == "async" else client,
        "transport": transport,
        "timeout": {"connect": 1.0, "read": 2.0, "total": 3.0},
        "retry": {"total": 0},
    }
    if rule is None:
        service["base_url"] = "http://unused.invalid/"
    else:
        service["egress"] = rule
    return service


def _get(registry: outbound.Registry, client: str, name: str, url: str) -> Any:
    if client == "requests":
        return registry.session(name).get(url)
    if client != "async":
        return registry.client(name).get(url, follow_redirects=True)

    async def call() -> Any:
        return await registry.async_client(name).get(url, follow_redirects=True)

    return asyncio.run(call())


def _hits(up: UpstreamProcess) -> int:
    stats = up.control("GET", "stats")["hits_by_path"]
    return int(sum(count for path, count in stats.items() if path != "/redirect"))


def refused_share(
    up: UpstreamProcess, resolver: _Resolver, client: str, transport: str, *, guarded: bool
) -> tuple[int, int, list[str]]:
    """``(refused, total, names that got through)`` for the vector suite through one client kind (``guarded``:
    services with egress; else the same services with a ``base_url`` and no egress)."""
    rules: dict[str, dict[str, Any] | None] = {
        "hooks": {"allow_ports": None},  # every default but the port: the vectors aim at the upstream's
        "rebind": {"allow_cidrs": ["127.0.0.2/32"], "allow_ports": None},  # the first answer is allowed
        "first_hop": OPEN_LOOPBACK,  # the redirect's first hop is allowed, its target is not
    }
    registry = outbound.Registry.from_mapping(
        {"services": {name: _service(client, transport, rule if guarded else None) for name, rule in rules.items()}}
    )
    services = {"rebinding-ttl-0": "rebind", "redirect-to-metadata": "first_hop"}
    passed: list[str] = []
    total = 0
    try:
        for name, url in vectors(up.port).items():
            total += 1
            service = services.get(name, "hooks")
            resolver.rebinds = 0  # a TTL-0 answer: the next lookup of rebind.test gets 127.0.0.2, then 127.0.0.1
            before = _hits(up)
            try:
                _get(registry, client, service, url)
            except Exception:
                if _hits(up) == before:
                    continue
            passed.append(name)
    finally:
        registry.close()
    return total - len(passed), total, passed


def _vector_suite(up: UpstreamProcess) -> Row:
    shares: list[float] = []
    details: list[str] = []
    with _own_resolver() as resolver:
        for client, transport in (*CLIENTS, ASYNC_AIOHTTP):
            refused, total, passed = refused_share(up, resolver, client, transport, guarded=True)
            shares.append(100.0 * refused / total)
            label = f"{client}-{transport}" if client == "async" else client
            details.append(f"{label} {refused}/{total}" + (f" (through: {', '.join(passed)})" if passed else ""))
        unguarded, total, _ = refused_share(up, resolver, "requests", "httpcore", guarded=False)
    return Row(
        "25b",
        "egress, the SSRF vector suite: share refused with nothing reaching the upstream, every client",
        "%",
        [min(shares)],
        ALL_REFUSED,
        "; ".join(details) + f"; the same suite without egress (requests): {unguarded}/{total} refused",
        digits=1,
    )
