"""A real HTTP receiver for webhook tests: a ``http.server`` on 127.0.0.1 in a thread.

It records every request (headers and the exact body bytes) and answers from a queue of
behaviours: a status code, optionally after a delay (longer than the sender's timeout to
simulate a slow receiver). Stopped, its port refuses connections (a receiver that is down);
started again on the same port, it is back up.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


_ports = random.Random()  # its own: a test that seeds the module's generator does not repeat it


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nothing is bound to, below the range the kernel picks outgoing
    connections' ports from. A server killed and started again on its port (tests/test_crash.py),
    or a receiver stopped and started, then does not find the port taken meanwhile as the local
    end of some client's connection (as a restart once did in CI: "Address already in use")."""
    low = _ephemeral_low()
    for _ in range(100 if low > 21_000 else 0):
        port = _ports.randrange(20_000, low)  # above the services' ports (PostgreSQL, ...)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        found: int = s.getsockname()[1]
        return found


class Receiver:
    """Answers ``answers`` in order (``(status, delay_s)``), then ``default`` status at once."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[Received] = []
        self.answers: list[tuple[int, float]] = []
        self.default = 200
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def answer(self, status: int, delay_s: float = 0.0, times: int = 1) -> None:
        with self._lock:
            self.answers.extend([(status, delay_s)] * times)

    def _next(self) -> tuple[int, float]:
        with self._lock:
            return self.answers.pop(0) if self.answers else (self.default, 0.0)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(Received(self.path, dict(self.headers), body))
                status, delay = receiver._next()
                if delay:
                    time.sleep(delay)
                try:
                    text = b"ok" if status < 300 else b"receiver says no"
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                except OSError:  # the sender gave up waiting
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, n: int, timeout_s: float = 5.0) -> None:
        """Wait until ``n`` requests arrived (for background senders)."""
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < n and time.monotonic() < deadline:
            time.sleep(0.01)
