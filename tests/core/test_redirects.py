"""Redirects through managed clients: credentials never cross to another origin; a call's own cookies follow it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from outbound import Registry
from tests.conftest import RegistryFactory
from tests.core.conftest import ASYNC_KINDS, HTTPX_LIBRARIES, SYNC_KINDS, client_of, is_async, with_async_transports
from tests.upstream import Upstream

KINDS = [*SYNC_KINDS, *ASYNC_KINDS]
SECRET_HEADERS = {"Authorization": "Bearer hop-secret", "X-Api-Key": "key-secret", "Proxy-Authorization": "Basic x"}


@pytest.fixture
def other_origin() -> Iterator[Upstream]:
    """A second upstream: same host, another port, so another origin."""
    with Upstream() as server:
        yield server


def _get(registry: Registry, kind: str, url: str, *, hand_set: bool = False, **kwargs: Any) -> Any:
    if kind == "requests":
        return registry.session("api").get(url, **kwargs)
    if kind in HTTPX_LIBRARIES:
        return registry.client("api").get(url, follow_redirects=True, **kwargs)

    async def call() -> Any:
        client = registry.async_client("api")
        if hand_set:
            client.cookies.set("handset", "jar-secret")  # each event loop's client is its own object
        return await client.get(url, follow_redirects=True, **kwargs)

    return asyncio.run(call())


def _registry(make_registry: RegistryFactory, upstream: Upstream, kind: str, transport: str) -> Registry:
    client = client_of(kind)
    registry = make_registry(
        api={"base_url": upstream.url, "client": client, "transport": transport, "sensitive_headers": ["X-Api-Key"]}
    )
    # A cookie set on the shared client by hand, with no domain: as requests and httpx would send it anywhere.
    jar = registry.session("api").cookies if kind == "requests" else registry.client("api").cookies
    jar.set("handset", "jar-secret")
    return registry


def _sent(server: Upstream, path: str) -> dict[str, str]:
    [request] = server.recent(path)
    headers: dict[str, str] = request["headers"]
    return headers


@pytest.mark.parametrize(("kind", "transport"), with_async_transports(KINDS))
def test_a_redirect_to_another_origin_carries_no_credentials(
    upstream: Upstream, other_origin: Upstream, make_registry: RegistryFactory, kind: str, transport: str
) -> None:
    registry = _registry(make_registry, upstream, kind, transport)
    # The ways a caller hands cookies to a call that the libraries carry across redirects: requests' per-call
    # cookies=, and cookies set on the client by hand.
    extra: dict[str, Any] = {"cookies": {"call": "call-secret"}} if kind == "requests" else {}
    target = quote(f"{other_origin.url}echo", safe="")
    response = _get(registry, kind, f"redirect?to={target}", hand_set=True, headers=SECRET_HEADERS, **extra)
    assert response.status_code == 200
    first_hop = _sent(upstream, "/redirect")
    assert "hop-secret" in first_hop["authorization"]  # the service's own origin got them
    assert "jar-secret" in first_hop["cookie"]
    other = _sent(other_origin, "/echo")
    for name in ("authorization", "proxy-authorization", "x-api-key", "cookie"):
        assert name not in other, f"{name} crossed to another origin"


@pytest.mark.parametrize(("kind", "transport"), with_async_transports(KINDS))
def test_a_redirect_within_the_origin_keeps_the_credentials(
    upstream: Upstream, make_registry: RegistryFactory, kind: str, transport: str
) -> None:
    registry = _registry(make_registry, upstream, kind, transport)
    # requests carries per-call cookies= across redirects; both libraries rebuild Cookie from their jars on each
    # hop, so an explicit Cookie header is dropped by either on any redirect.
    extra: dict[str, Any] = {"cookies": {"call": "c"}} if kind == "requests" else {}
    _get(registry, kind, "redirect?to=/echo", headers={"Authorization": "Bearer hop-secret"}, **extra)
    sent = _sent(upstream, "/echo")
    assert sent["authorization"] == "Bearer hop-secret"
    if kind == "requests":
        assert "call=c" in sent["cookie"]
    if not is_async(kind):
        assert "handset=jar-secret" in sent["cookie"]


@pytest.mark.parametrize(("kind", "transport"), with_async_transports(KINDS))
def test_a_cookie_set_by_a_redirect_follows_the_same_call_only(
    upstream: Upstream, make_registry: RegistryFactory, kind: str, transport: str
) -> None:
    client = client_of(kind)
    registry = make_registry(api={"base_url": upstream.url, "client": client, "transport": transport})
    login = "redirect?status=303&to=/cookies&set_cookie=" + quote("session=alice", safe="")
    if kind == "requests":
        response = registry.session("api").post(login)
    elif kind in HTTPX_LIBRARIES:
        response = registry.client("api").post(login, follow_redirects=True)
    else:

        async def call() -> Any:
            return await registry.async_client("api").post(login, follow_redirects=True)

        response = asyncio.run(call())
    assert response.json() == {"cookie": "session=alice"}
    assert _get(registry, kind, "cookies").json() == {"cookie": None}  # the shared client kept nothing


def test_requests_follows_a_redirect_whose_body_cannot_be_decoded(
    upstream: Upstream, make_registry: RegistryFactory
) -> None:
    registry = make_registry(api={"base_url": upstream.url})
    response = registry.session("api").get("redirect-bad-gzip?to=/ok")
    assert response.status_code == 200
    assert response.text == "ok"
    assert [r.status_code for r in response.history] == [302]


@pytest.fixture(scope="module")
def default_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """An HTTP upstream on port 80 and an HTTPS one on port 443 of 127.0.0.2 (loopback: the whole 127/8 is), so a
    redirect can upgrade http to https on the default ports; the CA bundle that trusts the HTTPS one."""
    import os
    import ssl

    import trustme

    if os.geteuid() != 0:
        pytest.skip("binding ports 80 and 443 needs root (CI runs as root)")
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.2").configure_cert(server_context)
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    with Upstream("127.0.0.2", 80) as plain, Upstream("127.0.0.2", 443, tls=server_context) as secure:
        assert (plain.port, secure.port) == (80, 443)
        yield str(bundle), secure.url


@pytest.mark.parametrize(("kind", "transport"), with_async_transports(KINDS))
def test_an_upgrade_to_https_on_the_same_host_keeps_the_credentials(
    default_ports: tuple[str, str], make_registry: RegistryFactory, kind: str, transport: str
) -> None:
    # requests' should_strip_auth and httpx's _is_https_redirect both keep Authorization for http:80 -> https:443 on
    # the same host (httpx's test_same_domain_https_redirect_with_auth_header); a managed client follows that rule.
    bundle, secure_url = default_ports
    client = client_of(kind)
    registry = make_registry(
        api={
            "base_url": "http://127.0.0.2/",
            "client": client,
            "transport": transport,
            "verify": bundle,
            "sensitive_headers": ["X-Api-Key"],
        }
    )
    target = quote(f"{secure_url}echo", safe="")
    response = _get(registry, kind, f"redirect?to={target}", headers={"Authorization": "Bearer up", "X-Api-Key": "k"})
    assert response.status_code == 200
    sent = response.json()["headers"]
    assert sent["authorization"] == "Bearer up"
    assert sent["x-api-key"] == "k"


@pytest.mark.parametrize(
    ("old", "new", "follow"),
    [
        ("http://h/", "http://h/x", True),
        ("http://h/", "https://h/", True),  # the upgrade on default ports
        ("http://h:80/", "https://h:443/", True),
        ("https://h/", "http://h/", False),  # a downgrade
        ("http://h:8080/", "https://h/", False),
        ("http://h/", "https://h:8443/", False),
        ("http://h/", "https://other/", False),
        ("http://h/", "http://h:81/", False),
        ("HTTP://H/", "https://h/", True),
    ],
)
def test_the_rule_for_credentials_on_a_redirect(old: str, new: str, follow: bool) -> None:
    from outbound._backends._origins import credentials_follow, url_origin

    assert credentials_follow(url_origin(old), url_origin(new)) is follow
