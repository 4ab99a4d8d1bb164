"""The test forwarding proxy, through plain requests and httpx clients (not outbound's) and raw sockets."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests

from tests.proxy import ForwardingProxy
from tests.upstream import Upstream

pytestmark = pytest.mark.real_server  # every test here talks to a server on 127.0.0.1

CREDENTIALS = "Basic " + base64.b64encode(b"user:pass").decode()
Get = Callable[[str], Any]  # a requests.Response or an httpx.Response


@pytest.fixture
def proxy() -> Iterator[ForwardingProxy]:
    with ForwardingProxy() as server:
        yield server


@pytest.fixture
def auth_proxy() -> Iterator[ForwardingProxy]:
    with ForwardingProxy(auth=("user", "pass")) as server:
        yield server


@pytest.fixture(params=["requests", "httpx"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.contextmanager
def plain_client(kind: str, proxy_url: str) -> Iterator[Get]:
    """A plain requests Session or httpx Client that sends http:// URLs through ``proxy_url``."""
    if kind == "requests":
        with requests.Session() as session:
            session.trust_env = False  # environment proxies would take precedence over session.proxies
            session.proxies = {"http": proxy_url}
            yield lambda url: session.get(url, timeout=5)
    else:
        with httpx.Client(proxy=proxy_url, trust_env=False, timeout=5) as client:
            yield client.get


def with_credentials(proxy: ForwardingProxy, userinfo: str) -> str:
    return proxy.url.replace("http://", f"http://{userinfo}@")


def exchange(proxy: ForwardingProxy, raw: bytes) -> bytes:
    """Send ``raw`` to the proxy and read until it closes the connection."""
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        assert chunk, "closed before the end of the head"
        data += chunk
    return data


# -- absolute-form requests ------------------------------------------------------------------------------------------


def test_two_gets_through_the_proxy_on_one_kept_alive_connection(
    kind: str, proxy: ForwardingProxy, upstream: Upstream
) -> None:
    with plain_client(kind, proxy.url) as get:
        first = get(f"{upstream.url}echo?a=1")
        second = get(f"{upstream.url}ok")

    assert first.status_code == 200
    assert first.json()["path"] == "/echo?a=1"  # forwarded in origin form
    assert (second.status_code, second.content) == (200, b"ok")
    assert (proxy.requests, proxy.tunnels, proxy.connections_total) == (2, 0, 1)
    assert upstream.hits == 2
    forwarded = upstream.recent("/echo")[0]["headers"]
    assert "proxy-connection" not in forwarded
    assert forwarded["host"] == f"127.0.0.1:{upstream.port}"


def test_proxy_auth_is_required_when_configured(kind: str, auth_proxy: ForwardingProxy, upstream: Upstream) -> None:
    with plain_client(kind, auth_proxy.url) as get:
        refused = get(f"{upstream.url}ok")
    with plain_client(kind, with_credentials(auth_proxy, "user:wrong")) as get:
        wrong = get(f"{upstream.url}ok")
    with plain_client(kind, with_credentials(auth_proxy, "user:pass")) as get:
        accepted = get(f"{upstream.url}echo")

    assert refused.status_code == 407
    assert refused.headers["Proxy-Authenticate"] == 'Basic realm="test"'
    assert wrong.status_code == 407
    assert accepted.status_code == 200
    assert auth_proxy.proxy_authorizations == ["Basic " + base64.b64encode(b"user:wrong").decode(), CREDENTIALS]
    assert auth_proxy.requests == 1  # refused requests are not forwarded
    assert upstream.hits == 1
    assert "proxy-authorization" not in upstream.recent("/echo")[0]["headers"]


def test_a_refused_request_keeps_the_connection_for_the_next(auth_proxy: ForwardingProxy, upstream: Upstream) -> None:
    conn = http.client.HTTPConnection(auth_proxy.host, auth_proxy.port, timeout=5)
    conn.request("GET", f"{upstream.url}ok")
    refused = conn.getresponse()
    refused.read()
    conn.request("GET", f"{upstream.url}ok", headers={"Proxy-Authorization": CREDENTIALS})
    accepted = conn.getresponse()
    assert (refused.status, accepted.status, accepted.read()) == (407, 200, b"ok")
    assert auth_proxy.connections_total == 1
    conn.close()


def test_only_local_targets_are_reachable(proxy: ForwardingProxy) -> None:
    forwarded = exchange(proxy, b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
    tunnelled = exchange(proxy, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert forwarded.startswith(b"HTTP/1.1 403 ")
    assert tunnelled.startswith(b"HTTP/1.1 403 ")
    assert (proxy.requests, proxy.tunnels) == (0, 0)


def test_localhost_is_reachable(proxy: ForwardingProxy, upstream: Upstream) -> None:
    response = exchange(
        proxy, f"GET http://localhost:{upstream.port}/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"\r\n\r\nok")


def test_an_unreachable_upstream_is_a_502(kind: str, proxy: ForwardingProxy) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        closed_port = placeholder.getsockname()[1]  # nothing listens once this socket is closed
    with plain_client(kind, proxy.url) as get:
        response = get(f"http://127.0.0.1:{closed_port}/")
    assert response.status_code == 502


def test_a_trickled_body_is_relayed_as_it_arrives(proxy: ForwardingProxy, upstream: Upstream) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(f"GET {upstream.url}trickle-body?interval=0.1&bytes=10 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        started = time.monotonic()
        head = read_head(sock)
        head_at = time.monotonic()
        body = b""
        while len(body) < 10:
            body += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head_at - started < 0.5  # not held back until the whole body is in
    assert body == b"x" * 10


def test_a_response_cut_short_closes_the_client_connection(proxy: ForwardingProxy, upstream: Upstream) -> None:
    response = exchange(proxy, f"GET {upstream.url}truncated HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"\r\n\r\n" + b"x" * 10)


# -- CONNECT tunnels -------------------------------------------------------------------------------------------------


def test_connect_tunnel_carries_plain_http(proxy: ForwardingProxy, upstream: Upstream) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        target = f"127.0.0.1:{upstream.port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(f"GET /echo HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk

    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(body)["path"] == "/echo"
    assert (proxy.requests, proxy.tunnels) == (0, 1)
    assert len(upstream.recent("/echo")) == 1


def test_connect_tunnel_with_http_client_and_proxy_auth(auth_proxy: ForwardingProxy, upstream: Upstream) -> None:
    refused = http.client.HTTPConnection(auth_proxy.host, auth_proxy.port, timeout=5)
    refused.set_tunnel("127.0.0.1", upstream.port)
    with pytest.raises(OSError, match="407"):
        refused.request("GET", "/ok")
    refused.close()

    conn = http.client.HTTPConnection(auth_proxy.host, auth_proxy.port, timeout=5)
    conn.set_tunnel("127.0.0.1", upstream.port, headers={"Proxy-Authorization": CREDENTIALS})
    bodies = []
    for _ in range(2):  # two requests through one tunnel
        conn.request("GET", "/ok")
        bodies.append(conn.getresponse().read())
    conn.close()

    assert bodies == [b"ok", b"ok"]
    assert (auth_proxy.tunnels, auth_proxy.requests) == (1, 0)
    assert auth_proxy.proxy_authorizations == [CREDENTIALS]
    assert upstream.connections_total == 1


def test_stop_closes_open_tunnels_promptly(upstream: Upstream) -> None:
    before = upstream.live_connections
    proxy = ForwardingProxy().start()
    with socket.create_connection((proxy.host, proxy.port), timeout=2) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200 ")

        started = time.monotonic()
        proxy.stop()
        assert time.monotonic() - started < 1
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(65536) == b""
        assert time.monotonic() - started < 1
    assert upstream.wait_for(lambda: upstream.live_connections <= before, timeout=2)
    proxy.stop()  # a second stop is harmless
