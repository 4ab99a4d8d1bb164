"""Settings: defaults, the forms users write, and every kind of mistake naming the service and the key."""

from __future__ import annotations

from typing import Any

import pytest

from outbound import ConfigError, Registry, config_errors, parse_config


def service(**settings: Any) -> dict[str, Any]:
    return {"services": {"billing": {"base_url": "https://billing.internal/api", **settings}}}


def error_for(mapping: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        Registry.from_mapping(mapping)
    return caught.value


def test_defaults_are_finite() -> None:
    config = parse_config(service()).services["billing"]
    assert config.client == "requests"
    for limit in ("connect", "read", "write", "pool", "total"):
        value = getattr(config.timeout, limit)
        assert value is not None, limit
        assert 0 < value < 60, limit
    assert config.retry.total == 2
    assert config.retry.budget is not None
    assert "POST" not in config.retry.allowed_methods
    assert config.breaker.fail_max == 5
    assert config.breaker.half_open_max_calls == 1


def test_base_url_gets_a_trailing_slash_so_relative_urls_join_below_it() -> None:
    assert parse_config(service()).services["billing"].base_url == "https://billing.internal/api/"


def test_timeout_number_bounds_every_phase_and_null_disables_explicitly() -> None:
    number = parse_config(service(timeout=4)).services["billing"].timeout
    assert (number.connect, number.read, number.write, number.pool) == (4.0, 4.0, 4.0, 4.0)
    assert number.total == 30.0
    partial = parse_config(service(timeout={"read": None, "connect": 1})).services["billing"].timeout
    assert partial.read is None
    assert partial.connect == 1.0
    assert partial.pool == 2.0
    disabled = parse_config(service(timeout=None)).services["billing"].timeout
    assert disabled.connect is None
    assert disabled.total is None


def test_defaults_are_deep_merged_under_every_service() -> None:
    config = parse_config(
        {
            "defaults": {"timeout": {"read": 3}, "retry": {"total": 5}, "headers": {"User-Agent": "shop/1"}},
            "services": {
                "a": {"base_url": "http://a/", "retry": {"backoff_factor": 0}},
                "b": {"base_url": "http://b/", "timeout": {"connect": 1}, "retry": {"total": 0}},
            },
        }
    )
    a, b = config.services["a"], config.services["b"]
    assert a.timeout.read == 3.0
    assert a.retry.total == 5
    assert a.retry.backoff_factor == 0.0
    assert b.timeout.read == 3.0
    assert b.timeout.connect == 1.0
    assert b.retry.total == 0
    assert a.headers == {"User-Agent": "shop/1"}


def test_lists_are_normalised() -> None:
    config = parse_config(service(retry={"allowed_methods": ["get", "post"], "status_forcelist": [503]}))
    retry = config.services["billing"].retry
    assert retry.allowed_methods == frozenset({"GET", "POST"})
    assert retry.status_forcelist == frozenset({503})


@pytest.mark.parametrize(
    ("mapping", "service_name", "key", "code", "fragment"),
    [
        (service(retyr={}), "billing", "retyr", "unknown_key", "did you mean 'retry'"),
        (service(retry={"totl": 1}), "billing", "retry.totl", "unknown_key", "did you mean 'total'"),
        (service(breaker={"fail_max": "5"}), "billing", "breaker.fail_max", "type", "integer"),
        (service(timeout={"read": "10"}), "billing", "timeout.read", "type", "number"),
        (service(timeout={"read": True}), "billing", "timeout.read", "type", "number"),
        (service(timeout={"connect": 0}), "billing", "timeout.connect", "range", "> 0"),
        (service(timeout=-1), "billing", "timeout", "range", "> 0"),
        (service(timeout="5"), "billing", "timeout", "type", "must be a number or a mapping (dict), or null"),
        (service(timeout=[5]), "billing", "timeout", "type", "must be a number or a mapping (dict)"),
        (service(retry=3), "billing", "retry", "type", "must be a mapping (dict) or null, got int"),
        (service(retry={"budget": 0.2}), "billing", "retry.budget", "type", "must be a mapping (dict) or null"),
        (service(pause=True), "billing", "pause", "type", "must be a mapping (dict) or null"),
        (service(bulkhead=10), "billing", "bulkhead", "type", "must be a mapping (dict) or null"),
        (service(hedge={"delay": "fast"}), "billing", "hedge.delay", "type", "a number of seconds or 'p95'"),
        (service(hedge={"delay": [1]}), "billing", "hedge.delay", "type", "a number of seconds or 'p95'"),
        (service(pool=5), "billing", "pool", "type", "must be a mapping (dict), got int"),
        (service(retry={"total": -1}), "billing", "retry.total", "range", ">= 0"),
        (service(retry={"budget": {"ratio": -0.1}}), "billing", "retry.budget.ratio", "range", ">= 0"),
        (service(breaker={"reset_timeout": 0}), "billing", "breaker.reset_timeout", "range", "> 0"),
        (service(pool={"max_connections": 0}), "billing", "pool.max_connections", "range", ">= 1"),
        (
            service(pool={"max_connections": 2, "max_keepalive": 3}),
            "billing",
            "pool.max_keepalive",
            "range",
            "<= max_connections",
        ),
        (service(retry={"status_forcelist": [700]}), "billing", "retry.status_forcelist", "range", "100-599"),
        (service(retry={"allowed_methods": "GET"}), "billing", "retry.allowed_methods", "type", "list"),
        (service(headers={"X-Id": 1}), "billing", "headers", "type", "strings"),
        (service(base_url="ftp://x/"), "billing", "base_url", "url", "http or https"),
        (service(base_url="https:///nohost"), "billing", "base_url", "url", "host"),
        (service(base_url="https://x/?key=1"), "billing", "base_url", "url", "query"),
        (service(client="aiohttp"), "billing", "client", "unsupported", "'requests' or 'httpx'"),
        (service(http2=True), "billing", "http2", "unsupported", "httpx"),
        (service(proxy="ftp://proxy"), "billing", "proxy", "url", "socks5"),
        (service(cert=["only-one"]), "billing", "cert", "type", "pair"),
        (service(critical="yes"), "billing", "critical", "type", "true or false"),
        ({"services": {"billing": {}}}, "billing", "base_url", "missing", "required"),
        ({"services": {"billing": "https://x/"}}, "billing", None, "type", "mapping"),
        ({"services": ["billing"]}, None, "services", "type", "mapping"),
        ({"service": {}}, None, "service", "unknown_key", "did you mean 'services'"),
        ({"defaults": {"timout": 1}}, None, "defaults.timout", "unknown_key", "did you mean 'timeout'"),
        ({"health": {"show_details": "sometimes"}}, None, "health.show_details", "unsupported", "when_authorized"),
        ({"health": {"token": ""}}, None, "health.token", "type", "non-empty"),
    ],
)
def test_every_mistake_names_service_and_key(
    mapping: Any, service_name: str | None, key: str | None, code: str, fragment: str
) -> None:
    error = error_for(mapping)
    assert (error.service, error.key, error.code) == (service_name, key, code)
    assert fragment in str(error)
    if service_name:
        assert f"services.{service_name}" in str(error)
    if key:
        assert key in str(error)


def test_a_mistake_in_defaults_is_reported_for_the_service_it_breaks() -> None:
    error = error_for({"defaults": {"retry": {"total": -2}}, "services": {"a": {"base_url": "http://a/"}}})
    assert (error.service, error.key) == ("a", "retry.total")


def test_config_errors_lists_one_mistake_per_section() -> None:
    errors = config_errors(
        {
            "services": {
                "a": {"base_url": "ftp://a/"},
                "b": {"base_url": "http://b/"},
                "c": {"base_url": "http://c/", "pool": {"max_connections": 0}},
            },
            "health": {"show_details": "x"},
        }
    )
    assert [(e.service, e.key) for e in errors] == [
        ("a", "base_url"),
        ("c", "pool.max_connections"),
        (None, "health.show_details"),
    ]
    assert config_errors(service()) == []


@pytest.mark.parametrize(
    ("settings", "key", "code"),
    [
        pytest.param({"timeout": {"read": 10**400}}, "timeout.read", "range", id="int-too-large-for-a-float"),
        pytest.param({"timeout": 10**100}, "timeout", "range", id="timeout-of-1e100"),
        pytest.param({"timeout": {"connect": float("inf")}}, "timeout.connect", "type", id="infinite"),
        pytest.param({"retry": {"total": 1025}}, "retry.total", "range", id="retries-past-2**1024"),
        pytest.param({"retry": {"backoff_max": 10**400}}, "retry.backoff_max", "range", id="backoff-overflow"),
        pytest.param({"pool": {"max_connections": 5_000_000}}, "pool.max_connections", "range", id="huge-pool"),
        pytest.param({"base_url": "http://[::1/"}, "base_url", "url", id="broken-ipv6"),
        pytest.param({"base_url": "http://billing:99999/"}, "base_url", "url", id="port-out-of-range"),
        pytest.param({"base_url": "http://bil ling/"}, "base_url", "url", id="space-in-host"),
        pytest.param({"base_url": "http://billing:0/"}, "base_url", "url", id="port-zero"),
        pytest.param({"proxy": "http://[::1/"}, "proxy", "url", id="broken-proxy"),
        pytest.param({"headers": {"X-Id": "a\r\nInjected: yes"}}, "headers", "type", id="crlf-in-value"),
        pytest.param({"headers": {"X-Id:": "a"}}, "headers", "type", id="colon-in-name"),
        pytest.param({"headers": {"X-Id": "café"}}, "headers", "type", id="non-ascii-value"),
        pytest.param({"headers": {"X-Id": " padded"}}, "headers", "type", id="leading-space"),
        pytest.param({"verify": "/no/such/bundle.pem"}, "verify", "file", id="missing-ca-bundle"),
        pytest.param({"cert": "/no/such/client.pem"}, "cert", "file", id="missing-cert"),
        pytest.param({"cert": ["/no/such/c.pem", "/no/such/k.pem"]}, "cert", "file", id="missing-cert-pair"),
        pytest.param({"probe": "/health check"}, "probe", "url", id="space-in-probe"),
    ],
)
def test_values_that_would_fail_later_are_refused_at_startup(settings: dict[str, Any], key: str, code: str) -> None:
    error = error_for(service(**settings))
    assert (error.service, error.key, error.code) == ("billing", key, code)
    assert "OverflowError" not in str(error)


def test_a_tls_file_that_is_not_pem_is_refused(tmp_path: Any) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    error = error_for(service(verify=str(bogus)))
    assert (error.key, error.code) == ("verify", "file")
    assert "PEM" in str(error)


def test_every_mistake_is_reported_at_once() -> None:
    mapping = {
        "defaults": {"timout": 1},
        "services": {
            "a": {"base_url": "ftp://a/", "retry": {"total": -1, "backoff_max": "x"}, "pool": {"max_connections": 0}},
            "b": {"base_url": "http://b/", "headers": {"X-Id": "a\nb"}, "critical": "yes"},
        },
        "health": {"show_details": "x"},
    }
    expected = [
        (None, "defaults.timout"),
        ("a", "base_url"),
        ("a", "pool.max_connections"),
        ("a", "retry.total"),
        ("a", "retry.backoff_max"),
        ("b", "headers"),
        ("b", "critical"),
        (None, "health.show_details"),
    ]
    assert sorted((e.service or "", e.key) for e in config_errors(mapping)) == sorted((s or "", k) for s, k in expected)
    error = error_for(mapping)
    assert len(error.errors) == len(expected)
    assert "and 7 more mistakes" in str(error)
    for _, key in expected:
        assert str(key) in str(error)


def test_credentials_in_base_url_move_to_the_client_auth() -> None:
    config = parse_config(service(base_url="https://svc%40corp:p%3Ass@billing.internal/api")).services["billing"]
    assert config.base_url == "https://billing.internal/api/"
    assert config.auth == ("svc@corp", "p:ss")
