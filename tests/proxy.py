"""A minimal forwarding HTTP proxy on 127.0.0.1 for the tests of clients behind a proxy.

Raw sockets and a thread per client connection, like ``tests.upstream``. It understands two kinds of request:

    GET http://127.0.0.1:PORT/path HTTP/1.1   absolute form: forwarded on a new upstream connection (``Connection:
                                              close`` upstream), the response relayed as it arrives; the client's
                                              connection is kept alive when the response has a Content-Length
    CONNECT 127.0.0.1:PORT HTTP/1.1           a tunnel: ``200 Connection established``, then bytes both ways until
                                              either side closes

Only 127.0.0.1 and localhost are reachable (403 otherwise). With ``auth=("user", "pass")`` a request without that
``Proxy-Authorization: Basic ...`` gets 407 with ``Proxy-Authenticate: Basic realm="test"``. An upstream that cannot
be reached, or closes before answering, gets 502; one that fails mid-response has the client connection closed, as
the client would see it without a proxy. Proxy headers (``Proxy-Authorization``, ``Proxy-Connection``) are not
forwarded. Chunked request bodies are refused (501).

Counters: ``requests`` (absolute-form requests forwarded), ``tunnels`` (CONNECTs accepted), ``connections_total``
(client connections accepted), and ``proxy_authorizations``, every ``Proxy-Authorization`` value received.
"""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

IDLE_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
MAX_LINE = 65536
MAX_HEADERS = 100
ALLOWED_HOSTS = ("127.0.0.1", "localhost")
HOP_BY_HOP = ("connection", "keep-alive", "proxy-authorization", "proxy-connection")


class ForwardingProxy:
    """A threaded HTTP/1.1 forwarding proxy. Use as a context manager or call start()/stop().

    Args:
        auth: ``(user, password)`` that clients must send as ``Proxy-Authorization: Basic``; ``None`` accepts all.
        host: the address to listen on.
        port: the port to listen on; 0 picks a free one.
    """

    def __init__(self, *, auth: tuple[str, str] | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._expected = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() if auth else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self.requests = 0
        self.tunnels = 0
        self.connections_total = 0
        self.proxy_authorizations: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> ForwardingProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop, "proxy-accept")
        return self

    def stop(self) -> None:
        """Stop accepting, close every connection (client and upstream) and wait briefly for the threads."""
        self._stop.set()
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        if self._listener is not None:
            sockets.append(self._listener)
        for sock in sockets:
            # shutdown() wakes a thread blocked in recv(); close() alone would not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            _close_quietly(sock)
        for thread in threads:
            thread.join(timeout=1.0)

    def __enter__(self) -> ForwardingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, as clients take a proxy URL."""
        return f"http://{self.host}:{self.port}"

    # -- plumbing --------------------------------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [known for known in self._threads if known.is_alive()] + [thread]
        thread.start()

    def _track(self, sock: socket.socket) -> bool:
        """Remember ``sock`` so stop() can close it; False (and closed) if stop() already ran."""
        with self._lock:
            if not self._stop.is_set():
                self._sockets.add(sock)
                return True
        _close_quietly(sock)
        return False

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        _close_quietly(sock)

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([listener], [], [], 0.05)
                if not ready:
                    continue
                conn, _ = listener.accept()
            except (OSError, ValueError):
                continue  # the listener was closed by stop()
            if self._track(conn):
                with self._lock:
                    self.connections_total += 1
                self._spawn(self._serve, "proxy-conn", conn)

    # -- one client connection -------------------------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        stream = _Stream(conn)
        try:
            conn.settimeout(IDLE_TIMEOUT)
            while not self._stop.is_set():
                request = _read_head(stream)
                if request is None:
                    return
                if not self._handle(stream, request):
                    return
        except (OSError, ValueError):
            return
        finally:
            self._forget(conn)

    def _handle(self, stream: _Stream, request: tuple[str, str, str, list[tuple[str, str]]]) -> bool:
        """Answer one request; True to keep the client connection for the next one."""
        method, target, version, headers = request
        fields = {name.lower(): value for name, value in headers}
        body = b""
        if "transfer-encoding" in fields:
            _reply(stream.sock, 501, b"chunked request bodies are not supported", close=True)
            return False
        if "content-length" in fields:
            body = stream.read_exact(int(fields["content-length"]))
        tunnel = method == "CONNECT"
        keep_alive = fields.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        # After an error reply the client may send its next request on the same connection, unless it was a CONNECT.
        reuse = keep_alive and not tunnel
        authorization = fields.get("proxy-authorization")
        if authorization is not None:
            with self._lock:
                self.proxy_authorizations.append(authorization)
        if not self._authorized(authorization):
            extra = {"Proxy-Authenticate": 'Basic realm="test"'}
            _reply(stream.sock, 407, b"proxy authentication required", extra, close=not reuse)
            return reuse

        if tunnel:
            host, _, port = target.rpartition(":")
        else:
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                _reply(stream.sock, 400, b"expected an absolute http:// URL or CONNECT host:port", close=True)
                return False
            host, port = parts.hostname, str(parts.port or 80)
        if host.lower() not in ALLOWED_HOSTS or not port.isdigit():
            _reply(stream.sock, 403, b"only 127.0.0.1 and localhost are reachable", close=not reuse)
            return reuse

        with self._lock:
            if tunnel:
                self.tunnels += 1
            else:
                self.requests += 1
        upstream = self._connect(int(port))
        if upstream is None:
            _reply(stream.sock, 502, b"upstream unreachable", close=not reuse)
            return reuse
        try:
            if tunnel:
                stream.sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._relay_tunnel(stream, upstream)
                return False
            head = _forward_head(method, _origin_form(target), version, headers, host, port)
            upstream.sendall(head + body)
            return self._relay_response(upstream, stream.sock, method) and keep_alive
        finally:
            self._forget(upstream)

    def _authorized(self, authorization: str | None) -> bool:
        if self._expected is None:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "basic" and token.strip() == self._expected

    def _connect(self, port: int) -> socket.socket | None:
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
        except OSError:
            return None
        upstream.settimeout(IDLE_TIMEOUT)
        return upstream if self._track(upstream) else None

    def _relay_response(self, upstream: socket.socket, client: socket.socket, method: str) -> bool:
        """Relay one response as it arrives; True when it was complete and delimited by Content-Length."""
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            data = upstream.recv(65536)
            if not data:
                if not buffer:  # nothing relayed yet: the proxy can still answer for the upstream
                    _reply(client, 502, b"upstream closed without answering", close=True)
                return False
            buffer += data
            client.sendall(data)  # relayed at once, so a trickled head reaches the client as trickled
            if len(buffer) > MAX_LINE * MAX_HEADERS:
                return False
        head, _, received = buffer.partition(b"\r\n\r\n")
        length = _content_length(head)
        if method == "HEAD":
            length = 0
        if length is None:  # delimited by the upstream closing: relay until it does, then close the client too
            while self._relay_chunk(upstream, client):
                pass
            return False
        remaining = length - len(received)
        if remaining < 0:
            return False  # more than its Content-Length, already relayed: the client connection cannot be reused
        while remaining > 0:
            data = upstream.recv(min(remaining, 65536))
            if not data:
                return False  # cut short: close the client connection as the upstream closed its own
            client.sendall(data)
            remaining -= len(data)
        return True

    def _relay_tunnel(self, stream: _Stream, upstream: socket.socket) -> None:
        client = stream.sock
        pending = stream.take_buffered()
        if pending:
            upstream.sendall(pending)
        idle = 0.0
        while not self._stop.is_set() and idle < IDLE_TIMEOUT:
            ready, _, _ = select.select([client, upstream], [], [], 0.1)
            idle = idle + 0.1 if not ready else 0.0
            for source in ready:
                if not self._relay_chunk(source, upstream if source is client else client):
                    return

    @staticmethod
    def _relay_chunk(source: socket.socket, target: socket.socket) -> bool:
        data = source.recv(65536)
        if not data:
            return False
        target.sendall(data)
        return True


class _Stream:
    """A socket with a read buffer, so that bytes read past a request's head are not lost."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def readline(self) -> bytes:
        """One line with its ending; what is left when the peer closes; ValueError past ``MAX_LINE`` bytes."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise ValueError("line too long")
            data = self.sock.recv(65536)
            if not data:
                line, self._buffer = self._buffer, b""
                return line
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def read_exact(self, size: int) -> bytes:
        """``size`` bytes; ValueError if the peer closes first."""
        if size < 0:
            raise ValueError("negative Content-Length")
        while len(self._buffer) < size:
            data = self.sock.recv(65536)
            if not data:
                raise ValueError("connection closed mid-body")
            self._buffer += data
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def take_buffered(self) -> bytes:
        data, self._buffer = self._buffer, b""
        return data


def _read_head(stream: _Stream) -> tuple[str, str, str, list[tuple[str, str]]] | None:
    line = stream.readline()
    if not line.strip():
        return None
    method, target, version = line.decode("latin-1").strip().split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        header = stream.readline()
        if header in (b"\r\n", b"\n", b""):
            return method, target, version, headers
        if len(headers) >= MAX_HEADERS:
            raise ValueError("too many headers")
        name, _, value = header.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))


def _origin_form(target: str) -> str:
    parts = urlsplit(target)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _forward_head(method: str, path: str, version: str, headers: list[tuple[str, str]], host: str, port: str) -> bytes:
    kept = [(name, value) for name, value in headers if name.lower() not in HOP_BY_HOP]
    if not any(name.lower() == "host" for name, _ in kept):
        kept.append(("Host", f"{host}:{port}"))
    lines = [f"{method} {path} {version}", *(f"{name}: {value}" for name, value in kept), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    501: "Not Implemented",
    502: "Bad Gateway",
}


def _reply(
    conn: socket.socket, status: int, body: bytes, headers: dict[str, str] | None = None, *, close: bool
) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
