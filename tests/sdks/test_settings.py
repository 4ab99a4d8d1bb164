"""The ``sdk`` section and ``follow_redirects``: parsed, defaulted, and every mistake a ConfigError naming the
service and the key."""

from __future__ import annotations

from typing import Any

import pytest

import outbound

URL = "http://127.0.0.1:9/"


def parse(**service: Any) -> outbound.ServiceConfig:
    return outbound.parse_config({"services": {"ai": {"base_url": URL, **service}}}).services["ai"]


def test_absent_null_and_all_off_are_no_sdk_layer() -> None:
    assert parse().sdk is None
    assert parse(sdk=None).sdk is None
    assert parse(sdk={"answer_refusals": False, "final_responses": False}).sdk is None


def test_an_empty_section_turns_both_switches_on() -> None:
    assert parse(sdk={}).sdk == outbound.SdkConfig(answer_refusals=True, final_responses=True, timeout_max=None)
    assert parse(sdk={"timeout_max": 30}).sdk == outbound.SdkConfig(timeout_max=30.0)


@pytest.mark.parametrize(
    ("sdk", "key", "code"),
    [
        ("yes", "sdk", "type"),
        ({"answer_refusals": "yes"}, "sdk.answer_refusals", "type"),
        ({"final_responses": 1}, "sdk.final_responses", "type"),
        ({"timeout_max": 0}, "sdk.timeout_max", "range"),
        ({"timeout_max": -1}, "sdk.timeout_max", "range"),
        ({"timeout_max": "30"}, "sdk.timeout_max", "type"),
        ({"retries": False}, "sdk.retries", "unknown_key"),
    ],
)
def test_mistakes_name_the_service_and_key(sdk: Any, key: str, code: str) -> None:
    with pytest.raises(outbound.ConfigError) as caught:
        parse(sdk=sdk)
    assert (caught.value.service, caught.value.key, caught.value.code) == ("ai", key, code)


def test_follow_redirects_defaults_to_each_librarys_own() -> None:
    assert parse(client="httpx").follow_redirects is False
    assert parse(client="httpx", follow_redirects=True).follow_redirects is True
    assert parse(client="requests").follow_redirects is True
    assert parse(client="requests", follow_redirects=True).follow_redirects is True


def test_a_requests_service_cannot_turn_redirects_off() -> None:
    with pytest.raises(outbound.ConfigError) as caught:
        parse(client="requests", follow_redirects=False)
    assert (caught.value.service, caught.value.key, caught.value.code) == ("ai", "follow_redirects", "unsupported")
    assert "allow_redirects=False" in str(caught.value)


def test_follow_redirects_must_be_a_bool() -> None:
    with pytest.raises(outbound.ConfigError) as caught:
        parse(client="httpx", follow_redirects="yes")
    assert caught.value.key == "follow_redirects"


def test_expected_paths_and_statuses() -> None:
    sdk = parse(sdk={"expected": {"/v1/sys/health": [429, 503]}}).sdk
    assert sdk is not None
    assert sdk.expected == {"v1/sys/health": frozenset({429, 503})}
    # expected alone keeps the section even with both switches off
    alone = parse(sdk={"answer_refusals": False, "final_responses": False, "expected": {"v1/x": [503]}}).sdk
    assert alone is not None
    assert alone.expected == {"v1/x": frozenset({503})}


@pytest.mark.parametrize(
    ("expected", "key", "code"),
    [
        ([503], "sdk.expected", "type"),
        ({"v1/health": [99]}, "sdk.expected.v1/health", "range"),
        ({"v1/health": "503"}, "sdk.expected.v1/health", "type"),
        ({"/": [503]}, "sdk.expected./", "url"),
        ({"v1 /health": [503]}, "sdk.expected.v1 /health", "url"),
    ],
)
def test_expected_mistakes_name_the_key(expected: Any, key: str, code: str) -> None:
    with pytest.raises(outbound.ConfigError) as caught:
        parse(sdk={"expected": expected})
    assert (caught.value.service, caught.value.key, caught.value.code) == ("ai", key, code)
