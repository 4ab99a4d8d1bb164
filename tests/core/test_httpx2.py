"""httpx2 as a third client: what is particular to it. Its behaviour is httpx's, tested by every httpx test (the
kinds ``httpx2`` and ``async2``, the ``library`` fixture); here: the missing extra, the lazy import, one
implementation for both libraries, and what a caller catches."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import httpx
import httpx2
import pytest

import outbound
from outbound._backends import httpx as httpx_backend
from tests.conftest import RegistryFactory
from tests.upstream import Upstream


def test_an_httpx2_service_without_the_extra_is_a_settings_error_with_the_pip_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "httpx2", None)  # as when it is not installed: find_spec finds nothing
    with pytest.raises(outbound.ConfigError) as caught:
        outbound.parse_config({"services": {"search": {"base_url": "http://search/", "client": "httpx2"}}})
    error = caught.value
    assert (error.service, error.key) == ("search", "client")
    assert "pip install 'outbound-http[httpx2]'" in str(error)


def test_the_aiohttp_transport_of_an_httpx2_service_needs_httpx_aiohttps_httpx2_variant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "httpx_aiohttp.httpx2", None)
    settings = {"base_url": "http://search/", "transport": "aiohttp"}
    outbound.parse_config({"services": {"search": {**settings, "client": "httpx"}}})  # httpx's is still there
    with pytest.raises(outbound.ConfigError, match=r"pip install 'outbound-http\[aiohttp\]'") as caught:
        outbound.parse_config({"services": {"search": {**settings, "client": "httpx2"}}})
    assert caught.value.key == "transport"


def test_only_an_httpx2_service_imports_httpx2_and_only_when_it_makes_a_client(upstream: Upstream) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        import outbound

        registry = outbound.Registry.from_mapping(
            {{"services": {{"a": {{"base_url": "{upstream.url}", "client": "httpx"}},
                           "b": {{"base_url": "{upstream.url}", "client": "httpx2"}}}}}}
        )
        registry.client("a").get("ok")
        print("httpx2" in sys.modules, "httpcore2" in sys.modules)
        registry.client("b").get("ok")
        print("httpx2" in sys.modules, "httpcore2" in sys.modules)
        registry.close()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split("\n")[:2] == ["False False", "True True"]


def test_one_implementation_serves_both_libraries_with_each_ones_own_classes(
    make_registry: RegistryFactory, upstream: Upstream
) -> None:
    registry = make_registry(
        a={"base_url": upstream.url, "client": "httpx"}, b={"base_url": upstream.url, "client": "httpx2"}
    )
    plain, fork = registry.client("a"), registry.client("b")
    assert isinstance(plain, httpx.Client)
    assert not isinstance(plain, httpx2.Client)
    assert isinstance(fork, httpx2.Client)
    assert not isinstance(fork, httpx.Client)
    # The same source file, loaded a second time for httpx2: no copy to keep in step.
    fork_backend = sys.modules[type(fork).__module__]
    assert fork_backend is not httpx_backend
    assert fork_backend.__file__ == httpx_backend.__file__
    assert fork_backend.httpx is httpx2
    # Its network streams are httpcore2's, so the deadline's cut reads raise what httpx2 maps.
    pool = fork.outbound_transport.inner._pool
    assert type(pool._network_backend).__module__ == "outbound._backends._httpcore2"
    assert fork.get("ok").status_code == 200


def test_an_httpx2_callers_except_clauses_catch_what_it_raises(make_registry: RegistryFactory) -> None:
    registry = make_registry(b={"base_url": "http://127.0.0.1:1/", "client": "httpx2", "retry": {"total": 0}})
    with pytest.raises(httpx2.ConnectError) as caught:
        registry.client("b").get("x")
    assert isinstance(caught.value, outbound.ConnectError)
    assert not isinstance(caught.value, httpx.HTTPError)  # httpx's classes are another library's

    async def call() -> None:
        await registry.async_client("b").get("x")

    with pytest.raises(httpx2.TransportError):
        asyncio.run(call())
