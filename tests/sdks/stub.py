"""A small stub of a vendor API on 127.0.0.1 for the SDK tests: canned JSON per path, failures on demand, every
request recorded. ``http.server`` is enough here: the SDKs only need well-formed answers, and the failures the tests
need are statuses (the shared ``upstream`` fixture covers resets and trickles)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Body = Mapping[str, Any] | list[Any] | Callable[[str, str, bytes], Mapping[str, Any]]


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Stub:
    """The stub's routes (``(method, path)`` -> JSON body) and state. ``fail_with`` answers every request with that
    status (and ``fail_headers``) instead; ``redirect`` maps a path to a Location."""

    routes: dict[tuple[str, str], Body]
    hits: list[Hit] = field(default_factory=list)
    fail_with: int | None = None
    fail_headers: dict[str, str] = field(default_factory=dict)
    redirect: dict[str, str] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)  # a path's status, with its route's body
    # A path answered with server-sent events: these chunks, ``stream_gap`` seconds apart (a token stream).
    streams: dict[str, list[bytes]] = field(default_factory=dict)
    stream_gap: float = 0.0
    # A path that answers nothing for this many seconds (or until the stub stops), then closes: a read timeout.
    hold: dict[str, float] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: set[socket.socket] = field(default_factory=set)

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for hit in self.hits if hit.path.split("?")[0] == path)


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with stub.lock:
                stub.connections.add(self.connection)

        def finish(self) -> None:
            with stub.lock:
                stub.connections.discard(self.connection)
            super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?")[0]
            with stub.lock:
                stub.hits.append(Hit(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            if path in stub.hold:  # answers nothing, then closes (the client timed out long before)
                stub.stopping.wait(stub.hold[path])
                self.close_connection = True
                return
            if path in stub.redirect:
                self._send(307, {"location": stub.redirect[path]}, b"")
                return
            if stub.fail_with is not None:
                payload = json.dumps({"error": {"message": "stub failure", "type": "stub"}}).encode()
                self._send(stub.fail_with, {"content-type": "application/json", **stub.fail_headers}, payload)
                return
            if path in stub.streams:
                self._stream(stub.streams[path])
                return
            route = stub.routes.get((self.command, path))
            if route is None:
                self._send(404, {"content-type": "application/json"}, b'{"error": {"message": "no route"}}')
                return
            found = route(self.command, path, body) if callable(route) else route
            status = stub.status.get(path, 200)
            self._send(status, {"content-type": "application/json"}, json.dumps(found).encode())

        def _stream(self, chunks: list[bytes]) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for chunk in chunks:
                time.sleep(stub.stream_gap)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def _send(self, status: int, headers: Mapping[str, str], payload: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

    return Handler


@contextmanager
def serve(routes: dict[tuple[str, str], Body]) -> Iterator[Stub]:
    """Serve ``routes`` on a free port of 127.0.0.1 for the block."""
    stub = Stub(routes=routes)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    # Handler threads are joined when the stub stops (server_close), so none outlives the test: the suite has tests
    # that count threads.
    server.daemon_threads = False
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.stopping.set()  # held answers end now
        server.shutdown()
        thread.join(timeout=5)
        with stub.lock:
            open_connections = list(stub.connections)
        for connection in open_connections:  # kept alive by a client's pool: end them, their threads then end
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()  # joins the handler threads
