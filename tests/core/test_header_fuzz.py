"""Hostile header values from a real upstream, through every client outbound manages.

outbound reads a few response headers itself: ``Retry-After`` (on 413, 429 and 503, for the retry wait and the
pause) and, on redirects, ``Set-Cookie`` (cookies that follow the rest of one call). A value is the upstream's claim,
so each is parsed as ASCII only and a malformed one is ignored, as if absent: whatever bytes arrive, the caller gets
the upstream's answer (or an outbound error), never a bare ``ValueError`` from inside the policy, and the call is
counted. The upstream here sends the values byte for byte (``tests/upstream.py``'s ``/raw``), through requests,
httpx (sync and async) and the aiohttp transport. The inbound deadline headers are fuzzed in
``test_deadline_scope.py``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import outbound
from outbound import Registry
from outbound._retry import parse_retry_after
from outbound.testing import no_waits
from tests.upstream import Upstream

# Values that once crashed or fooled a parser built on str.isdigit() / float(): other scripts' digits, signs,
# fractions, exponents, hex; and dates, well formed or not.
TRICKY = [
    "²",
    "¹",
    "①",
    "٣",
    "३",
    "\uff11",  # a full-width 1
    "+5",
    "-1",
    "1e3",
    "1.5",
    " 7 ",
    "inf",
    "nan",
    "0x10",
    "9" * 40,
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "Mon, 99 Foo 99999 99:99:99 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
]
# A header value as bytes on the wire: any text, as UTF-8 or (where it fits) Latin-1, without line breaks.
VALUES = st.one_of(st.sampled_from(TRICKY), st.text(max_size=24)).filter(lambda v: "\r" not in v and "\n" not in v)
ENCODINGS = st.sampled_from(["utf-8", "latin-1"])
CLIENTS = ("requests", "httpx", "httpx-async", "aiohttp", "httpx2", "httpx2-async", "httpx2-aiohttp")
CRLF = b"\r\n"


def _wire(value: str, encoding: str) -> bytes:
    try:
        return value.encode(encoding)
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _has_control(value: str) -> bool:
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in value)


def _raw_path(status: int, header_lines: list[bytes]) -> str:
    return f"raw?status={status}&headers={CRLF.join(header_lines).hex()}"


@given(st.text(max_size=64))
@example("²")
@example("①")
@example("٣")
@example("9" * 400)
def test_parse_retry_after_never_raises_and_reads_ascii_only(value: str) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)
    stripped = value.strip(" \t")
    if seconds is not None and stripped.isdigit():
        assert stripped.isascii()  # "²", "①", "٣" are malformed, never a number of seconds


@pytest.mark.parametrize("value", ["²", "①", "٣", "1.5", "-1", "+5"])
def test_a_non_ascii_or_signed_retry_after_is_malformed(value: str) -> None:
    assert parse_retry_after(value) is None


def test_ascii_delta_seconds_and_dates_still_parse() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 3 ") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait


@pytest.fixture(scope="module")
def registries(upstream_server: Upstream) -> Iterator[dict[str, Registry]]:
    base = {
        "base_url": upstream_server.url,
        "retry": {"total": 1, "backoff_factor": 0, "backoff_jitter": 0},
        "timeout": {"connect": 2, "read": 2, "total": 5},
    }
    made = {
        "requests": Registry.from_mapping({"services": {"svc": {**base, "client": "requests"}}}),
        "httpx": Registry.from_mapping({"services": {"svc": {**base, "client": "httpx"}}}),
        "httpx-async": Registry.from_mapping({"services": {"svc": {**base, "client": "httpx"}}}),
        "aiohttp": Registry.from_mapping({"services": {"svc": {**base, "client": "httpx", "transport": "aiohttp"}}}),
        "httpx2": Registry.from_mapping({"services": {"svc": {**base, "client": "httpx2"}}}),
        "httpx2-async": Registry.from_mapping({"services": {"svc": {**base, "client": "httpx2"}}}),
        "httpx2-aiohttp": Registry.from_mapping(
            {"services": {"svc": {**base, "client": "httpx2", "transport": "aiohttp"}}}
        ),
    }
    yield made
    for registry in made.values():
        registry.close()


def _get(registry: Registry, client: str) -> Callable[[str], tuple[int, str]]:
    """A function making one GET through ``client`` (following redirects): the status and the body."""
    if client == "requests":

        def get(path: str) -> tuple[int, str]:
            response = registry.session("svc").get(path)
            return response.status_code, response.text

        return get
    if client in ("httpx", "httpx2"):

        def get_httpx(path: str) -> tuple[int, str]:
            response = registry.client("svc").get(path, follow_redirects=True)
            return response.status_code, response.text

        return get_httpx

    async def fetch(path: str) -> tuple[int, str]:
        response = await registry.async_client("svc").get(path, follow_redirects=True)
        return response.status_code, response.text

    return lambda path: asyncio.run(fetch(path))


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("client", CLIENTS)
@FUZZ
@given(status=st.sampled_from([413, 429, 503]), value=VALUES, encoding=ENCODINGS)
@example(status=503, value="²", encoding="latin-1")
@example(status=429, value="①", encoding="utf-8")
@example(status=503, value="٣", encoding="utf-8")
def test_any_retry_after_gives_the_upstreams_answer_and_is_counted(
    registries: dict[str, Registry], client: str, status: int, value: str, encoding: str
) -> None:
    registry = registries[client]
    registry.reset()
    stats = registry["svc"].policy.stats
    with no_waits():
        try:
            got, body = _get(registry, client)(_raw_path(status, [b"Retry-After: " + _wire(value, encoding)]))
        except outbound.ReadError:
            # h11 (under httpx) refuses control characters in a header line: the response is not HTTP. That is
            # still outbound's error, and the call is counted as one.
            assert client != "requests"
            assert _has_control(value)
            assert (stats.requests, stats.errors) == (1, 1)
            return
    assert (got, body) == (status, "raw")
    assert stats.requests == 1
    assert stats.errors == (1 if status == 503 else 0)  # 503 is a failure status by default; 413 and 429 are not


@pytest.mark.parametrize("client", CLIENTS)
@FUZZ
@given(cookie=VALUES, encoding=ENCODINGS)
@example(cookie="a=b; Max-Age=²", encoding="latin-1")
@example(cookie="a=b; Expires=Wed, 99 Foo 99999 99:99:99 GMT", encoding="latin-1")
@example(cookie="=; Domain=①", encoding="utf-8")
def test_any_set_cookie_on_a_redirect_is_followed_or_ignored(
    registries: dict[str, Registry], client: str, cookie: str, encoding: str
) -> None:
    registry = registries[client]
    registry.reset()
    lines = [b"Location: /ok", b"Set-Cookie: " + _wire(cookie, encoding)]
    try:
        got, body = _get(registry, client)(_raw_path(302, lines))
    except outbound.ReadError:  # h11 refuses control characters in a header line, as above
        assert client != "requests"
        assert _has_control(cookie)
        return
    assert (got, body) == (200, "ok")


def test_the_raw_route_sends_the_bytes_it_was_given(upstream: Upstream, make_registry: Any) -> None:
    # The harness itself: if /raw dropped or rewrote the header, the fuzz tests above would prove nothing.
    registry = make_registry(svc={"base_url": upstream.url})
    response = registry.session("svc").get(_raw_path(503, [b"Retry-After: \xb2", b"X-Probe: \xe2\x91\xa0"]))
    assert response.headers["Retry-After"] == "\xb2"  # requests decodes header bytes as Latin-1
    assert response.headers["X-Probe"].encode("latin-1") == b"\xe2\x91\xa0"
