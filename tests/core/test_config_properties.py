"""Property-based: no input can crash the settings parser, and settings it accepts never fail a call later.

Every key path is fuzzed, found from the config dataclasses themselves (a key added later is fuzzed too), with
arbitrary JSON-like values — huge integers, infinities, control characters, IPv6 fragments — mixed with plausible
ones so that some settings pass. Only ``ConfigError`` may come out of parsing; a call through a registry built from
settings that passed may fail, but only with an ``OutboundError`` (never ``OverflowError``, ``InvalidHeader``,
``UnicodeEncodeError``, ``InvalidURL``...).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import outbound
from outbound import ConfigError, Registry, config_errors, parse_config
from outbound._config import DERIVED_SERVICE_FIELDS, HealthConfig, ServiceConfig
from tests.upstream import Upstream

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**15, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["http://[::1/", "http://a b/", "http://h:99999/", "socks5://127.0.0.1:1", "\r\nX: y", "é"])
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=8,
)


def _key_paths(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every settings key under a config dataclass (nested ones as dotted paths), with its type hint."""
    paths: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if cls is ServiceConfig and field.name in DERIVED_SERVICE_FIELDS:
            continue
        path = f"{prefix}{field.name}"
        paths[path] = hints[field.name]
        if typing.get_origin(hints[field.name]) is tuple:
            continue  # a list of sections (chaos.faults): its entries are not dotted keys
        for arg in (hints[field.name], *typing.get_args(hints[field.name])):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                paths.update(_key_paths(arg, prefix=f"{path}."))
    return paths


# Strings whose format a type does not tell.
PLAUSIBLE_STRINGS = {
    "rate_limit.rate": st.sampled_from(["10/second", "5 per minute", "100/hour"]),
    "deadline_header": st.sampled_from(["grpc-timeout", "X-Request-Timeout"]),
    "retry.idempotency_key.header": st.sampled_from(["Idempotency-Key", "X-Request-Id"]),
}


def _plausible(hint: Any, path: str = "") -> st.SearchStrategy[Any]:
    """Values of the type a field declares, in ranges a user might write (derived, so new keys get them too)."""
    if path in PLAUSIBLE_STRINGS:
        return PLAUSIBLE_STRINGS[path]
    options: list[st.SearchStrategy[Any]] = []
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    for arg in typing.get_args(hint) if union else (hint,):
        origin = typing.get_origin(arg)
        if arg is type(None):
            options.append(st.none())
        elif arg is bool:
            options.append(st.booleans())
        elif arg is int:
            options.append(st.integers(min_value=0, max_value=20))
        elif arg is float:
            options.append(st.floats(min_value=0.001, max_value=3.0) | st.integers(min_value=1, max_value=3))
        elif arg is str:
            options.append(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12))
        elif origin is typing.Literal:
            options.append(st.sampled_from(typing.get_args(arg)))
        elif origin is frozenset and typing.get_args(arg) == (int,):
            options.append(st.lists(st.sampled_from([200, 404, 429, 500, 503]), max_size=3))
        elif origin is frozenset:
            options.append(st.lists(st.sampled_from(["GET", "post", "Put", "X-Api-Key"]), max_size=3))
        elif origin in (dict, collections.abc.Mapping):
            options.append(PLAUSIBLE_HEADERS)
        elif origin is tuple and dataclasses.is_dataclass(typing.get_args(arg)[0]):
            options.append(st.lists(_plausible(typing.get_args(arg)[0], path), max_size=2))  # chaos.faults
        elif dataclasses.is_dataclass(arg) and isinstance(arg, type):
            # The section's required keys (those without a default), each plausible in turn.
            hints = typing.get_type_hints(arg)
            required = {
                f.name: _plausible(hints[f.name], f"{path}.{f.name}")
                for f in dataclasses.fields(arg)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            }
            options.append(st.fixed_dictionaries(required))
    return st.one_of(options) if options else JSON


PLAUSIBLE_HEADERS = st.dictionaries(
    st.from_regex(r"X-[A-Za-z]{1,8}", fullmatch=True),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    max_size=2,
)
SERVICE_PATHS = _key_paths(ServiceConfig)
HEALTH_PATHS = list(_key_paths(HealthConfig))


def _get(mapping: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        mapping = mapping.get(part) if isinstance(mapping, dict) else None  # type: ignore[assignment]
    return mapping


def _section(hint: Any, path: str) -> st.SearchStrategy[Any]:
    # The dict form of a (possibly optional) section.
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    [cls] = [arg for arg in (typing.get_args(hint) if union else (hint,)) if dataclasses.is_dataclass(arg)]
    return _plausible(cls, path)


def _put(mapping: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        child = mapping.get(part)
        if not isinstance(child, dict):
            child = mapping[part] = {}
        mapping = child
    mapping[leaf] = value


@st.composite
def service_settings(draw: st.DrawFn, base_url: str, *, wild: float = 0.5) -> dict[str, Any]:
    """Settings for one service: up to six keys, each given an arbitrary value (with probability ``wild``) or a
    plausible one of the field's type."""
    settings: dict[str, Any] = {"base_url": base_url}
    paths = [path for path in SERVICE_PATHS if path != "base_url"]
    for path in draw(st.lists(st.sampled_from(paths), max_size=6, unique=True)):
        arbitrary = draw(st.floats(min_value=0, max_value=1)) < wild
        parts = path.split(".")
        for depth in range(1, len(parts)):  # a nested key comes with its section's required keys, as users write
            section = ".".join(parts[:depth])
            if not isinstance(_get(settings, section), dict):
                _put(settings, section, draw(_section(SERVICE_PATHS[section], section)))
        _put(settings, path, draw(JSON if arbitrary else _plausible(SERVICE_PATHS[path], path)))
    return settings


def test_every_key_is_fuzzed() -> None:
    # The walk finds nested keys: if it found none, the properties below would test nothing.
    assert {"timeout.read", "retry.budget.ratio", "pool.max_connections", "breaker.fail_max"} <= set(SERVICE_PATHS)


def test_plausible_settings_mostly_pass() -> None:
    # Otherwise the call property below would rarely get past the parser, and would prove little.
    passed = []

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(service=service_settings("http://127.0.0.1:1/", wild=0.0))
    def count(service: dict[str, Any]) -> None:
        passed.append(not config_errors({"services": {"s": service}}))

    count()
    assert sum(passed) >= len(passed) / 5


@settings(max_examples=400, deadline=None, database=None)
@given(raw=JSON, services=st.dictionaries(st.text(max_size=8), JSON, max_size=3))
def test_arbitrary_mappings_raise_only_config_errors(raw: Any, services: dict[str, Any]) -> None:
    for mapping in (raw, {"services": services}, {"services": {"s": raw}}, {"defaults": raw, "services": services}):
        _parse_expecting_only_config_errors(mapping)


@settings(max_examples=400, deadline=None, database=None)
@given(
    service=service_settings("https://billing.internal/api/"),
    health=st.dictionaries(st.sampled_from(HEALTH_PATHS), JSON),
)
def test_arbitrary_values_for_every_key_raise_only_config_errors(
    service: dict[str, Any], health: dict[str, Any]
) -> None:
    _parse_expecting_only_config_errors({"services": {"s": service}, "health": health})
    _parse_expecting_only_config_errors({"defaults": service, "services": {"s": {"base_url": "http://a/"}}})


def _parse_expecting_only_config_errors(mapping: Any) -> None:
    errors = config_errors(mapping)
    assert all(isinstance(error, ConfigError) for error in errors)
    if not errors:
        parse_config(mapping)
        return
    with pytest.raises(ConfigError) as raised:
        parse_config(mapping)
    assert [str(e) for e in raised.value.errors] == [str(e) for e in errors]  # every mistake, reported at once


@pytest.mark.parametrize("kind", ["requests", "httpx"])
def test_settings_that_pass_never_fail_a_call_with_a_foreign_error(upstream: Upstream, kind: str) -> None:
    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(service=service_settings(upstream.url, wild=0.05))
    def call_once(service: dict[str, Any]) -> None:
        service["client"] = kind
        service.pop("http2", None)  # needs h2 and an HTTP/2 server: covered by its own tests
        if not isinstance(service.get("proxy"), str) or "127.0.0.1" not in service["proxy"]:
            service.pop("proxy", None)  # only loopback: a generated host must not be looked up
        try:
            registry = Registry.from_mapping({"services": {"s": service}})
        except ConfigError:
            return
        with registry:
            try:
                if kind == "requests":
                    registry.session("s").get("ok")
                else:
                    registry.client("s").get("ok")
            except outbound.OutboundError:
                pass  # the call may fail (a 1 ms timeout, a proxy that refuses); it must fail as outbound's

    call_once()
