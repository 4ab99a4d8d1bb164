"""Endpoints from DNS (``discovery``, issue 31): a real DNS server on 127.0.0.1 (dnspython's messages over UDP) and
real upstreams on 127.0.0.1-3, one port: routing with the name as Host (and TLS name), refreshes, a failing lookup."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from outbound import ConfigError, Registry
from tests.upstream import Upstream

from .conftest import Send

NAME = "catalog.test"


class DnsServer:
    """Answers A queries for the names in ``records`` (TTL ``ttl``); NXDOMAIN for others; nothing while muted."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.ttl = 30
        self.muted = False
        self.queries = 0
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self.address = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._socket.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if self.muted:
                continue
            self.queries += 1
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text().rstrip(".")
            if name not in self.records:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A and self.records[name]:
                response.answer.append(dns.rrset.from_text(question.name, self.ttl, "IN", "A", *self.records[name]))
            self._socket.sendto(response.to_wire(), peer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._socket.close()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer()
    yield server
    server.stop()


@pytest.fixture
def replicas() -> Iterator[list[Upstream]]:
    """Three upstreams on 127.0.0.1, .2 and .3, one port: the addresses behind one name."""
    first = Upstream("127.0.0.1").start()
    servers = [first]
    try:
        servers += [Upstream(host, first.port).start() for host in ("127.0.0.2", "127.0.0.3")]
        yield servers
    finally:
        for server in servers:
            server.stop()


def discovery(dns_server: DnsServer, port: int, **more: Any) -> dict[str, Any]:
    return {"dns": NAME, "port": port, "scheme": "http", "path": "/v1/", "nameserver": dns_server.address, **more}


def test_calls_go_to_every_address_with_the_name_as_host(
    kind: str, send: Send, dns_server: DnsServer, replicas: list[Upstream], make_registry: Any
) -> None:
    dns_server.records[NAME] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    port = replicas[0].port
    registry = make_registry(s={"discovery": discovery(dns_server, port), "client": kind, "balance": "round_robin"})
    for _ in range(9):
        assert send(registry, "s", "GET", "ok").status_code == 200
    assert [server.hits for server in replicas] == [3, 3, 3]
    for server in replicas:
        last = server.recent()[-1]
        assert last["path"] == "/v1/ok"
        assert last["headers"]["host"] == f"{NAME}:{port}"


def test_async_calls_go_to_every_address(
    async_transport: str, dns_server: DnsServer, replicas: list[Upstream], make_registry: Any
) -> None:
    dns_server.records[NAME] = ["127.0.0.1", "127.0.0.2"]
    registry = make_registry(
        s={
            "discovery": discovery(dns_server, replicas[0].port),
            "client": "httpx",
            "transport": async_transport,
            "balance": "round_robin",
        }
    )

    async def main() -> None:
        client = registry.async_client("s")
        for _ in range(4):
            (await client.get("ok")).raise_for_status()

    asyncio.run(main())
    assert [server.hits for server in replicas] == [2, 2, 0]
    assert replicas[1].recent()[-1]["headers"]["host"] == f"{NAME}:{replicas[0].port}"


def test_a_name_that_does_not_resolve_is_a_config_error(dns_server: DnsServer) -> None:
    with pytest.raises(ConfigError) as raised:
        Registry.from_mapping({"services": {"s": {"discovery": discovery(dns_server, 8000)}}})
    assert raised.value.service == "s"
    assert raised.value.key == "discovery.dns"
    assert "has no A or AAAA record" in str(raised.value)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"discovery": {"port": 80}}, "discovery.dns"),
        ({"discovery": {"dns": "a.test", "scheme": "ftp"}}, "discovery.scheme"),
        ({"discovery": {"dns": "a.test", "nameserver": "127.0.0.1:x"}}, "discovery.nameserver"),
        ({"discovery": {"dns": "a.test"}, "endpoints": ["http://a/", "http://b/"]}, "endpoints"),
    ],
)
def test_bad_discovery_settings_are_config_errors(settings: dict[str, Any], key: str) -> None:
    from outbound import parse_config

    with pytest.raises(ConfigError) as raised:
        parse_config({"services": {"s": settings}})
    assert raised.value.service == "s"
    assert {error.key for error in raised.value.errors} & {key, "discovery"}


def test_the_set_follows_the_records_and_a_failed_lookup_keeps_the_last_good_one(
    dns_server: DnsServer, replicas: list[Upstream], make_registry: Any, caplog: pytest.LogCaptureFixture
) -> None:
    dns_server.records[NAME] = ["127.0.0.1", "127.0.0.2"]
    dns_server.ttl = 1
    registry = make_registry(
        s={"discovery": discovery(dns_server, replicas[0].port), "client": "httpx", "balance": "round_robin"}
    )
    client = registry.client("s")
    for _ in range(4):
        client.get("ok").raise_for_status()
    assert [server.hits for server in replicas] == [2, 2, 0]
    dns_server.records[NAME] = ["127.0.0.2", "127.0.0.3"]
    time.sleep(1.1)
    client.get("ok").raise_for_status()  # past the TTL: this call starts a lookup, and goes on with the current set
    endpoints = registry._open("s").policy.endpoints
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len([e for e in endpoints.endpoints if "127.0.0.3" in e.url]) == 0:
        time.sleep(0.05)
    for server in replicas:
        server.reset()
    for _ in range(4):
        client.get("ok").raise_for_status()
    assert [server.hits for server in replicas] == [0, 2, 2]

    dns_server.muted = True
    time.sleep(1.1)
    with caplog.at_level(logging.WARNING, logger="outbound.endpoints"):
        for _ in range(3):
            client.get("ok").raise_for_status()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not endpoints.refresh_due < float("inf"):
                time.sleep(0.05)  # the lookup times out (2 s): wait for it to finish
            time.sleep(1.1)
    warnings = [record for record in caplog.records if "the last 2 endpoints stay in use" in record.getMessage()]
    assert len(warnings) == 1
    assert sorted(row["url"] for row in endpoints.snapshot()) == [
        f"http://127.0.0.2:{replicas[0].port}/v1/",
        f"http://127.0.0.3:{replicas[0].port}/v1/",
    ]


def test_over_tls_the_certificate_is_checked_against_the_name(
    kind: str, send: Send, dns_server: DnsServer, make_registry: Any, tmp_path: Path
) -> None:
    import trustme

    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(NAME).configure_cert(context)  # the name only: an address would fail the check
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    first = Upstream("127.0.0.1", tls=context).start()
    second = Upstream("127.0.0.2", first.port, tls=context).start()
    try:
        dns_server.records[NAME] = ["127.0.0.1", "127.0.0.2"]
        registry = make_registry(
            s={
                "discovery": {**discovery(dns_server, first.port), "scheme": "https"},
                "client": kind,
                "verify": str(bundle),
                "balance": "round_robin",
            }
        )
        for _ in range(4):
            assert send(registry, "s", "GET", "ok").status_code == 200
        assert (first.hits, second.hits) == (2, 2)
    finally:
        first.stop()
        second.stop()


def test_a_dns_server_that_does_not_answer_at_start_is_a_config_error(dns_server: DnsServer) -> None:
    dns_server.muted = True
    with pytest.raises(ConfigError, match=r"services\.s\.discovery\.dns.*did not resolve"):
        Registry.from_mapping({"services": {"s": {"discovery": discovery(dns_server, 8000)}}})


def test_a_forked_child_looks_the_name_up_again(
    dns_server: DnsServer, replicas: list[Upstream], make_registry: Any
) -> None:
    import os

    dns_server.records[NAME] = ["127.0.0.1"]
    registry = make_registry(s={"discovery": discovery(dns_server, replicas[0].port), "client": "httpx"})
    registry.client("s").get("ok").raise_for_status()
    dns_server.records[NAME] = ["127.0.0.2"]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first call starts a lookup, which finds the new address
        try:
            endpoints = registry._open("s").policy.endpoints
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and "127.0.0.2" not in endpoints.endpoints[0].url:
                registry.client("s").get("ok")
                time.sleep(0.05)
            os.write(write, f"{len(endpoints.endpoints)} {endpoints.endpoints[0].url}".encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read, 200).decode()
    os.close(read)
    assert status == 0
    assert answer == f"1 http://127.0.0.2:{replicas[0].port}/v1/"
