"""A small controllable HTTP/1.1 upstream on 127.0.0.1, shared by every test, the benchmarks and the example.

Raw sockets rather than http.server, so it can do what real upstreams do to clients: reset a connection mid-body,
hold a connection without answering, trickle a response a byte at a time, cut a body short, answer with bytes that are
not HTTP, refuse connections, and report how many connections are open right now and which headers each request
carried.

Behaviour by the path's last segment(s), so ``/v1/echo`` echoes too (any other path follows the current mode):
    /ok                          200 "ok"
    /slow?delay=0.2              answer after `delay` seconds
    /status/503?retry_after=2    that status, with an optional Retry-After header
    /fail-then-ok?fails=2&key=k&retry_after=1
                                 503 (with that Retry-After, if given) for the first `fails` requests with that key,
                                 then 200
    /replica?every=10&delay=0.5&key=k
                                 the n-th request with that key answers `n` (the body), after `delay` seconds when n
                                 is a multiple of `every`: a service behind which one replica in `every` is slow
    /reset-mid-body              headers and part of the body, then a TCP reset
    /hold?seconds=5              read the request, answer nothing, close after `seconds`
    /echo                        JSON: method, path, headers, body length
    /set-cookie?session=alice    200 with that Set-Cookie header
    /trickle-headers?interval=0.3&count=40
                                 status line and headers one byte every `interval` seconds (an X-Padding header makes
                                 the block at least `count` bytes before its blank line; it is never shorter than about
                                 50), then a short body at once
    /trickle-body?interval=0.3&bytes=40
                                 headers at once with Content-Length `bytes`, then the body one byte every `interval`
    /truncated                   headers with Content-Length 1000, 10 bytes of body, then a clean close (FIN)
    /garbage                     bytes that are not HTTP, then a close
    /redirect?to=/ok&status=302&set_cookie=name%3Dvalue
                                 `status` (301, 302, 303, 307 or 308; default 302) with Location `to` (absolute or
                                 relative; default /ok) and, if given, ``Set-Cookie: <set_cookie>; Path=/``
    /redirect-bad-gzip?to=/ok    302 to `to` whose body says Content-Encoding: gzip but is not gzip
    /cookies                     JSON: {"cookie": the Cookie request header or null}
    /etag?tag=v1                 200 "etag body" with ETag "v1" and max-age=1; 304 (max-age=60) to If-None-Match "v1"
    /raw?status=503&headers=HEX  that status with the header lines HEX decodes to, byte for byte (lines separated by
                                 CRLF; no other CR or LF allowed): any bytes a hostile upstream could put in a header

Trickles wait on the stop event, so ``stop()`` ends them at once, and end quietly when the client goes away.
Every request outside ``/_control/`` is recorded (method, path with query, lower-cased headers): the last 200 in
``Upstream.requests_log``, filtered by ``Upstream.recent(path_suffix)``, the last 20 in ``stats()["recent_requests"]``;
and when it arrived, the last 20,000 in ``Upstream.arrivals`` (``arrived(path_suffix, since, until)``).

Modes (``Upstream.set_mode`` or ``POST /_control/mode?name=failing&status=503&retry_after=1``):
    healthy (delay=0)  slow (delay)  failing (status, retry_after)  refuse (listener closed)  flapping (period)
``GET /_control/stats`` returns the counters; ``POST /_control/reset`` clears them and heals.

Run standalone: ``python -m tests.upstream --port 8001``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import select
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 15.0  # how long an upstream process may take to print its URL
MODES = ("healthy", "slow", "failing", "refuse", "flapping")
IDLE_TIMEOUT = 30.0
REQUESTS_LOG_SIZE = 200
ARRIVALS_SIZE = 20_000
STATS_RECENT_SIZE = 20
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class Upstream:
    """A threaded HTTP/1.1 server with keep-alive. Use as a context manager or call start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: a server context (``trustme``'s, in tests) to serve HTTPS instead of HTTP."""
        self.host = host
        self._tls = tls
        self._requested_port = port
        self.port = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.reset()

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> Upstream:
        self._listen(self._requested_port)
        self._accept_thread = threading.Thread(target=self._accept_loop, name="upstream-accept", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        self._close_listener()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            # Each serving thread holds a makefile() reader, which keeps close() from closing the socket;
            # shutdown() ends the connection for real and wakes a thread blocked reading the next request.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            _close_quietly(conn)

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host}:{self.port}/"

    # -- control ---------------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Zero the counters and return to healthy."""
        with getattr(self, "_lock", threading.Lock()):
            self.hits = 0
            self.hits_by_path: Counter[str] = Counter()
            # Replaced, never mutated, so a reader holding the old list never sees it change.
            self.requests_log: list[dict[str, Any]] = []
            # When each request arrived (time.monotonic(), once its head was read), with its path: the last
            # ARRIVALS_SIZE, so a test can count what reached the upstream in any window.
            self.arrivals: deque[tuple[float, str]] = deque(maxlen=ARRIVALS_SIZE)
            self.connections_total = 0
            self._fail_counts: Counter[str] = Counter()
            self.mode = "healthy"
            self.mode_params: dict[str, float] = {}
            self._mode_since = time.monotonic()
        if self.port and self._listener is None:
            self._listen(self.port)

    def set_mode(self, name: str, **params: float) -> None:
        """Switch behaviour for every path not listed in the module docstring."""
        if name not in MODES:
            raise ValueError(f"unknown mode {name!r}; choose one of {', '.join(MODES)}")
        with self._lock:
            self.mode = name
            self.mode_params = dict(params)
            self._mode_since = time.monotonic()
        if name == "refuse":
            self._close_listener()
        elif self._listener is None and self.port:
            self._listen(self.port)

    @property
    def live_connections(self) -> int:
        """TCP connections open right now (the server closes its side when the client does)."""
        with self._lock:
            return len(self._connections)

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        """Poll ``predicate()`` until true or ``timeout`` seconds pass (bounded); see ``wait_until``."""
        return wait_until(predicate, timeout)

    def recent(self, path_suffix: str | None = None) -> list[dict[str, Any]]:
        """The recorded requests, oldest first, whose path (without its query) ends with ``path_suffix``.

        Each is ``{"method": ..., "path": path and query, "headers": {lower-cased name: value}}``; at most the last
        200 since ``reset()``, ``/_control/`` requests excluded.
        """
        log = self.requests_log
        return [_copy_entry(entry) for entry in log if path_suffix is None or _path_of(entry).endswith(path_suffix)]

    def arrived(self, path_suffix: str, since: float = 0.0, until: float = float("inf")) -> list[float]:
        """When the requests whose path ends with ``path_suffix`` arrived (``time.monotonic()``), oldest first, within
        ``[since, until)``."""
        return [at for at, path in list(self.arrivals) if path.endswith(path_suffix) and since <= at < until]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "hits": self.hits,
                "hits_by_path": dict(self.hits_by_path),
                "connections_total": self.connections_total,
                "live_connections": len(self._connections),
                "mode": self.mode,
                "mode_params": self.mode_params,
                "recent_requests": [_copy_entry(entry) for entry in self.requests_log[-STATS_RECENT_SIZE:]],
            }

    # -- sockets ---------------------------------------------------------------------------------------------------

    def _listen(self, port: int) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, port))
        listener.listen(512)
        self.port = listener.getsockname()[1]
        self._listener = listener

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() stops listening at once; close() alone waits for the accept thread's select() to return,
            # and connections in that window would be accepted and then reset instead of refused.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            _close_quietly(listener)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                time.sleep(0.01)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.05)
                if not ready:
                    continue
                conn, _ = listener.accept()
            except (OSError, ValueError):
                continue  # the listener was closed under us (refuse mode or stop)
            with contextlib.suppress(OSError):  # a client that already reset must not end the accept thread
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._connections.add(conn)
                self.connections_total += 1
            threading.Thread(target=self._serve, args=(conn,), name="upstream-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        accepted = conn  # the socket counted in _connections (TLS wraps it in a new object)
        if self._tls is not None:
            try:
                conn.settimeout(IDLE_TIMEOUT)
                conn = self._tls.wrap_socket(conn, server_side=True)
            except (OSError, ValueError):  # the client refused the certificate: that is the test
                with self._lock:
                    self._connections.discard(accepted)
                _close_quietly(conn)
                return
        reader = conn.makefile("rb")
        try:
            conn.settimeout(IDLE_TIMEOUT)
            while not self._stop.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                method, target, headers, body = request
                keep_open = self._respond(conn, method, target, headers, body)
                if not keep_open or headers.get("connection", "").lower() == "close":
                    return
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._connections.discard(accepted)
            reader.close()
            _close_quietly(conn)

    # -- behaviour -------------------------------------------------------------------------------------------------

    def _respond(self, conn: socket.socket, method: str, target: str, headers: dict[str, str], body: bytes) -> bool:
        parts = urlsplit(target)
        path = parts.path
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        if path.startswith("/_control/"):
            return self._control(conn, method, path, query)
        entry = {"method": method, "path": path + (f"?{parts.query}" if parts.query else ""), "headers": dict(headers)}
        self.arrivals.append((time.monotonic(), path))
        with self._lock:
            self.hits += 1
            self.hits_by_path[path] += 1
            self.requests_log = [*self.requests_log[1 - REQUESTS_LOG_SIZE :], entry]
            mode, params, since = self.mode, dict(self.mode_params), self._mode_since

        route = _route(path)
        if route == "/ok":
            return _send(conn, 200, b"ok")
        if route == "/slow":
            self._sleep(float(query.get("delay", "0.2")))
            return _send(conn, 200, b"slow ok")
        if route.startswith("/status/"):
            extra = {"Retry-After": query["retry_after"]} if "retry_after" in query else {}
            return _send(conn, int(path.rsplit("/", 1)[1]), b"status", extra)
        if route == "/replica":
            # A pool of replicas one of which is slow: every `every`-th request with this key answers after `delay`.
            key = "replica:" + query.get("key", "default")
            with self._lock:
                self._fail_counts[key] += 1
                number = self._fail_counts[key]
            if number % int(query.get("every", "10")) == 0:
                self._sleep(float(query.get("delay", "0.5")))
            return _send(conn, 200, str(number).encode())
        if route == "/fail-then-ok":
            key = query.get("key", "default")
            with self._lock:
                self._fail_counts[key] += 1
                failing = self._fail_counts[key] <= int(query.get("fails", "1"))
            if not failing:
                return _send(conn, 200, b"recovered")
            retry_after = {"Retry-After": query["retry_after"]} if "retry_after" in query else None
            return _send(conn, 503, b"failing", retry_after)
        if route == "/reset-mid-body":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 10)
            time.sleep(0.01)
            # SO_LINGER with a zero timeout turns close() into a TCP reset.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if route == "/hold":
            self._hold(conn, float(query.get("seconds", "5")))
            return False
        if route == "/set-cookie":
            cookies = {"Set-Cookie": "; ".join(f"{key}={value}" for key, value in query.items()) + "; Path=/"}
            return _send(conn, 200, b"cookie set", cookies)
        if route == "/echo":
            payload = {"method": method, "path": target, "headers": headers, "body_length": len(body)}
            return _send(conn, 200, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        if route == "/trickle-headers":
            return self._trickle_headers(conn, query)
        if route == "/trickle-body":
            return self._trickle_body(conn, query)
        if route == "/truncated":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 10)
            # A FIN right away (close() follows in _serve): the client sees a clean early end of the body.
            conn.shutdown(socket.SHUT_WR)
            return False
        if route == "/garbage":
            conn.sendall(b"\x00\x01garbage\r\n\r\n")
            return False
        if route == "/redirect":
            return _redirect(conn, query)
        if route == "/redirect-bad-gzip":
            location = query.get("to", "/ok")
            if _has_line_break(location):
                return _send(conn, 400, b"line breaks in a header value")
            return _send(conn, 302, b"not gzip at all", {"Location": location, "Content-Encoding": "gzip"})
        if route == "/raw":
            return _send_raw(conn, int(query.get("status", "200")), bytes.fromhex(query.get("headers", "")))
        if route == "/etag":
            tag = '"' + query.get("tag", "v1") + '"'
            if headers.get("if-none-match") == tag:
                return _send(conn, 304, b"", {"ETag": tag, "Cache-Control": "max-age=60"})
            return _send(conn, 200, b"etag body", {"ETag": tag, "Cache-Control": "max-age=1"})
        if route == "/cookies":
            payload = {"cookie": headers.get("cookie")}
            return _send(conn, 200, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        return self._by_mode(conn, mode, params, since)

    # -- trickles: slow enough to defeat a deadline, never idle long enough to trip a read timeout ------------------

    def _trickle_headers(self, conn: socket.socket, query: dict[str, str]) -> bool:
        interval, count = float(query.get("interval", "0.3")), int(query.get("count", "40"))
        body = b"trickled"
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nX-Padding: "
        # The block up to (not including) its blank line is at least `count` bytes; a byte per interval after the
        # first means the blank line arrives no sooner than count * interval seconds.
        padding = "x" * max(1, count - len(head) - 2)
        if not self._trickle(conn, f"{head}{padding}\r\n\r\n".encode("latin-1"), interval, wait_first=False):
            return False
        conn.sendall(body)
        return True

    def _trickle_body(self, conn: socket.socket, query: dict[str, str]) -> bool:
        interval, size = float(query.get("interval", "0.3")), int(query.get("bytes", "40"))
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: text/plain\r\n\r\n".encode())
        return self._trickle(conn, b"x" * size, interval, wait_first=True)

    def _trickle(self, conn: socket.socket, data: bytes, interval: float, *, wait_first: bool) -> bool:
        """Send ``data`` one byte per ``interval``; False (close the connection) once ``stop()`` is called.

        A client that went away makes ``sendall`` raise ``OSError``, which ends the connection in ``_serve``.
        """
        for index in range(len(data)):
            if (index or wait_first) and self._stop.wait(interval):
                return False
            conn.sendall(data[index : index + 1])
        return True

    def _by_mode(self, conn: socket.socket, mode: str, params: dict[str, float], since: float) -> bool:
        if params.get("delay"):
            self._sleep(params["delay"])
        failing = mode == "failing"
        if mode == "flapping":
            period = params.get("period", 1.0)
            failing = int((time.monotonic() - since) / period) % 2 == 0
        if failing:
            status = int(params.get("status", 503))
            extra = {"Retry-After": str(int(params["retry_after"]))} if "retry_after" in params else {}
            return _send(conn, status, b"upstream failing", extra)
        return _send(conn, 200, b'{"ok": true}', {"Content-Type": "application/json"})

    def _control(self, conn: socket.socket, method: str, path: str, query: dict[str, str]) -> bool:
        if path == "/_control/arrivals":
            since, until = float(query.get("since", "0")), float(query.get("until", "inf"))
            arrivals = self.arrived(query.get("path", ""), since, until)
            return _send(conn, 200, json.dumps({"arrivals": arrivals}).encode(), {"Content-Type": "application/json"})
        if path == "/_control/stats":
            return _send(conn, 200, json.dumps(self.stats()).encode(), {"Content-Type": "application/json"})
        if path == "/_control/reset" and method == "POST":
            self.reset()
            return _send(conn, 200, b"reset")
        if path == "/_control/mode" and method == "POST":
            name = query.pop("name", "healthy")
            try:
                self.set_mode(name, **{key: float(value) for key, value in query.items()})
            except ValueError as error:
                return _send(conn, 400, str(error).encode())
            return _send(conn, 200, json.dumps({"mode": name, "params": query}).encode())
        return _send(conn, 404, b"unknown control endpoint")

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _hold(self, conn: socket.socket, seconds: float) -> None:
        # Answer nothing, but notice a client that gives up (as a real server sees its FIN), so that a held
        # connection does not outlive the test that opened it.
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([conn], [], [], min(0.05, left))
            if readable and not conn.recv(1, socket.MSG_PEEK):
                return


# -- child processes -------------------------------------------------------------------------------------------------


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Looked up here, in the parent: the child between fork() and exec() should call a function, not load a library.
_PRCTL = _load_prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for the servers the benchmarks start: on Linux the kernel sends the child SIGTERM when the
    thread that started it dies, so a benchmark killed outright (a test's timeout sends SIGKILL, which runs no
    cleanup) leaves no server running. ``None`` where there is no ``prctl``. Start children from the main thread.
    """
    prctl = _PRCTL
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


# -- the upstream ----------------------------------------------------------------------------------------------------


class UpstreamProcess:
    """``tests/upstream.py`` in its own process (``python -m tests.upstream --port 0``), so the server's work never
    competes with the client's for this interpreter's GIL."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self.url = ""
        self.host = ""
        self.port = 0

    def __enter__(self) -> UpstreamProcess:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.upstream", "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent(),  # no orphaned server if this process is killed
        )
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], STARTUP_SECONDS)
        line = self._process.stdout.readline() if ready else ""
        if "http://" not in line:
            self.__exit__()
            raise RuntimeError(f"the upstream did not start within {STARTUP_SECONDS:.0f}s (said {line!r})")
        self.url = line[line.index("http://") :].strip()
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        return self

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()

    def raw_round_trip_us(self, *, max_calls: int = 2_000, max_seconds: float = 1.0) -> float:
        """Median microseconds for one keep-alive ``GET /ok`` over a raw socket: the upstream's own cost plus the
        loopback, with no HTTP client in the way. It shows how much of a client's call the upstream accounts for."""
        request = f"GET /ok HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        samples: list[float] = []
        with socket.create_connection((self.host, self.port), timeout=5) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.perf_counter() + max_seconds
            while len(samples) < max_calls and time.perf_counter() < deadline:
                start = time.perf_counter()
                conn.sendall(request)
                answer = b""
                while not answer.endswith(b"ok"):  # the whole response: headers and the 2-byte body
                    chunk = conn.recv(4096)
                    if not chunk:
                        raise RuntimeError("the upstream closed the connection")
                    answer += chunk
                samples.append((time.perf_counter() - start) * 1e6)
        return statistics.median(samples)

    def arrived(self, path_suffix: str, since: float = 0.0, until: float = float("inf")) -> list[float]:
        """``Upstream.arrived`` of the server in that process (its ``time.monotonic()`` is this machine's too)."""
        found = self.control("GET", "arrivals", path=path_suffix, since=since, until=until)
        return [float(at) for at in found["arrivals"]]

    def control(self, method: str, action: str, **params: object) -> dict[str, Any]:
        """Call ``/_control/<action>`` on a fresh connection (never through a client under test)."""
        query = f"?{urlencode(params)}" if params else ""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            conn.request(method, f"/_control/{action}{query}")
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"upstream control {action} answered {response.status}: {body!r}")
        try:
            return dict(json.loads(body))
        except ValueError:
            return {}

    def hits(self) -> int:
        """Requests the upstream has answered (control calls excluded)."""
        return int(self.control("GET", "stats")["hits"])

    def set_mode(self, name: str, **params: float) -> None:
        self.control("POST", "mode", name=name, **params)

    def reset(self) -> None:
        """Zero the counters and return to healthy."""
        self.control("POST", "reset")


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll ``predicate()`` every 10 ms until it is true or ``timeout`` seconds pass; return its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def _redirect(conn: socket.socket, query: dict[str, str]) -> bool:
    location, cookie = query.get("to", "/ok"), query.get("set_cookie")
    status = int(query.get("status", "302"))
    if status not in REDIRECT_STATUSES:
        return _send(conn, 400, f"status must be one of {REDIRECT_STATUSES}".encode())
    if _has_line_break(location, cookie or ""):
        return _send(conn, 400, b"line breaks in a header value")
    headers = {"Location": location}
    if cookie is not None:
        headers["Set-Cookie"] = f"{cookie}; Path=/"
    return _send(conn, status, b"redirecting", headers)


def _path_of(entry: dict[str, Any]) -> str:
    return str(entry["path"]).partition("?")[0]


def _copy_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "headers": dict(entry["headers"])}


def _has_line_break(*values: str) -> bool:
    return any("\r" in value or "\n" in value for value in values)


def _route(path: str) -> str:
    segments = path.rstrip("/").split("/")
    if len(segments) >= 3 and segments[-2] == "status":
        return "/status/" + segments[-1]
    return "/" + segments[-1]


def _read_request(reader: Any) -> tuple[str, str, dict[str, str], bytes] | None:
    line = reader.readline(65536)
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        header = reader.readline(65536)
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = reader.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(reader.readline().split(b";")[0], 16)
            if size == 0:
                reader.readline()
                break
            chunks.append(reader.read(size))
            reader.readline()
        body = b"".join(chunks)
    return method, target, headers, body


_REASONS = {
    200: "OK",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _send(conn: socket.socket, status: int, body: bytes, headers: dict[str, str] | None = None) -> bool:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    return True


def _send_raw(conn: socket.socket, status: int, header_lines: bytes) -> bool:
    lines = header_lines.split(b"\r\n") if header_lines else []
    if any(b"\r" in line or b"\n" in line for line in lines):
        return _send(conn, 400, b"a bare CR or LF in a header line")
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Length: 3\r\n".encode()
    conn.sendall(head + b"".join(line + b"\r\n" for line in lines) + b"\r\nraw")
    return True


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A controllable upstream for outbound's tests and demo.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    upstream = Upstream(args.host, args.port).start()
    print(f"upstream listening on {upstream.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        upstream.stop()


if __name__ == "__main__":
    main()
