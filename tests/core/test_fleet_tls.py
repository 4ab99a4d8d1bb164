"""The fleet over TLS with an ACL user (issue 26, item 3): a real redis-server with ``--tls-port`` that verifies
client certificates and knows one user, certificates made by ``openssl`` for the test; the password is never shown.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import outbound
from outbound import Registry
from tests.redis_topologies import SentinelGroup, free_ports
from tests.upstream import Upstream, wait_until

PASSWORD = "s3cret-Pa55"


def _openssl(*args: str) -> None:
    binary = shutil.which("openssl")
    assert binary is not None, "apt-get install -y openssl"
    subprocess.run([binary, *args], check=True, capture_output=True, timeout=60)


def _authority(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}-ca.key", directory / f"{name}-ca.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name} CA",
             "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return key, cert


def _signed(directory: Path, name: str, ca: tuple[Path, Path], *, server: bool) -> tuple[Path, Path]:
    key, request, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(request))
    extensions = directory / f"{name}.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n" if server else "extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", str(request), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
             "-days", "2", "-out", str(cert), "-extfile", str(extensions))  # fmt: skip
    return key, cert


class TlsRedis:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = _authority(directory, "test")
        self.other_ca = _authority(directory, "other")
        self.server = _signed(directory, "server", self.ca, server=True)
        self.client = _signed(directory, "client", self.ca, server=False)
        (self.port,) = free_ports(1)
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, *, password: str = PASSWORD, ca: Path | None = None) -> str:
        query = f"ssl_ca_certs={ca or self.ca[1]}&ssl_certfile={self.client[1]}&ssl_keyfile={self.client[0]}"
        return f"rediss://app:{password}@127.0.0.1:{self.port}/0?{query}"

    def __enter__(self) -> TlsRedis:
        binary = shutil.which("redis-server")
        assert binary is not None, "apt-get install -y redis-server"
        args = [binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.directory), "--logfile", str(self.directory / "log"),
                "--tls-cert-file", str(self.server[1]), "--tls-key-file", str(self.server[0]),
                "--tls-ca-cert-file", str(self.ca[1]), "--tls-auth-clients", "yes",
                "--user", "default", "off", "--user", "app", "on", f">{PASSWORD}", "~*", "&*", "+@all"]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url(), socket_timeout=1)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, OSError):
                if client.ping():
                    return self
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"redis-server with TLS did not start (see {self.directory / 'log'})")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    with TlsRedis(tmp_path_factory.mktemp("tls")) as server:
        yield server


def _mapping(upstream: Upstream, url: str, **service: Any) -> dict[str, Any]:
    api = {"base_url": upstream.url, "retry": None, "breaker": {"fail_max": 3, "reset_timeout": 30}, **service}
    # A TLS handshake takes longer than the default 50 ms on a loaded machine: give each command a second.
    state = {
        "backend": "redis",
        "url": url,
        "prefix": f"t-{uuid.uuid4().hex[:6]}",
        "sync_interval": 0.2,
        "timeout": 1.0,
    }
    return {"services": {"api": api}, "state": state}


def test_a_fleet_over_tls_with_a_client_certificate_and_an_acl_user(tls_redis: TlsRedis, upstream: Upstream) -> None:
    mapping = _mapping(upstream, tls_redis.url(), rate_limit={"rate": "2/minute", "scope": "fleet", "max_wait": 0})
    with Registry.from_mapping(mapping) as a, Registry.from_mapping(mapping) as b:
        b.session("api").get("ok")
        a.session("api").get("ok")
        with pytest.raises(outbound.RateLimitedError):  # the fleet's two permits are spent
            b.session("api").get("ok")
        a.isolate("api")
        assert wait_until(lambda: b["api"].policy.breaker.state == "isolated", timeout=5)
        report = b.health()
        assert report["state_backend"]["status"] == "ok"
        assert report["workers"] == 2
        assert PASSWORD not in json.dumps(report)


@pytest.mark.parametrize(
    ("problem", "expected"),
    [("password", "AuthenticationError"), ("ca", "CERTIFICATE_VERIFY_FAILED")],
    ids=["password", "tls"],
)
def test_a_wrong_password_or_unverified_tls_is_one_warning_and_process_local_state(
    tls_redis: TlsRedis, upstream: Upstream, caplog: pytest.LogCaptureFixture, problem: str, expected: str
) -> None:
    url = tls_redis.url(password="wrong") if problem == "password" else tls_redis.url(ca=tls_redis.other_ca[1])
    with caplog.at_level(logging.WARNING, logger="outbound.fleet"), Registry.from_mapping(_mapping(upstream, url)) as r:
        for _ in range(3):
            assert r.session("api").get("ok").status_code == 200
        with contextlib.suppress(outbound.CircuitOpenError):
            for _ in range(4):
                r.session("api").get("status/503")
        assert r["api"].policy.breaker.state == "open"  # its own breaker, as a process alone
        report = r.health()
    assert report["state_backend"]["status"] == "unreachable"
    warnings = [x.getMessage() for x in caplog.records if x.levelno == logging.WARNING and x.name == "outbound.fleet"]
    assert len(warnings) == 1, warnings
    assert "state.url rediss://app:***@127.0.0.1" in warnings[0]
    assert expected in warnings[0]
    assert ":wrong@" not in warnings[0]
    assert PASSWORD not in json.dumps(report)


# -- Sentinel over TLS: rediss+sentinel:// ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_sentinels(tmp_path_factory: pytest.TempPathFactory, tls_redis: TlsRedis) -> Iterator[SentinelGroup]:
    """A primary + replica + 3 Sentinels, every one of them on TLS only (client certificates required, replication
    and the Sentinels' own links over TLS), the primary and replica with the ACL user ``app`` alone."""
    ca, server, client = tls_redis.ca[1], tls_redis.server, tls_redis.client
    tls = ("--tls-cert-file", str(server[1]), "--tls-key-file", str(server[0]), "--tls-ca-cert-file", str(ca),
           "--tls-auth-clients", "yes", "--tls-replication", "yes")  # fmt: skip
    acl = ("--user", "default", "off", "--user", "app", "on", f">{PASSWORD}", "~*", "&*", "+@all",
           "--masteruser", "app", "--masterauth", PASSWORD)  # fmt: skip
    options = {"ssl": True, "ssl_ca_certs": str(ca), "ssl_certfile": str(client[1]), "ssl_keyfile": str(client[0])}
    group = SentinelGroup(
        tmp_path_factory.mktemp("tls-sentinel"),
        tls=tls,
        client={**options, "username": "app", "password": PASSWORD},
        server=acl,
        monitor=(
            f"sentinel auth-user {SentinelGroup.SERVICE} app",
            f"sentinel auth-pass {SentinelGroup.SERVICE} {PASSWORD}",
        ),
    )
    with group:
        yield group


def _sentinel_url(group: SentinelGroup, tls: TlsRedis, *, ca: Path | None = None) -> str:
    hosts = ",".join(f"127.0.0.1:{port}" for port in group.sentinels)
    query = f"ssl_ca_certs={ca or tls.ca[1]}&ssl_certfile={tls.client[1]}&ssl_keyfile={tls.client[0]}"
    return f"rediss+sentinel://app:{PASSWORD}@{hosts}/{SentinelGroup.SERVICE}/0?{query}"


def test_a_fleet_over_rediss_sentinel_follows_a_failover(
    tls_sentinels: SentinelGroup, tls_redis: TlsRedis, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    mapping = _mapping(upstream, _sentinel_url(tls_sentinels, tls_redis))
    with caplog.at_level(logging.INFO), Registry.from_mapping(mapping) as a, Registry.from_mapping(mapping) as b:
        b.session("api").get("ok")
        a.session("api").get("ok")
        old = tls_sentinels.primary_port()
        a.isolate("api", 600)
        assert wait_until(lambda: b["api"].policy.breaker.state == "isolated", timeout=5)
        report = b.health()
        assert report["state_backend"]["status"] == "ok"
        assert report["state_backend"]["primary"] == f"127.0.0.1:{old}"
        assert report["workers"] == 2
        assert tls_sentinels.client(old).wait(1, 2000) == 1  # the replica has the isolation before the primary dies
        tls_sentinels.kill(old)
        try:
            assert wait_until(lambda: tls_sentinels.primary_port() != old, timeout=30), "no failover"
            new = tls_sentinels.primary_port()
            # The worker follows the new primary over TLS, keeps the isolation, and its health tells the story.
            assert wait_until(lambda: b.health()["state_backend"].get("primary") == f"127.0.0.1:{new}", timeout=15)
            story = b.health()["state_backend"]
            assert story["status"] == "ok"
            assert story["primary_changed"]["from"] == f"127.0.0.1:{old}"
            assert story["last_outage"]["recovered_at"] is not None
            assert b.health()["services"]["api"]["breaker"]["state"] == "isolated"
            b.reset("api")  # a decision written to the new primary, over TLS
            assert wait_until(lambda: a["api"].policy.breaker.state == "closed", timeout=5)
            assert a.session("api").get("ok").status_code == 200
        finally:
            tls_sentinels.revive(old)
    shown = json.dumps(report) + json.dumps(story) + "\n".join(r.getMessage() for r in caplog.records)
    assert PASSWORD not in shown


def test_rediss_sentinel_with_an_unverified_certificate_is_one_warning(
    tls_sentinels: SentinelGroup, tls_redis: TlsRedis, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    url = _sentinel_url(tls_sentinels, tls_redis, ca=tls_redis.other_ca[1])
    with caplog.at_level(logging.WARNING), Registry.from_mapping(_mapping(upstream, url)) as r:
        assert r.session("api").get("ok").status_code == 200
        report = r.health()
    assert report["state_backend"]["status"] == "unreachable"
    warnings = [x.getMessage() for x in caplog.records if x.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "state.url rediss+sentinel://app:***@127.0.0.1" in warnings[0]
    assert PASSWORD not in warnings[0]
