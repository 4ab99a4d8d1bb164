"""A TCP relay on 127.0.0.1 that a test can cut and heal: a network partition between one client and a server.

Fleet tests point one worker's Redis URL at the relay and the others straight at the server; ``cut()`` closes every
relayed connection and refuses new ones (the worker is cut off while the fleet and Redis go on), ``heal()`` listens
again on the same port. Raw sockets and a thread per connection, like ``tests.upstream``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from tests.redis_server import _free_port


class TcpRelay:
    """``with TcpRelay(target_port) as relay: relay.url``; ``cut()`` and ``heal()`` keep the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = _free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def heal(self) -> TcpRelay:
        """Listen (again): new connections reach the target."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Close the listener and every relayed connection: the client's next command fails, and so do reconnects."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> TcpRelay:
        return self.heal()

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            with self._lock:
                if self._listener is not listener:
                    return
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    client.close()
                    server.close()
                    return
                self._sockets |= {client, server}
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        pair = {client: server, server: client}
        try:
            while not self._stopped.is_set():
                readable, _, _ = select.select(list(pair), [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except (OSError, ValueError):
            return  # cut, or either side went away
        finally:
            with self._lock:
                self._sockets -= {client, server}
            client.close()
            server.close()
