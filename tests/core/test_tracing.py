"""Tracing: the contrib instrumentations keep producing correct spans through outbound's clients, and outbound adds
its facts to them (``"metrics": {"otel": true}``). Spans are read with the SDK's in-memory exporter.

OpenTelemetry's global tracer provider can be set only once per process: each test passes a provider of its own to
the instrumentor (``tracer_provider=``) and uninstruments afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

import outbound
from outbound import Registry
from tests.conftest import open_breaker
from tests.upstream import Upstream

_names = itertools.count()
NO_WAIT_RETRY = {"backoff_factor": 0, "backoff_jitter": 0}


class Traces:
    """A tracer provider whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer: Tracer = self.provider.get_tracer("tests")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def clients(self) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.kind is SpanKind.CLIENT]

    def named(self, name: str) -> ReadableSpan:
        [span] = [span for span in self.spans() if span.name == name]
        return span


@pytest.fixture
def traces() -> Iterator[Traces]:
    traces = Traces()
    yield traces
    traces.provider.shutdown()


@pytest.fixture
def requests_instrumented(traces: Traces) -> Iterator[None]:
    RequestsInstrumentor().instrument(tracer_provider=traces.provider)
    yield
    RequestsInstrumentor().uninstrument()


@pytest.fixture
def httpx_instrumented(traces: Traces) -> Iterator[None]:
    HTTPXClientInstrumentor().instrument(tracer_provider=traces.provider)
    yield
    HTTPXClientInstrumentor().uninstrument()


@pytest.fixture
def build() -> Iterator[Callable[..., tuple[Registry, str]]]:
    """``build(client, **settings)``: a registry with ``otel`` on and one service; its name is returned too."""
    made: list[Registry] = []

    def make(client: str, **settings: Any) -> tuple[Registry, str]:
        name = f"traced{next(_names)}"
        service = {"base_url": "", "client": client, "retry": NO_WAIT_RETRY, **settings}
        registry = Registry.from_mapping({"services": {name: service}, "metrics": {"otel": True}})
        made.append(registry)
        return registry, name

    yield make
    for registry in made:
        registry.close()


def status_code(span: ReadableSpan) -> Any:
    # The instrumentations use the stable attribute names when OTEL_SEMCONV_STABILITY_OPT_IN asks for them.
    attributes = span.attributes or {}
    return attributes.get("http.response.status_code", attributes.get("http.status_code"))


def outbound_attributes(span: ReadableSpan) -> dict[str, Any]:
    attributes = span.attributes or {}
    return {
        key: value for key, value in attributes.items() if key.startswith("outbound.") or key.endswith("resend_count")
    }


def events(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    return [(event.name, dict(event.attributes or {})) for event in span.events]


def traceparents(upstream: Upstream, path: str) -> set[str]:
    return {entry["headers"].get("traceparent", "") for entry in upstream.recent(path)}


def span_id_in(traceparent: str) -> int:
    return int(traceparent.split("-")[2], 16)


# -- opentelemetry-instrumentation-requests: one CLIENT span per call (it wraps Session.send) -------------------------


@pytest.mark.usefixtures("requests_instrumented")
def test_requests_plain_call(upstream: Upstream, traces: Traces, build: Callable[..., tuple[Registry, str]]) -> None:
    registry, name = build("requests", base_url=upstream.url)
    with traces.tracer.start_as_current_span("handler"):
        assert registry.session(name).get("ok").status_code == 200
    [client] = traces.clients()
    assert client.parent is not None
    assert client.parent.span_id == traces.named("handler").context.span_id
    assert status_code(client) == 200
    assert client.status.status_code is StatusCode.UNSET
    assert outbound_attributes(client) == {
        "outbound.service": name,
        "outbound.attempts": 1,
        "outbound.breaker.state": "closed",
    }
    assert events(client) == []
    assert events(traces.named("handler")) == []
    assert {span_id_in(header) for header in traceparents(upstream, "/ok")} == {client.context.span_id}


@pytest.mark.usefixtures("requests_instrumented")
def test_requests_retried_call_is_one_span_with_its_resends(
    upstream: Upstream, traces: Traces, build: Callable[..., tuple[Registry, str]]
) -> None:
    registry, name = build("requests", base_url=upstream.url)
    response = registry.session(name).get("fail-then-ok", params={"fails": 2, "key": name})
    assert response.status_code == 200
    [client] = traces.clients()
    assert status_code(client) == 200
    assert outbound_attributes(client) == {
        "outbound.service": name,
        "outbound.attempts": 3,
        "outbound.breaker.state": "closed",
        "http.request.resend_count": 2,
    }
    assert [
        (event, attributes["outbound.retry.reason"], attributes["outbound.retry.attempt"])
        for event, attributes in events(client)
    ] == [
        ("outbound.retry", "status_503", 1),
        ("outbound.retry", "status_503", 2),
    ]
    # Every attempt carried the context of the call's span.
    assert len(upstream.recent("/fail-then-ok")) == 3
    assert {span_id_in(header) for header in traceparents(upstream, "/fail-then-ok")} == {client.context.span_id}


@pytest.mark.usefixtures("requests_instrumented")
def test_requests_short_circuited_call_has_no_span_and_tells_the_current_one(
    upstream: Upstream, traces: Traces, build: Callable[..., tuple[Registry, str]]
) -> None:
    registry, name = build("requests", base_url=upstream.url, retry=None, breaker={"fail_max": 2})
    with traces.tracer.start_as_current_span("failing"):
        open_breaker(registry, name)
    opening = traces.clients()[-1]
    assert (
        "outbound.breaker",
        {
            "outbound.service": name,
            "outbound.breaker.previous_state": "closed",
            "outbound.breaker.state": "open",
            "outbound.breaker.reason": "2 consecutive failures",
        },
    ) in events(opening)
    assert outbound_attributes(opening)["outbound.breaker.state"] == "open"
    traces.exporter.clear()

    with traces.tracer.start_as_current_span("handler"), pytest.raises(outbound.CircuitOpenError):
        registry.session(name).get("ok")
    assert traces.clients() == []  # nothing was sent: no instrumentation made a span
    [(event, attributes)] = events(traces.named("handler"))
    assert event == "outbound.rejected"
    assert attributes["outbound.service"] == name
    assert attributes["outbound.rejected.reason"] == "circuit_open"
    assert 0 < attributes["outbound.rejected.retry_in"] <= 30


@pytest.mark.usefixtures("requests_instrumented")
def test_requests_refused_inside_the_instrumented_send_ends_its_span_in_error(
    upstream: Upstream, traces: Traces, build: Callable[..., tuple[Registry, str]]
) -> None:
    registry, name = build("requests", base_url=upstream.url, retry=None, breaker={"fail_max": 1})
    session = registry.session(name)
    open_breaker(registry, name)
    traces.exporter.clear()
    prepared = session.prepare_request(requests.Request("GET", upstream.url + "ok"))
    with pytest.raises(outbound.CircuitOpenError):
        session.send(prepared)  # past request()'s early check: the adapter refuses it inside the span
    [client] = traces.clients()
    assert client.status.status_code is StatusCode.ERROR
    assert outbound_attributes(client) == {"outbound.service": name, "outbound.breaker.state": "open"}
    assert [event for event, _ in events(client)] == ["outbound.rejected", "exception"]


# -- opentelemetry-instrumentation-httpx instrument(): a CLIENT span per attempt (it wraps HTTPTransport) --------------


@pytest.mark.usefixtures("httpx_instrumented")
def test_httpx_plain_call(upstream: Upstream, traces: Traces, build: Callable[..., tuple[Registry, str]]) -> None:
    registry, name = build("httpx", base_url=upstream.url)
    with traces.tracer.start_as_current_span("handler"):
        assert registry.client(name).get("ok").status_code == 200
    [client] = traces.clients()
    handler = traces.named("handler")
    assert client.parent is not None
    assert client.parent.span_id == handler.context.span_id
    assert status_code(client) == 200
    assert outbound_attributes(client) == {}  # it had ended before outbound learnt the attempt's outcome
    assert outbound_attributes(handler) == {}  # never on a span that may hold many calls
    assert {span_id_in(header) for header in traceparents(upstream, "/ok")} == {client.context.span_id}


@pytest.mark.usefixtures("httpx_instrumented")
def test_httpx_retried_call_is_a_span_per_attempt(
    upstream: Upstream, traces: Traces, build: Callable[..., tuple[Registry, str]]
) -> None:
    registry, name = build("httpx", base_url=upstream.url)
    with traces.tracer.start_as_current_span("handler"):
        response = registry.client(name).get("fail-then-ok", params={"fails": 2, "key": name})
    assert response.status_code == 200
    clients = traces.clients()
    handler = traces.named("handler")
    assert [status_code(span) for span in clients] == [503, 503, 200]
    assert {span.parent.span_id for span in clients if span.parent} == {handler.context.span_id}
    # Each attempt carried the context of its own span.
    assert [
        span_id_in(header) for header in [e["headers"]["traceparent"] for e in upstream.recent("/fail-then-ok")]
    ] == [span.context.span_id for span in clients]
    # The retries are facts of the call: they go to the span around it.
    assert [(event, attributes["outbound.retry.reason"]) for event, attributes in events(handler)] == [
        ("outbound.retry", "status_503"),
        ("outbound.retry", "status_503"),
    ]


@pytest.mark.usefixtures("httpx_instrumented")
def test_httpx_short_circuited_call_has_no_span(
    upstream: Upstream, traces: Traces, build: Callable[..., tuple[Registry, str]]
) -> None:
    registry, name = build("httpx", base_url=upstream.url, retry=None, breaker={"fail_max": 2})
    open_breaker(registry, name)
    traces.exporter.clear()
    with traces.tracer.start_as_current_span("handler"), pytest.raises(outbound.CircuitOpenError):
        registry.client(name).get("ok")
    assert traces.clients() == []
    assert [event for event, _ in events(traces.named("handler"))] == ["outbound.rejected"]


# -- opentelemetry-instrumentation-httpx instrument_client(): one CLIENT span per call (it wraps outbound's transport) -


def test_httpx_instrument_client_plain_retried_and_short_circuited(
    upstream: Upstream, traces: Traces, build: Callable[..., tuple[Registry, str]]
) -> None:
    registry, name = build("httpx", base_url=upstream.url, breaker={"fail_max": 2})
    client = registry.client(name)
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=traces.provider)
    try:
        assert client.get("ok").status_code == 200
        assert client.get("fail-then-ok", params={"fails": 1, "key": name}).status_code == 200
        plain, retried = traces.clients()
        assert (status_code(plain), status_code(retried)) == (200, 200)
        assert outbound_attributes(plain) == {
            "outbound.service": name,
            "outbound.attempts": 1,
            "outbound.breaker.state": "closed",
        }
        assert outbound_attributes(retried) == {
            "outbound.service": name,
            "outbound.attempts": 2,
            "outbound.breaker.state": "closed",
            "http.request.resend_count": 1,
        }
        assert [event for event, _ in events(retried)] == ["outbound.retry"]

        open_breaker(registry, name)
        traces.exporter.clear()
        with traces.tracer.start_as_current_span("handler"), pytest.raises(outbound.CircuitOpenError):
            client.get("ok")
        assert traces.clients() == []
        assert [event for event, _ in events(traces.named("handler"))] == ["outbound.rejected"]
    finally:
        HTTPXClientInstrumentor.uninstrument_client(client)


def test_httpx_async_client_instrumented(
    upstream: Upstream, traces: Traces, build: Callable[..., tuple[Registry, str]]
) -> None:
    registry, name = build("httpx", base_url=upstream.url)

    async def call() -> int:
        client = registry.async_client(name)
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=traces.provider)
        try:
            with traces.tracer.start_as_current_span("handler"):
                response = await client.get("fail-then-ok", params={"fails": 1, "key": name})
            return response.status_code
        finally:
            HTTPXClientInstrumentor.uninstrument_client(client)

    assert asyncio.run(call()) == 200
    [client_span] = traces.clients()
    assert client_span.parent is not None
    assert client_span.parent.span_id == traces.named("handler").context.span_id
    assert outbound_attributes(client_span)["http.request.resend_count"] == 1
    assert [event for event, _ in events(client_span)] == ["outbound.retry"]


def test_no_tracing_set_up_changes_nothing(upstream: Upstream, build: Callable[..., tuple[Registry, str]]) -> None:
    registry, name = build("requests", base_url=upstream.url)
    assert registry.session(name).get("fail-then-ok", params={"fails": 1, "key": name}).status_code == 200


# -- no query string in the instrumentations' spans ---------------------------------------------------------------

SECRET_QUERY = {"token": "TOKEN-in-span", "q": "private-in-span"}


def url_attributes(span: ReadableSpan) -> list[str]:
    attributes = span.attributes or {}
    return [str(attributes[key]) for key in ("http.url", "url.full") if key in attributes]


def assert_redacted(spans: list[ReadableSpan], path: str) -> None:
    assert spans
    for span in spans:
        urls = url_attributes(span)
        assert urls, span.attributes  # the instrumentation named the URL...
        for url in urls:
            assert url.endswith(path), url  # ...without its query string
            assert "in-span" not in url


@pytest.mark.usefixtures("requests_instrumented")
def test_requests_spans_carry_no_query_string(
    upstream: Upstream, traces: Traces, build: Callable[..., tuple[Registry, str]]
) -> None:
    registry, name = build("requests", base_url=upstream.url)
    assert registry.session(name).get("fail-then-ok", params={**SECRET_QUERY, "key": name}).status_code == 200
    assert_redacted(traces.clients(), "/fail-then-ok")


@pytest.mark.usefixtures("httpx_instrumented")
def test_httpx_attempt_spans_carry_no_query_string(
    upstream: Upstream, traces: Traces, build: Callable[..., tuple[Registry, str]]
) -> None:
    registry, name = build("httpx", base_url=upstream.url)
    assert registry.client(name).get("fail-then-ok", params={**SECRET_QUERY, "key": name}).status_code == 200
    assert len(traces.clients()) == 2  # one span per attempt, each redacted
    assert_redacted(traces.clients(), "/fail-then-ok")


def test_httpx_instrumented_client_spans_carry_no_query_string(
    upstream: Upstream, traces: Traces, build: Callable[..., tuple[Registry, str]]
) -> None:
    registry, name = build("httpx", base_url=upstream.url)
    client = registry.client(name)
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=traces.provider)
    try:
        assert client.get("ok", params=SECRET_QUERY).status_code == 200
    finally:
        HTTPXClientInstrumentor.uninstrument_client(client)
    assert_redacted(traces.clients(), "/ok")


@pytest.mark.usefixtures("requests_instrumented")
def test_spans_keep_their_query_string_without_outbounds_tracing(upstream: Upstream, traces: Traces) -> None:
    # The redaction is outbound's tracing facts' (metrics.otel): without them a span is the instrumentation's own.
    with Registry.from_mapping({"services": {"plain": {"base_url": upstream.url}}}) as registry:
        registry.session("plain").get("ok", params=SECRET_QUERY)
    [client] = traces.clients()
    assert any("in-span" in url for url in url_attributes(client))
