"""Fault injection (issue 28): every fault kind on requests, httpx, httpx2 and both async transports, below the policy
(retries and the breaker see it), never reaching the upstream, never on without the allow switch."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

import outbound
from outbound import ConfigError, Registry
from outbound._chaos import INJECTED_HEADER, INJECTED_TEXT, Chaos, fault
from outbound._config import ChaosConfig, FaultConfig
from tests.core.conftest import ASYNC_TRANSPORTS, client_of
from tests.upstream import Upstream

KINDS = ("requests", "httpx", "httpx2", "async-httpcore", "async-aiohttp")


def settings(upstream: Upstream, kind: str, faults: list[dict[str, Any]], **service: Any) -> dict[str, Any]:
    client = "httpx" if kind.startswith("async") else client_of(kind)
    extra = {"transport": kind.split("-")[1]} if kind.startswith("async") else {}
    return {
        "chaos": {"allow": True},
        "services": {
            "api": {
                "base_url": upstream.url,
                "client": client,
                "retry": {"total": 0},
                "timeout": {"read": 2.0, "total": 5.0},
                "chaos": {"enabled": True, "faults": faults},
                **extra,
                **service,
            }
        },
    }


def call(registry: Registry, kind: str, path: str = "ok") -> Any:
    """One GET through the kind's client: the response, or the exception it raised."""
    try:
        if kind == "requests":
            return registry.session("api").get(path)
        if kind.startswith("async"):

            async def go() -> Any:
                return await registry.async_client("api").get(path)

            return asyncio.run(go())
        return registry.client("api").get(path)
    except Exception as error:
        return error


@pytest.fixture
def build() -> Any:
    made: list[Registry] = []

    def make(mapping: dict[str, Any]) -> Registry:
        registry = Registry.from_mapping(mapping)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_status_fault_answers_like_the_upstream_and_never_reaches_it(
    upstream: Upstream, build: Any, kind: str
) -> None:
    registry = build(settings(upstream, kind, [{"kind": "status", "rate": 1.0, "status": 503, "retry_after": 2}]))
    response = call(registry, kind)
    assert response.status_code == 503
    assert response.headers[INJECTED_HEADER] == "status"
    assert response.headers["retry-after"] == "2"
    assert upstream.recent("/ok") == []
    state = registry["api"].policy.chaos.state()
    assert state.injected == {"status": 1}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("fault_kind", "error"),
    [
        ("connect_error", outbound.ConnectError),
        ("reset", outbound.ReadError),
        ("read_timeout", outbound.ReadTimeoutError),
    ],
)
def test_error_faults_raise_what_the_network_would(
    upstream: Upstream, build: Any, kind: str, fault_kind: str, error: type[Exception]
) -> None:
    registry = build(settings(upstream, kind, [{"kind": fault_kind, "rate": 1.0, "seconds": 0.05}]))
    raised = call(registry, kind)
    assert isinstance(raised, error), repr(raised)
    assert INJECTED_TEXT in str(raised), str(raised)  # marked, for whoever reads the log or the error tracker
    assert upstream.recent("/ok") == []


@pytest.mark.parametrize("kind", KINDS)
def test_latency_delays_the_real_answer(upstream: Upstream, build: Any, kind: str) -> None:
    registry = build(settings(upstream, kind, [{"kind": "latency", "rate": 1.0, "seconds": 0.2}]))
    started = time.monotonic()
    response = call(registry, kind)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.2
    assert len(upstream.recent("/ok")) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_latency_longer_than_the_read_timeout_is_a_read_timeout(upstream: Upstream, build: Any, kind: str) -> None:
    faults = [{"kind": "latency", "rate": 1.0, "seconds": 30}]
    registry = build(settings(upstream, kind, faults, timeout={"read": 0.1, "total": 5.0}))
    raised = call(registry, kind)
    assert isinstance(raised, outbound.ReadTimeoutError), repr(raised)


@pytest.mark.parametrize("kind", KINDS)
def test_trickle_delivers_the_real_body_slowly(upstream: Upstream, build: Any, kind: str) -> None:
    registry = build(settings(upstream, kind, [{"kind": "trickle", "rate": 1.0, "seconds": 0.2}]))
    started = time.monotonic()
    response = call(registry, kind)
    assert response.status_code == 200, repr(response)
    assert response.content == b"ok"
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("kind", ["requests", "httpx", "async-httpcore"])
def test_retries_and_the_breaker_see_injected_faults(upstream: Upstream, build: Any, kind: str) -> None:
    mapping = settings(
        upstream,
        kind,
        [{"kind": "connect_error", "rate": 1.0}],
        retry={"total": 2, "backoff_factor": 0},
        breaker={"fail_max": 3},
    )
    registry = build(mapping)
    raised = call(registry, kind)
    assert isinstance(raised, outbound.ConnectError)
    policy = registry["api"].policy
    assert policy.chaos.state().injected == {"connect_error": 3}  # the first attempt and two retries
    assert policy.breaker.state == "open"
    assert isinstance(call(registry, kind), outbound.CircuitOpenError)
    assert upstream.recent("/ok") == []


def test_a_rate_hits_about_that_share() -> None:
    values = iter([i / 1000 for i in range(1000)])
    chaos = Chaos(
        "s", ChaosConfig(enabled=True, faults=(FaultConfig(kind="status", rate=0.1),)), draw=lambda: next(values)
    )
    hits = sum(chaos.draw() is not None for _ in range(1000))
    assert hits == 100


def test_an_override_ends_by_itself() -> None:
    now = [0.0]
    chaos = Chaos("s", ChaosConfig(), clock=lambda: now[0])
    assert chaos.draw() is None
    chaos.override([fault("status")], 5.0, source="test")
    assert chaos.draw() is not None
    now[0] = 5.0
    assert chaos.draw() is None
    assert chaos.state().active is False


# -- never on by accident -----------------------------------------------------------------------------------------


def test_enabled_without_the_allow_switch_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTBOUND_CHAOS", raising=False)
    mapping = {"services": {"api": {"base_url": "http://x.invalid/", "chaos": {"enabled": True, "faults": []}}}}
    with pytest.raises(ConfigError) as caught:
        Registry.from_mapping(mapping)
    assert caught.value.service == "api"
    assert caught.value.key == "chaos.enabled"
    assert "OUTBOUND_CHAOS=1" in str(caught.value)


def test_the_environment_allows_it(monkeypatch: pytest.MonkeyPatch, upstream: Upstream) -> None:
    monkeypatch.setenv("OUTBOUND_CHAOS", "1")
    mapping = {
        "services": {
            "api": {"base_url": upstream.url, "chaos": {"enabled": True, "faults": [{"kind": "status", "rate": 1}]}}
        }
    }
    registry = Registry.from_mapping(mapping)
    try:
        assert registry.session("api").get("ok").status_code == 503
    finally:
        registry.close()


def test_configured_but_not_allowed_builds_no_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTBOUND_CHAOS", raising=False)
    mapping = {"services": {"api": {"base_url": "http://x.invalid/", "chaos": {"faults": [{"kind": "reset"}]}}}}
    registry = Registry.from_mapping(mapping)
    try:
        assert registry["api"].policy.chaos is None
    finally:
        registry.close()


@pytest.mark.parametrize(
    ("chaos", "key", "needle"),
    [
        ({"faults": [{"kind": "explode"}]}, "chaos.faults[0].kind", "'connect_error'"),
        ({"faults": [{"kind": "status", "rate": 1.5}]}, "chaos.faults[0].rate", "<= 1"),
        ({"faults": [{"kind": "status", "rate": -0.1}]}, "chaos.faults[0].rate", ">= 0"),
        ({"faults": [{"rate": 0.1}]}, "chaos.faults[0].kind", "required"),
        ({"faults": [{"kind": "status", "status": 700}]}, "chaos.faults[0].status", "599"),
        ({"faults": [{"kind": "reset", "rate": 0.6}, {"kind": "status", "rate": 0.6}]}, "chaos.faults", "more than 1"),
        ({"faults": "status"}, "chaos.faults", "list"),
        ({"enabled": "yes"}, "chaos.enabled", "true or false"),
        ({"allow": True}, "chaos.allow", "unknown key"),
        ({"fault": []}, "chaos.fault", "faults"),
    ],
)
def test_bad_chaos_settings_name_service_and_key(chaos: dict[str, Any], key: str, needle: str) -> None:
    mapping = {"chaos": {"allow": True}, "services": {"api": {"base_url": "http://x.invalid/", "chaos": chaos}}}
    with pytest.raises(ConfigError) as caught:
        Registry.from_mapping(mapping)
    errors = caught.value.errors
    assert any(e.service == "api" and e.key == key and needle in str(e) for e in errors), [str(e) for e in errors]


def test_a_bad_allow_switch_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Registry.from_mapping({"chaos": {"allow": "yes"}, "services": {}})
    assert caught.value.key == "chaos.allow"


def test_chaos_in_defaults_applies_to_every_service(upstream: Upstream, build: Any) -> None:
    registry = build(
        {
            "chaos": {"allow": True},
            "defaults": {"chaos": {"enabled": True, "faults": [{"kind": "status", "rate": 1.0, "status": 502}]}},
            "services": {"a": {"base_url": upstream.url}, "b": {"base_url": upstream.url, "client": "httpx"}},
        }
    )
    assert registry.session("a").get("ok").status_code == 502
    assert registry.client("b").get("ok").status_code == 502


def test_async_transports_are_the_ones_tested() -> None:
    assert tuple(kind.split("-")[1] for kind in KINDS if kind.startswith("async")) == ASYNC_TRANSPORTS


# -- the pytest fixture ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_fixture_injects_into_a_service_built_without_chaos(
    upstream: Upstream, build: Any, kind: str, outbound_chaos: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTBOUND_CHAOS", raising=False)
    mapping = settings(upstream, kind, [])
    del mapping["chaos"], mapping["services"]["api"]["chaos"]
    registry = build(mapping)
    assert call(registry, kind).status_code == 200  # a client built before the fixture gets the layer too
    layer = outbound_chaos("api", kind="read_timeout", rate=1.0, seconds=0.01, registry=registry)
    assert isinstance(call(registry, kind), outbound.ReadTimeoutError)
    assert layer.state().injected == {"read_timeout": 1}
    assert len(upstream.recent("/ok")) == 1


def test_the_context_manager_takes_the_layer_out_again(upstream: Upstream, build: Any) -> None:
    from outbound.testing import chaos

    registry = build({"services": {"api": {"base_url": upstream.url, "client": "httpx"}}})
    client = registry.client("api")
    before = client.outbound_transport.inner
    with chaos(registry, "api", "status", status=500):
        assert client.get("ok").status_code == 500
    assert client.outbound_transport.inner is before
    assert registry["api"].policy.chaos is None
    assert client.get("ok").status_code == 200


def test_the_fixture_refuses_a_bad_fault(build: Any, outbound_chaos: Any) -> None:
    registry = build({"services": {"api": {"base_url": "http://x.invalid/"}}})
    with pytest.raises(ConfigError, match="rate"):
        outbound_chaos("api", kind="status", rate=2.0, registry=registry)


def test_the_status_page_shows_a_banner(upstream: Upstream, build: Any) -> None:
    from outbound._page import render_page

    registry = build(settings(upstream, "requests", [{"kind": "status", "rate": 0.5}], breaker={"enforce": False}))
    page = render_page(registry.report().as_dict())
    assert "Fault injection is on</strong> for api (settings: status at 0.5)" in page
    assert "Observe-only</strong>: api&#x27;s breaker refuse nothing" in page or "Observe-only</strong>: api" in page
    plain = build({"services": {"api": {"base_url": upstream.url}}})
    assert "banner" not in render_page(plain.report().as_dict())


def test_outbound_status_says_so(upstream: Upstream, build: Any) -> None:
    from outbound import cli

    registry = build(settings(upstream, "requests", [{"kind": "status", "rate": 0.5}], breaker={"enforce": False}))
    text = " ".join(cli.status(registry).text.split())
    assert "api: FAULT INJECTION ON (settings: status at 0.5)" in text
    assert "api: observe-only (breaker): would have refused 0 calls so far" in text


def test_a_remote_report_keeps_the_chaos_and_observe_lines(upstream: Upstream, build: Any) -> None:
    from outbound import cli

    registry = build(settings(upstream, "requests", [{"kind": "status", "rate": 0.5}], breaker={"enforce": False}))
    parsed = cli._report(json.loads(json.dumps(registry.report().as_dict())))
    text = " ".join(cli.render_status(parsed).split())
    assert "api: FAULT INJECTION ON (settings: status at 0.5)" in text
    assert "api: observe-only (breaker)" in text


def test_a_fault_layer_installed_by_the_test_kit_is_reset_after_fork(upstream: Upstream) -> None:
    # The kit installs its layer after the policy was built: the fork reset must still reach it (a child forked while
    # another thread held the layer's lock would otherwise wait on it for ever).
    from outbound.testing import chaos as injected

    registry = Registry.from_mapping({"services": {"s": {"base_url": upstream.url}}})
    try:
        policy = registry["s"].policy
        with injected(registry, "s") as layer:
            before = layer._lock
            policy.reset_after_fork()
            assert layer._lock is not before
    finally:
        registry.close()
