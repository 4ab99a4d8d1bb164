"""hvac (2.x) given a managed session (``hvac.Client(url, session=registry.session("vault"))``), against a local stub
of Vault's API: the basics, a refusal raised at once, and ``session.mount()`` refused rather than silently replacing
the policy."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

import outbound
from tests.conftest import RegistryFactory
from tests.sdks.conftest import service
from tests.sdks.stub import Stub, serve

hvac = pytest.importorskip("hvac")

HEALTH = {"initialized": True, "sealed": False, "standby": False, "version": "1.15.0"}
SECRET = {"data": {"data": {"password": "s3cret"}, "metadata": {"version": 1}}}


@pytest.fixture
def stub() -> Iterator[Stub]:
    routes = {("GET", "/v1/sys/health"): HEALTH, ("GET", "/v1/secret/data/app"): SECRET}
    with serve(routes) as running:
        yield running


def _vault(registry: outbound.Registry, stub: Stub) -> Any:
    return hvac.Client(url=stub.url, token="t", session=registry.session("vault"))


def test_a_secret_goes_through_the_managed_session(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(vault=service(stub.url, "requests", sdk=None))
    client = _vault(registry, stub)
    secret = client.secrets.kv.v2.read_secret_version(path="app", raise_on_deleted_version=True)
    assert secret["data"]["data"]["password"] == "s3cret"
    assert client.sys.read_health_status(method="GET")["sealed"] is False
    assert registry["vault"].policy.stats.snapshot().requests == 2


def test_a_refusal_is_raised_at_once_as_outbounds_error(make_registry: RegistryFactory, stub: Stub) -> None:
    """hvac has no retries of its own: the refusal reaches the caller as it is (no sdk section needed)."""
    registry = make_registry(vault=service(stub.url, "requests", sdk=None))
    registry.isolate("vault")
    with pytest.raises(outbound.CircuitOpenError) as caught:
        _vault(registry, stub).secrets.kv.v2.read_secret_version(path="app", raise_on_deleted_version=True)
    assert isinstance(caught.value, requests.ConnectionError)
    assert stub.count("/v1/secret/data/app") == 0


def test_mounting_an_adapter_on_the_shared_session_is_refused(make_registry: RegistryFactory, stub: Stub) -> None:
    """hvac's documented retry recipe would replace outbound's adapter for the whole process: refused, loudly."""
    registry = make_registry(vault=service(stub.url, "requests", sdk=None))
    session = registry.session("vault")
    adapter = requests.adapters.HTTPAdapter(max_retries=3)
    with pytest.raises(outbound.OutboundError, match="would remove its breaker, retries and timeouts"):
        session.mount("http://", adapter)
    assert session.get_adapter(f"{stub.url}/v1/sys/health") is session.adapter  # the policy is still there
    _vault(registry, stub).sys.read_health_status(method="GET")
    assert registry["vault"].policy.stats.snapshot().requests == 1


@pytest.mark.parametrize("prefix", ["https://", "http://127.0.0.1", "HTTP://", "http", b"https://"])
def test_every_prefix_that_captures_http_urls_is_refused(make_registry: RegistryFactory, prefix: str | bytes) -> None:
    session = make_registry(vault=service("http://127.0.0.1:9/", "requests", sdk=None)).session("vault")
    with pytest.raises(outbound.OutboundError):
        session.mount(prefix, requests.adapters.HTTPAdapter())


def test_another_scheme_mounts_as_on_any_session(make_registry: RegistryFactory, stub: Stub) -> None:
    """A test's mock:// adapter (requests-mock's) takes nothing from outbound's: it mounts."""
    session = make_registry(vault=service(stub.url, "requests", sdk=None)).session("vault")
    adapter = requests.adapters.HTTPAdapter()
    session.mount("mock://", adapter)
    assert session.get_adapter("mock://anything") is adapter
    assert session.get_adapter(stub.url) is session.adapter


def test_a_plain_session_still_mounts(stub: Stub) -> None:
    """The refusal is the managed session's only: requests' own sessions are untouched."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(max_retries=3)
    session.mount("http://", adapter)
    assert session.get_adapter(stub.url) is adapter


SEALED = {"v1/sys/health": [429, 472, 473, 501, 503]}  # the docs' recipe: Vault's health answers, by status


@pytest.mark.parametrize("status", [429, 503])
def test_vaults_health_answers_are_expected_not_failures(
    make_registry: RegistryFactory, stub: Stub, status: int
) -> None:
    """Standby (429) and sealed (503) are answers on /sys/health: not retried, not counted, the breaker stays closed
    and the unseal that follows is admitted."""
    settings = service(
        stub.url,
        "requests",
        breaker={"fail_max": 3},
        sdk={"answer_refusals": False, "final_responses": False, "expected": SEALED},
    )
    registry = make_registry(vault=settings)
    stub.status["/v1/sys/health"] = status
    client = _vault(registry, stub)
    for _ in range(5):
        client.sys.read_health_status(method="GET")
    assert stub.count("/v1/sys/health") == 5
    assert registry["vault"].policy.breaker.state == "closed"
    assert registry["vault"].policy.stats.snapshot().errors == 0
    stub.status["/v1/secret/data/app"] = 503  # the same status elsewhere is still a failure, retried
    with pytest.raises(hvac.exceptions.VaultDown):
        client.secrets.kv.v2.read_secret_version(path="app", raise_on_deleted_version=True)
    assert stub.count("/v1/secret/data/app") == 3


def test_with_the_recipe_a_refused_port_stays_outbounds_error(make_registry: RegistryFactory) -> None:
    """hvac has no retries: the recipe turns the answers off, so a connect error is raised as it is, not as the 502
    hvac would make a ``BadGateway`` of."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    try:
        sdk = {"answer_refusals": False, "final_responses": False, "expected": SEALED}
        registry = make_registry(vault=service(url, "requests", sdk=sdk))
        with pytest.raises(outbound.ConnectError) as caught:
            hvac.Client(url=url, token="t", session=registry.session("vault")).sys.read_health_status(method="GET")
        assert isinstance(caught.value, requests.ConnectionError)
    finally:
        closed.close()


def test_without_the_recipe_a_sealed_vault_opens_the_breaker(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(vault=service(stub.url, "requests", breaker={"fail_max": 3}, sdk=None))
    stub.status["/v1/sys/health"] = 503
    client = _vault(registry, stub)
    client.sys.read_health_status(method="GET")
    assert stub.count("/v1/sys/health") == 3  # retried
    assert registry["vault"].policy.breaker.state == "open"
