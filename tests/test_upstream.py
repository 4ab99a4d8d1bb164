"""The test upstream's faults, checked with raw sockets and http.client so they do not depend on the library."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import socket
import time
import zlib
from collections.abc import Iterator
from typing import NamedTuple
from urllib.parse import urlencode

import pytest

from tests.upstream import Upstream, wait_until

pytestmark = pytest.mark.real_server  # every test here talks to a server on 127.0.0.1


@pytest.fixture
def private_upstream() -> Iterator[Upstream]:
    """An upstream of this test's own, for stopping it and for counting its connections."""
    with Upstream() as server:
        yield server


def connect(upstream: Upstream, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((upstream.host, upstream.port), timeout=timeout)


def send_request(sock: socket.socket, path: str, *headers: str) -> None:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything until the server's FIN (a reset raises ConnectionResetError)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


class Reply(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def get(upstream: Upstream, path: str, headers: dict[str, str] | None = None) -> Reply:
    """One GET on a fresh http.client connection, read in full (http.client's errors propagate) and closed."""
    conn = http.client.HTTPConnection(upstream.host, upstream.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


# -- trickles --------------------------------------------------------------------------------------------------------


def test_trickled_headers_arrive_a_byte_at_a_time(upstream: Upstream) -> None:
    interval, count = 0.05, 10
    with connect(upstream) as sock:
        send_request(sock, f"/trickle-headers?interval={interval}&count={count}")
        started = time.monotonic()
        chunks: list[bytes] = []
        while b"\r\n\r\n" not in b"".join(chunks):
            chunk = sock.recv(65536)
            assert chunk, "closed before the end of the headers"
            chunks.append(chunk)
        elapsed = time.monotonic() - started
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        while len(body) < len(b"trickled"):
            body += sock.recv(65536)

    assert elapsed >= count * interval
    assert len(chunks) >= count  # one recv per byte, give or take a few merged by a slow reader
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nX-Padding: " in head
    assert b"\r\nContent-Length: 8" in head
    assert body == b"trickled"


def test_trickled_headers_are_padded_to_count_bytes_and_parse(upstream: Upstream) -> None:
    count = 300
    with connect(upstream) as sock:
        send_request(sock, f"/trickle-headers?interval=0&count={count}", "Connection: close")
        head = read_until_closed(sock).partition(b"\r\n\r\n")[0]
    assert len(head) + len(b"\r\n") == count  # everything before the blank line

    response = get(upstream, f"/trickle-headers?interval=0&count={count}")
    assert response.status == 200
    assert len(response.headers.get("X-Padding", "")) > 200
    assert response.body == b"trickled"


def test_trickled_body_arrives_a_byte_at_a_time(upstream: Upstream) -> None:
    interval, size = 0.05, 10
    with connect(upstream) as sock:
        send_request(sock, f"/trickle-body?interval={interval}&bytes={size}")
        started = time.monotonic()
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head_at = time.monotonic()
        head, _, body = received.partition(b"\r\n\r\n")
        chunks = 1 if body else 0
        while len(body) < size:
            chunk = sock.recv(65536)
            assert chunk, "closed before the end of the body"
            body += chunk
            chunks += 1
        body_at = time.monotonic()

    assert head_at - started < size * interval / 2  # the headers come at once
    assert body_at - head_at >= (size - 1) * interval
    assert chunks >= size // 2
    assert b"\r\nContent-Length: 10\r\n" in head
    assert body == b"x" * size


@pytest.mark.parametrize(
    "path", ["/trickle-headers?interval=0.01&count=2000", "/trickle-body?interval=0.01&bytes=2000"]
)
def test_a_client_leaving_mid_trickle_ends_the_connection_quietly(
    private_upstream: Upstream, path: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    sock = connect(private_upstream)
    send_request(sock, path)
    assert sock.recv(1)
    sock.close()

    # The serving thread ends (its next sends fail) without an unhandled exception, which filterwarnings=error
    # would turn into this test's failure.
    assert wait_until(lambda: private_upstream.live_connections == 0, timeout=5)
    assert capsys.readouterr() == ("", "")
    assert not caplog.records


@pytest.mark.parametrize("path", ["/trickle-headers?interval=0.5&count=200", "/trickle-body?interval=0.5&bytes=200"])
def test_stop_ends_a_trickle_at_once(private_upstream: Upstream, path: str) -> None:
    with connect(private_upstream, timeout=2) as sock:
        send_request(sock, path)
        assert sock.recv(1)

        started = time.monotonic()
        private_upstream.stop()
        assert time.monotonic() - started < 1

        with contextlib.suppress(ConnectionResetError):  # a FIN or a reset, as long as it is prompt
            while sock.recv(65536):
                pass
        assert time.monotonic() - started < 1
    assert wait_until(lambda: private_upstream.live_connections == 0, timeout=1)


# -- broken responses ------------------------------------------------------------------------------------------------


def test_truncated_sends_ten_of_a_thousand_bytes_then_a_clean_close(upstream: Upstream) -> None:
    with connect(upstream) as sock:
        send_request(sock, "/truncated")
        head, _, body = read_until_closed(sock).partition(b"\r\n\r\n")  # a reset would raise here
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 1000\r\n" in head
    assert body == b"x" * 10

    with pytest.raises(http.client.IncompleteRead):
        get(upstream, "/truncated")


def test_garbage_is_not_http(upstream: Upstream) -> None:
    with connect(upstream) as sock:
        send_request(sock, "/garbage")
        assert read_until_closed(sock) == b"\x00\x01garbage\r\n\r\n"

    with pytest.raises(http.client.BadStatusLine):
        get(upstream, "/garbage")


# -- redirects and cookies -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_has_location_and_set_cookie(upstream: Upstream, status: int) -> None:
    target = "http://127.0.0.1:1/elsewhere?a=1"
    response = get(upstream, "/redirect?" + urlencode({"to": target, "status": status, "set_cookie": "name=value"}))
    assert response.status == status
    assert response.headers.get("Location") == target
    assert response.headers.get("Set-Cookie") == "name=value; Path=/"
    assert response.body == b"redirecting"


def test_redirect_defaults_relative_and_without_cookie(upstream: Upstream) -> None:
    response = get(upstream, "/v1/redirect?to=/v1/cookies")
    assert response.status == 302
    assert response.headers.get("Location") == "/v1/cookies"
    assert response.headers.get("Set-Cookie") is None

    default = get(upstream, "/redirect")
    assert (default.status, default.headers.get("Location")) == (302, "/ok")


def test_redirect_refuses_a_status_that_is_not_a_redirect(upstream: Upstream) -> None:
    response = get(upstream, "/redirect?status=200")
    assert response.status == 400


def test_redirect_to_a_second_upstream_records_each_hop_on_its_own_server(
    upstream: Upstream, private_upstream: Upstream
) -> None:
    first = get(upstream, "/redirect?" + urlencode({"to": f"{private_upstream.url}cookies"}), {"Cookie": "a=1"})
    assert first.status == 302
    location = first.headers.get("Location", "")
    assert location == f"http://127.0.0.1:{private_upstream.port}/cookies"

    second = get(private_upstream, "/cookies", {"Authorization": "Bearer hop2"})
    assert json.loads(second.body) == {"cookie": None}
    assert [entry["headers"].get("cookie") for entry in upstream.recent("/redirect")] == ["a=1"]
    assert [entry["headers"].get("authorization") for entry in private_upstream.recent()] == ["Bearer hop2"]


def test_redirect_bad_gzip_declares_gzip_and_is_not(upstream: Upstream) -> None:
    response = get(upstream, "/redirect-bad-gzip?to=/ok")
    body = response.body
    assert response.status == 302
    assert response.headers.get("Location") == "/ok"
    assert response.headers.get("Content-Encoding") == "gzip"
    assert response.headers.get("Content-Length") == str(len(body))
    assert body == b"not gzip at all"
    with pytest.raises((OSError, zlib.error)):
        gzip.decompress(body)


def test_cookies_echoes_the_cookie_header(upstream: Upstream) -> None:
    with_cookie = get(upstream, "/cookies", {"Cookie": "a=1; b=2"})
    assert with_cookie.headers.get("Content-Type") == "application/json"
    assert json.loads(with_cookie.body) == {"cookie": "a=1; b=2"}
    assert json.loads(get(upstream, "/cookies").body) == {"cookie": None}


# -- the request log -------------------------------------------------------------------------------------------------


def test_recent_records_each_request_with_its_headers(upstream: Upstream) -> None:
    get(upstream, "/echo", {"Authorization": "Bearer one"})
    get(upstream, "/v1/ok?x=1", {"Cookie": "c=1"})
    get(upstream, "/_control/stats")

    everything = upstream.recent()
    assert [(entry["method"], entry["path"]) for entry in everything] == [("GET", "/echo"), ("GET", "/v1/ok?x=1")]
    assert upstream.recent("/echo")[0]["headers"]["authorization"] == "Bearer one"
    assert upstream.recent("/ok")[0]["headers"]["cookie"] == "c=1"  # matched on the path without its query
    assert upstream.recent("/missing") == []
    assert upstream.stats()["recent_requests"] == everything

    upstream.reset()
    assert upstream.recent() == []
    assert upstream.requests_log == []


def test_the_log_keeps_200_and_stats_show_20(upstream: Upstream) -> None:
    conn = http.client.HTTPConnection(upstream.host, upstream.port, timeout=5)
    for number in range(205):
        conn.request("GET", f"/ok?n={number}")
        conn.getresponse().read()
    conn.close()

    assert len(upstream.requests_log) == 200
    assert upstream.requests_log[0]["path"] == "/ok?n=5"
    shown = upstream.stats()["recent_requests"]
    assert [entry["path"] for entry in shown] == [f"/ok?n={number}" for number in range(185, 205)]

    over_http = json.loads(get(upstream, "/_control/stats").body)
    assert over_http["recent_requests"] == shown


def test_recent_returns_copies(upstream: Upstream) -> None:
    get(upstream, "/ok", {"X-Test": "1"})
    upstream.recent()[0]["headers"]["x-test"] = "changed"
    assert upstream.recent()[0]["headers"]["x-test"] == "1"
