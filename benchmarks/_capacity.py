"""A capacity-limited upstream on 127.0.0.1 for row 21 and the adaptive-protection tests: ``capacity`` requests
are worked on at once, each for ``service`` seconds; the rest queue, so past the capacity every answer takes longer
(latency grows with the queue, as a real server's does), and nothing is refused.

    CapacityServer(capacity=8, service=0.02)      .url, .served, .in_flight, .peak, .fail_share, .stop()

``fail_share`` (0..1) makes that share of requests answer 503 at once (deterministically, every n-th one), for an
upstream that fails most calls; ``arrivals`` counts every request that reached it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit


class CapacityServer:
    """A threaded HTTP/1.1 server whose work is bounded by a semaphore of ``capacity``."""

    def __init__(self, capacity: int = 8, service: float = 0.02) -> None:
        self.capacity = capacity
        self.service = service
        self.fail_share = 0.0
        self.arrivals = 0
        self.served = 0
        self.failed = 0
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._work = threading.Semaphore(capacity)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path == "/_control":  # ?fail=0.9 sets the failing share; answers the counters
                    query = parse_qs(parts.query)
                    if "reset" in query:
                        owner.reset()
                    if "fail" in query:
                        owner.fail_share = float(query["fail"][0])
                    status, body = 200, json.dumps(owner.stats()).encode()
                else:
                    status = owner._serve()
                    body = b"ok" if status == 200 else b"unavailable"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.request_queue_size = 256
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _serve(self) -> int:
        with self._lock:
            self.arrivals += 1
            number = self.arrivals
            if self.fail_share and (number % 100) < self.fail_share * 100:
                self.failed += 1
                return 503
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        with self._work:
            threading.Event().wait(self.service)
        with self._lock:
            self.in_flight -= 1
            self.served += 1
        return 200

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "arrivals": self.arrivals,
                "served": self.served,
                "failed": self.failed,
                "peak": self.peak,
                "in_flight": self.in_flight,
            }

    def reset(self) -> None:
        with self._lock:
            self.arrivals = self.served = self.failed = self.peak = 0
            self.fail_share = 0.0

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CapacityServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


class CapacityProcess:
    """The same server in a process of its own (so its work does not compete with the callers for a GIL):
    ``.url``, ``.control(fail=0.9)`` / ``.control(reset=1)`` returning the counters, ``.stop()``."""

    def __init__(self, capacity: int = 8, service: float = 0.02) -> None:
        command = [sys.executable, "-m", "benchmarks._capacity", "--capacity", str(capacity), "--service", str(service)]
        root = Path(__file__).resolve().parents[1]  # so that `-m benchmarks._capacity` is found from anywhere
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=root)
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self._process.kill()
            raise RuntimeError(f"the capacity server did not start: {self.url!r}")

    def control(self, **query: float) -> dict[str, int]:
        arguments = "&".join(f"{key}={value}" for key, value in query.items())
        with urllib.request.urlopen(f"{self.url}_control?{arguments}", timeout=5) as answer:  # noqa: S310 (loopback)
            stats: dict[str, int] = json.loads(answer.read())
        return stats

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=5)

    def __enter__(self) -> CapacityProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="A capacity-limited upstream on 127.0.0.1 (prints its URL).")
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--service", type=float, default=0.02)
    arguments = parser.parse_args()
    server = CapacityServer(arguments.capacity, arguments.service)
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
