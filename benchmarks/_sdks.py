"""Row 24 (issue 25, vendor SDKs on managed clients): a refusal that stays fast, and one retry layer per call.

The SDKs (openai on httpx2, anthropic on httpx2, stripe on requests) are given the managed client of a service with
the docs' recipe, ``"sdk": {}``, and their own default retries (2 each).

24a: a call refused by an isolated breaker, through each SDK: milliseconds from the call to the SDK's exception, the
     slowest SDK's median per round (target <= 10 ms). The detail gives the same call without the ``sdk`` section,
     once per SDK: the SDK retries the refusal as a connection error, with its backoff.
24b: one SDK call against an upstream that answers 503 to everything (GET: outbound retries it): the requests that
     reached the upstream per call, over ``retry.total + 1``, the worst SDK per round (target <= 1.0). The detail
     gives the same without the section, where both layers retry: ``(retry.total + 1) x 3`` requests, ratio 3.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import outbound
from benchmarks._harness import Row, Target, UpstreamProcess

if TYPE_CHECKING:
    from benchmarks._scenarios import Settings

MEASUREMENT = 24
ROW_KEYS = ("24a", "24b")
RETRY = {"total": 2, "backoff_factor": 0.01, "backoff_jitter": 0, "budget": None}
SDKS = ("openai", "anthropic", "stripe")
CLIENTS = {"openai": "httpx2", "anthropic": "httpx2", "stripe": "requests"}


def sdks(up: UpstreamProcess, s: Settings) -> list[Row]:
    calls = 200 if s.rounds > 2 else 10
    refused: list[float] = []
    per_sdk: dict[str, list[float]] = {name: [] for name in SDKS}
    for _ in range(s.rounds):
        medians = {name: statistics.median(_refusal_ms(up, name, calls, sdk={})) for name in SDKS}
        for name, value in medians.items():
            per_sdk[name].append(value)
        refused.append(max(medians.values()))
    quick = s.rounds <= 2
    # The variants without the section are the checks failing (about 1.3 s, and ratio 3): measured in a full run only,
    # where their seconds of SDK backoff do not matter (tests/sdks/ shows the same on every run).
    without = {} if quick else {name: _refusal_ms(up, name, 1, sdk=None)[0] for name in SDKS}
    hits: list[float] = []
    hits_without: dict[str, float] = {}
    up.set_mode("failing", status=503)
    try:
        for _ in range(max(2, s.rounds // 2)):
            hits.append(max(_hits_ratio(up, name, sdk={}) for name in SDKS))
        hits_without = {} if quick else {name: _hits_ratio(up, name, sdk=None) for name in SDKS}
    finally:
        up.reset()
    return [
        Row(
            "24a",
            'a call refused by an open breaker, through openai, anthropic and stripe with "sdk": {}: time to the '
            "SDK's exception, the slowest SDK",
            "ms",
            refused,
            Target("<=", 10.0, "<= 10 ms"),
            f"{calls} calls per SDK per round; medians "
            + ", ".join(f"{name} {statistics.median(values):.2f} ms" for name, values in per_sdk.items())
            + "; without the sdk section (the SDK retries the refusal): "
            + (", ".join(f"{name} {value:,.0f} ms" for name, value in without.items()) or "not measured (quick)"),
            digits=2,
        ),
        Row(
            "24b",
            'one SDK call against an upstream answering 503, "sdk": {} and the SDK\'s default retries: requests that '
            "reached it / (retry.total + 1), the worst SDK",
            "x",
            hits,
            Target("<=", 1.0, "<= 1.0"),
            f"retry.total {RETRY['total']}, the SDKs' max_retries 2; without the sdk section: "
            + (", ".join(f"{name} {value:.1f}" for name, value in hits_without.items()) or "not measured (quick)"),
            digits=2,
        ),
    ]


def _settings(up: UpstreamProcess, name: str, sdk: dict[str, Any] | None) -> dict[str, Any]:
    service: dict[str, Any] = {
        "base_url": f"{up.url}/{name}/",
        "client": CLIENTS[name],
        "retry": RETRY,
        "breaker": {"fail_max": 100},
    }
    if sdk is not None:
        service["sdk"] = sdk
    return {"services": {name: service}}


def _caller(registry: outbound.Registry, up: UpstreamProcess, name: str) -> tuple[Callable[[], object], type]:
    """One SDK call through ``registry``'s service ``name``, and the SDK's base exception."""
    if name == "openai":
        import openai

        client: Any = openai.OpenAI(
            api_key="sk-bench", base_url=f"{up.url}/openai/v1", http_client=registry.client(name)
        )
        return client.models.list, openai.OpenAIError
    if name == "anthropic":
        import anthropic

        client = anthropic.Anthropic(
            api_key="sk-bench", base_url=f"{up.url}/anthropic", http_client=registry.client(name)
        )
        return client.models.list, anthropic.AnthropicError
    import stripe

    http_client = stripe.RequestsClient(session=registry.session(name))
    client = stripe.StripeClient(
        "sk_bench", http_client=http_client, base_addresses={"api": f"{up.url}/stripe"}, max_network_retries=2
    )
    return lambda: client.v1.customers.retrieve("cus_1"), stripe.StripeError


def _refusal_ms(up: UpstreamProcess, name: str, calls: int, *, sdk: dict[str, Any] | None) -> list[float]:
    registry = outbound.Registry.from_mapping(_settings(up, name, sdk))
    try:
        registry.isolate(name)
        call, error = _caller(registry, up, name)
        timings = []
        for _ in range(calls):
            started = time.perf_counter()
            try:
                call()
            except error:
                timings.append((time.perf_counter() - started) * 1000)
            else:
                raise RuntimeError(f"{name}: a call through an isolated breaker succeeded")
        return timings
    finally:
        registry.close()


def _hits_ratio(up: UpstreamProcess, name: str, *, sdk: dict[str, Any] | None) -> float:
    registry = outbound.Registry.from_mapping(_settings(up, name, sdk))
    try:
        call, error = _caller(registry, up, name)
        before = _hits(up)
        try:
            call()
        except error:
            pass
        else:
            raise RuntimeError(f"{name}: a call against a failing upstream succeeded")
        return (_hits(up) - before) / (RETRY["total"] + 1)  # type: ignore[operator]
    finally:
        registry.close()


def _hits(up: UpstreamProcess) -> int:
    # Every request the upstream received: the calls are sequential and nothing else calls it meanwhile.
    return int(up.control("GET", "stats")["hits"])
