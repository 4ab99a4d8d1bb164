"""The egress guard (``egress:``) against the real upstream on 127.0.0.1, on every client: requests, httpx and
httpx2 (sync), and the async clients on httpcore and on aiohttp.

The upstream listens on loopback, which the guard refuses by default: a vector is refused when the call raises
(``EgressDeniedError``, or the client library's own refusal of a URL it cannot parse) and the upstream saw nothing.
The allowed-host tests open loopback with a test rule (``allow_cidrs``). Names resolve through a resolver the tests
control (``socket.getaddrinfo`` patched in this process): ``internal.test`` resolves to 127.0.0.1, and
``rebind.test`` answers 127.0.0.2 first and 127.0.0.1 afterwards (a rebinding with TTL 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests

import outbound
from outbound import Registry
from tests.conftest import RegistryFactory
from tests.core.conftest import ASYNC_KINDS, SYNC_KINDS, client_of, is_async, with_async_transports
from tests.upstream import Upstream

KINDS = [*SYNC_KINDS, *ASYNC_KINDS]
KIND_PARAMS = with_async_transports(KINDS)
# A test rule that opens the upstream's loopback address (and only it), any port.
OPEN_LOOPBACK = {"allow_cidrs": ["127.0.0.1/32"], "allow_ports": None}


class Resolver:
    """``socket.getaddrinfo`` with a few names of the test's own; every lookup of them is counted."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.asked: dict[str, int] = {}

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name in {"internal.test", "pinned.test", "rebind.test"}:
            self.asked[name] = self.asked.get(name, 0) + 1
            address = "127.0.0.1"
            if name == "rebind.test" and self.asked[name] == 1:
                address = "127.0.0.2"  # first a harmless answer, then loopback: TTL 0
            return self.real(address, port, *args, **kwargs)
        return self.real(host, port, *args, **kwargs)


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    fake = Resolver(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


def _registry(make_registry: RegistryFactory, kind: str, transport: str, **egress: Any) -> Registry:
    service = {
        "client": client_of(kind),
        "transport": transport,
        "egress": egress,
        "timeout": {"connect": 1.0, "read": 2.0, "total": 3.0},
        "retry": {"total": 0},
    }
    return make_registry(hooks=service)


def _get(registry: Registry, kind: str, url: str, **kwargs: Any) -> Any:
    if kind == "requests":
        return registry.session("hooks").get(url, **kwargs)
    if not is_async(kind):
        return registry.client("hooks").get(url, follow_redirects=True, **kwargs)

    async def call() -> Any:
        return await registry.async_client("hooks").get(url, follow_redirects=True, **kwargs)

    return asyncio.run(call())


def _get_from(registry: Registry, kind: str, name: str, url: str) -> Any:
    if not is_async(kind):
        return registry.client(name).get(url)

    async def call() -> Any:
        return await registry.async_client(name).get(url)

    return asyncio.run(call())


def _vectors(port: int) -> dict[str, str]:
    return {
        "loopback": f"http://127.0.0.1:{port}/ok",
        "decimal": f"http://2130706433:{port}/ok",
        "hex": f"http://0x7f.1:{port}/ok",
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
        "userinfo-credentials": f"http://user:hunter2@127.0.0.1:{port}/ok",
        "localhost": f"http://localhost:{port}/ok",
        "localhost-upper": f"http://LOCALHOST:{port}/ok",
        "sub-localhost": f"http://api.localhost:{port}/ok",
        "idn-circled": f"http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3:{port}/ok",
        "idn-fullwidth": f"http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}/ok",
        "name-to-loopback": f"http://internal.test:{port}/ok",
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "metadata-ipv6": "http://[fd00:ec2::254]/latest/meta-data/",
        "metadata-google": "http://metadata.google.internal/computeMetadata/v1/",
        "private": "http://10.0.0.5/admin",
        "cgnat": "http://100.64.0.1/",
        "multicast": "http://224.0.0.1/",
        "file": "file:///etc/passwd",
        "gopher": "gopher://127.0.0.1:6379/_INFO",
    }


VECTOR_NAMES = list(_vectors(1))


def _refused(call: Callable[[], Any]) -> BaseException:
    with pytest.raises(Exception) as caught:  # noqa: PT011 (which exception is checked by the caller)
        call()
    return caught.value


@pytest.mark.parametrize(("kind", "transport"), KIND_PARAMS)
def test_every_vector_is_refused_and_nothing_reaches_the_upstream(
    upstream: Upstream, make_registry: RegistryFactory, resolver: Resolver, kind: str, transport: str
) -> None:
    registry = _registry(make_registry, kind, transport, allow_ports=None)
    denied = 0
    for name, url in _vectors(upstream.port).items():
        error = _refused(lambda url=url: _get(registry, kind, url))  # type: ignore[misc]
        if isinstance(error, outbound.EgressDeniedError):
            denied += 1
            assert isinstance(error, requests.ConnectionError if kind == "requests" else Exception)
            assert "hunter2" not in str(error), name
            assert "/ok" not in str(error), name
            assert "egress" in str(error), name
        else:
            # The client library refused a URL it cannot parse (an IDN or octal spelling): nothing was sent either.
            assert "InvalidURL" in type(error).__name__, f"{name}: {type(error).__name__}: {error}"
        assert upstream.requests_log == [], f"{name} reached the upstream"
    assert denied >= len(VECTOR_NAMES) - 3
    health = registry.health()["services"]["hooks"]
    assert health["stats"]["rejected"] == {"egress_denied": denied}


@pytest.mark.parametrize(("kind", "transport"), KIND_PARAMS)
def test_an_allowed_host_is_called_by_its_name(
    upstream: Upstream, make_registry: RegistryFactory, resolver: Resolver, kind: str, transport: str
) -> None:
    registry = _registry(make_registry, kind, transport, **OPEN_LOOPBACK)
    assert _get(registry, kind, f"{upstream.url}ok").status_code == 200
    response = _get(registry, kind, f"http://pinned.test:{upstream.port}/echo")
    assert response.status_code == 200
    # Connected to the checked address; the name stays the Host (and, over TLS, the server name).
    assert response.json()["headers"]["host"] == f"pinned.test:{upstream.port}"
    assert resolver.asked["pinned.test"] >= 1


@pytest.mark.parametrize(("kind", "transport"), KIND_PARAMS)
def test_dns_rebinding_connects_to_the_address_that_was_checked(
    upstream: Upstream, make_registry: RegistryFactory, resolver: Resolver, kind: str, transport: str
) -> None:
    # 127.0.0.2 is allowed (nothing listens there); the second answer, 127.0.0.1, is where the upstream listens.
    registry = _registry(make_registry, kind, transport, allow_cidrs=["127.0.0.2/32"], allow_ports=None)
    error = _refused(lambda: _get(registry, kind, f"http://rebind.test:{upstream.port}/ok"))
    assert isinstance(error, outbound.ConnectError), f"{type(error).__name__}: {error}"
    assert resolver.asked["rebind.test"] == 1  # resolved once; the connection went to that answer
    assert upstream.requests_log == []
    # Asked again, the name now answers loopback: refused before connecting.
    error = _refused(lambda: _get(registry, kind, f"http://rebind.test:{upstream.port}/ok"))
    if resolver.asked["rebind.test"] > 1:  # aiohttp may keep the first answer in its own DNS cache
        assert isinstance(error, outbound.EgressDeniedError)
    assert upstream.requests_log == []


def test_the_rebinding_test_catches_a_guard_that_looks_up_twice(upstream: Upstream, resolver: Resolver) -> None:
    # The broken variant: check the name's first answer, then let the client resolve it again. It reaches the
    # upstream, which the test above shows outbound does not.
    egress = outbound.EgressConfig(allow_cidrs=("127.0.0.2/32",), allow_ports=None)
    from outbound._egress import Egress

    guard = Egress(egress)
    guard.resolve("rebind.test", upstream.port)  # the check passes: 127.0.0.2
    with requests.Session() as session:
        assert session.get(f"http://rebind.test:{upstream.port}/ok", timeout=2).status_code == 200
    assert len(upstream.requests_log) == 1


@pytest.mark.parametrize(("kind", "transport"), KIND_PARAMS)
@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://localhost:{port}/echo",
        "http://0:{port}/echo",
        "file:///etc/passwd",
    ],
)
def test_every_redirect_hop_is_checked_again(
    upstream: Upstream, make_registry: RegistryFactory, resolver: Resolver, kind: str, transport: str, target: str
) -> None:
    # The first hop goes to an allowed host (loopback, by the test rule); the redirect goes where it may not.
    registry = _registry(make_registry, kind, transport, **OPEN_LOOPBACK)
    location = quote(target.format(port=upstream.port), safe="")
    error = _refused(lambda: _get(registry, kind, f"{upstream.url}redirect?to={location}"))
    assert isinstance(error, outbound.EgressDeniedError) or "Protocol" in type(error).__name__, (
        f"{type(error).__name__}: {error}"
    )
    assert [entry["path"].split("?")[0] for entry in upstream.requests_log] == ["/redirect"]


@pytest.mark.parametrize(("kind", "transport"), KIND_PARAMS)
def test_max_redirects_bounds_the_hops(
    upstream: Upstream, make_registry: RegistryFactory, kind: str, transport: str
) -> None:
    registry = _registry(make_registry, kind, transport, max_redirects=1, **OPEN_LOOPBACK)
    two_hops = "redirect?to=" + quote("/redirect?to=/ok", safe="")
    error = _refused(lambda: _get(registry, kind, f"{upstream.url}{two_hops}"))
    assert "TooManyRedirects" in type(error).__name__
    one_hop = "redirect?to=/ok"
    assert _get(registry, kind, f"{upstream.url}{one_hop}").status_code == 200


@pytest.mark.parametrize(("kind", "transport"), KIND_PARAMS)
@pytest.mark.parametrize("stream", [False, True])
def test_max_response_bytes_bounds_the_body(
    upstream: Upstream, make_registry: RegistryFactory, kind: str, transport: str, stream: bool
) -> None:
    registry = _registry(make_registry, kind, transport, max_response_bytes=100, **OPEN_LOOPBACK)
    small = f"{upstream.url}trickle-body?interval=0&bytes=100"
    big = f"{upstream.url}trickle-body?interval=0&bytes=101"
    assert len(_read(registry, kind, small, stream)) == 100
    error = _refused(lambda: _read(registry, kind, big, stream))
    assert isinstance(error, outbound.CallError), f"{type(error).__name__}: {error}"
    assert "max_response_bytes" in str(error)


def _read(registry: Registry, kind: str, url: str, stream: bool) -> bytes:
    if kind == "requests":
        response = registry.session("hooks").get(url, stream=stream)
        return response.content
    if not is_async(kind):
        client = registry.client("hooks")
        if not stream:
            return client.get(url).content  # type: ignore[no-any-return]
        with client.stream("GET", url) as streamed:
            return b"".join(streamed.iter_bytes())

    async def call() -> bytes:
        client = registry.async_client("hooks")
        if not stream:
            return (await client.get(url)).content  # type: ignore[no-any-return]
        async with client.stream("GET", url) as streamed:
            return b"".join([chunk async for chunk in streamed.aiter_bytes()])

    return asyncio.run(call())


def test_a_service_with_egress_needs_no_base_url() -> None:
    config = outbound.parse_config({"services": {"hooks": {"egress": {}}}})
    egress = config.services["hooks"].egress
    assert config.services["hooks"].base_url == ""
    assert egress == outbound.EgressConfig()
    assert egress.allow_ports == frozenset({80, 443})
    with pytest.raises(outbound.ConfigError, match="egress") as caught:
        outbound.parse_config({"services": {"hooks": {}}})
    assert caught.value.key == "base_url"


@pytest.mark.parametrize(
    ("egress", "key", "words"),
    [
        ({"allow_hosts": "example.com"}, "egress.allow_hosts", "must be a list"),
        ({"allow_hosts": ["exa mple.com"]}, "egress.allow_hosts", "host names"),
        ({"deny_hosts": [""]}, "egress.deny_hosts", "must contain"),
        ({"allow_cidrs": ["10.0.0.0/33"]}, "egress.allow_cidrs", "address ranges"),
        ({"allow_ports": [0]}, "egress.allow_ports", "1-65535"),
        ({"allow_ports": "80"}, "egress.allow_ports", "list of ports"),
        ({"max_redirects": -1}, "egress.max_redirects", ">= 0"),
        ({"max_response_bytes": 0}, "egress.max_response_bytes", "positive"),
        ({"allow_schemes": ["ftp"]}, "egress.allow_schemes", "unknown key"),
        ("yes", "egress", "mapping"),
    ],
)
def test_bad_egress_settings_name_the_service_and_key(egress: Any, key: str, words: str) -> None:
    with pytest.raises(outbound.ConfigError) as caught:
        outbound.parse_config({"services": {"hooks": {"egress": egress}}})
    assert caught.value.service == "hooks"
    assert caught.value.key == key
    assert words in str(caught.value)


def test_host_patterns_and_ports() -> None:
    from outbound._egress import Egress

    guard = Egress(outbound.EgressConfig(allow_hosts=("*.example.com", "example.org"), deny_hosts=("bad.example.com",)))
    assert guard.check_url("https://api.example.com/x") is None
    assert guard.check_url("https://example.org/") is None
    assert guard.check_url("https://EXAMPLE.ORG./") is None
    for url, rule in [
        ("https://example.com/", "egress.allow_hosts"),  # the apex is not a subdomain
        ("https://example.com.evil.net/", "egress.allow_hosts"),
        ("https://bad.example.com/", "egress.deny_hosts"),
        ("https://api.example.com:8443/", "egress.allow_ports"),
        ("ftp://api.example.com/", "scheme"),
        ("/etc/passwd", "no scheme"),
        ("http:///path", "no host"),
    ]:
        refusal = guard.check_url(url)
        assert refusal is not None, url
        assert rule in refusal.detail, url


def test_addresses_a_name_resolves_to_are_all_checked() -> None:
    from outbound._egress import Egress, EgressRefused

    guard = Egress(outbound.EgressConfig())
    public = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443))
    private = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 443))
    assert guard.addresses("mixed.test", [public]) == [public]
    with pytest.raises(EgressRefused, match="private"):
        guard.addresses("mixed.test", [public, private])  # one bad answer refuses the name
    with pytest.raises(EgressRefused, match="no address"):
        guard.addresses("empty.test", [])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.254",
        "0.0.0.0",
        "224.0.0.251",
        "255.255.255.255",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",
        "fc00::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::10.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
    ],
)
def test_addresses_refused_by_default(address: str) -> None:
    import ipaddress

    from outbound._egress import address_problem

    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    import ipaddress

    from outbound._egress import address_problem

    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("kind", "transport"), KIND_PARAMS)
def test_egress_with_a_proxy_checks_the_url_and_lets_the_proxy_resolve(
    upstream: Upstream, make_registry: RegistryFactory, resolver: Resolver, proxy: Any, kind: str, transport: str
) -> None:
    service = {
        "client": client_of(kind),
        "transport": transport,
        "proxy": proxy.url,  # on 127.0.0.1: the connection to the proxy itself is not an egress
        "egress": {"allow_ports": None},
        "retry": {"total": 0},
    }
    registry = make_registry(hooks=service, open={**service, "egress": {"allow_ports": None, "deny_hosts": []}})
    error = _refused(lambda: _get(registry, kind, f"{upstream.url}ok"))
    assert isinstance(error, outbound.EgressDeniedError)  # a literal loopback address in the URL: checked here
    error = _refused(lambda: _get(registry, kind, f"http://localhost:{upstream.port}/ok"))
    assert isinstance(error, outbound.EgressDeniedError)  # deny_hosts' defaults hold behind a proxy too
    assert upstream.requests_log == []
    assert proxy.requests == 0
    # Without them, a name is the proxy's to resolve (docs/egress.md, "Behind a proxy"): this one is the upstream's.
    opened = registry.session("open") if kind == "requests" else None
    url = f"http://localhost:{upstream.port}/ok"
    response = opened.get(url) if opened is not None else _get_from(registry, kind, "open", url)
    assert response.status_code == 200
    assert proxy.requests == 1


@pytest.fixture
def unannounced_body() -> Iterator[str]:
    """A server on 127.0.0.1 that answers every request with a 200-byte body and no Content-Length (read to the
    close): the size is known only once the body has been read."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2.0)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 200)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


@pytest.mark.parametrize(("kind", "transport"), KIND_PARAMS)
@pytest.mark.parametrize("stream", [False, True])
def test_max_response_bytes_stops_a_body_without_content_length(
    make_registry: RegistryFactory, unannounced_body: str, kind: str, transport: str, stream: bool
) -> None:
    registry = _registry(make_registry, kind, transport, max_response_bytes=150, **OPEN_LOOPBACK)
    error = _refused(lambda: _read(registry, kind, unannounced_body, stream))
    assert isinstance(error, outbound.CallError), f"{type(error).__name__}: {error}"
    assert "max_response_bytes" in str(error)
    roomy = _registry(make_registry, kind, transport, max_response_bytes=200, **OPEN_LOOPBACK)
    assert _read(roomy, kind, unannounced_body, stream) == b"x" * 200


@pytest.mark.parametrize(("kind", "transport"), KIND_PARAMS)
def test_a_bounded_body_keeps_the_failures_of_an_unbounded_one(
    upstream: Upstream, make_registry: RegistryFactory, kind: str, transport: str
) -> None:
    # The body is read through the limit: a read that stalls is still a read timeout, and (requests) a redirect whose
    # body cannot be decoded is still followed, as requests follows it.
    service = {
        "client": client_of(kind),
        "transport": transport,
        "egress": OPEN_LOOPBACK,
        "timeout": {"connect": 1.0, "read": 0.2, "total": 3.0},
        "retry": {"total": 0},
    }
    registry = make_registry(hooks=service)
    error = _refused(lambda: _get(registry, kind, f"{upstream.url}trickle-body?interval=0.5&bytes=5"))
    assert isinstance(error, outbound.ReadTimeoutError), f"{type(error).__name__}: {error}"
    if kind == "requests":
        assert _get(registry, kind, f"{upstream.url}redirect-bad-gzip?to=/ok").status_code == 200


def test_egress_null_is_the_same_service_as_no_egress() -> None:
    # The only way to write egress off: nothing of it is built (no check on send, no guarded connections).
    off = outbound.parse_config({"services": {"s": {"base_url": "http://api.example/", "egress": None}}})
    absent = outbound.parse_config({"services": {"s": {"base_url": "http://api.example/"}}})
    assert off == absent
    registry = Registry(off)
    try:
        session = registry.session("s")
        assert "send" not in vars(session)
        assert session.adapter.egress is None
        assert all(
            not hasattr(cls.ConnectionCls, "egress")
            for cls in session.adapter.poolmanager.pool_classes_by_scheme.values()
        )
    finally:
        registry.close()


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """An HTTPS upstream on 127.0.0.1 whose certificate names ``pinned.test`` only; the CA bundle that trusts it."""
    import ssl

    import trustme

    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("pinned.test").configure_cert(server_context)
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    with Upstream("127.0.0.1", 0, tls=server_context) as secure:
        yield str(bundle), secure.port


@pytest.mark.parametrize(("kind", "transport"), KIND_PARAMS)
def test_tls_checks_the_name_while_the_connection_goes_to_the_checked_address(
    make_registry: RegistryFactory, resolver: Resolver, tls_upstream: tuple[str, int], kind: str, transport: str
) -> None:
    bundle, port = tls_upstream
    registry = make_registry(
        hooks={
            "client": client_of(kind),
            "transport": transport,
            "verify": bundle,
            "egress": OPEN_LOOPBACK,
            "retry": {"total": 0},
        }
    )
    # The certificate names pinned.test: verified against the name (SNI too), though the socket went to 127.0.0.1.
    assert _get(registry, kind, f"https://pinned.test:{port}/ok").status_code == 200
    assert resolver.asked["pinned.test"] >= 1
    # By its address the same server fails verification: the name, not the address, is what TLS checks.
    error = _refused(lambda: _get(registry, kind, f"https://127.0.0.1:{port}/ok"))
    assert isinstance(error, outbound.CallError)
    assert not isinstance(error, outbound.EgressDeniedError)


def test_a_probe_path_needs_a_base_url() -> None:
    with pytest.raises(outbound.ConfigError) as caught:
        outbound.parse_config({"services": {"hooks": {"egress": {}, "probe": "health"}}})
    assert caught.value.key == "probe"
    config = outbound.parse_config({"services": {"hooks": {"egress": {}, "probe": "https://example.com/health"}}})
    assert config.services["hooks"].probe == "https://example.com/health"


@pytest.fixture
def second_loopback() -> Iterator[Upstream]:
    """An upstream on 127.0.0.2: a host the tests may allow while 127.0.0.1 stays refused."""
    with Upstream("127.0.0.2", 0) as server:
        yield server


@pytest.mark.parametrize(("kind", "transport"), KIND_PARAMS)
def test_a_redirect_to_a_name_that_resolves_inside_is_refused_at_the_connection(
    upstream: Upstream,
    second_loopback: Upstream,
    make_registry: RegistryFactory,
    resolver: Resolver,
    kind: str,
    transport: str,
) -> None:
    # The first hop (127.0.0.2) is allowed; its redirect names internal.test, which resolves to 127.0.0.1: nothing in
    # the URL gives it away, the address check at the connection refuses it.
    registry = _registry(make_registry, kind, transport, allow_cidrs=["127.0.0.2/32"], allow_ports=None)
    location = quote(f"http://internal.test:{upstream.port}/echo", safe="")
    error = _refused(lambda: _get(registry, kind, f"{second_loopback.url}redirect?to={location}"))
    assert isinstance(error, outbound.EgressDeniedError), f"{type(error).__name__}: {error}"
    assert "internal.test" in str(error)
    assert len(second_loopback.recent("/redirect")) == 1
    assert upstream.requests_log == []
    assert resolver.asked["internal.test"] == 1
