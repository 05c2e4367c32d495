"""The HTTP parser of ``leadscore serve`` (leadscore.service.http): httptools with a bound on a
request's line and headers, and no bound on what is not head (bodies, requests in a row)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from leadscore.service.http import MAX_HEAD_BYTES, BoundedHttpTools
from tests.webhook_receiver import free_port


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers each request with the size of its body and of its headers."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    header_bytes = sum(len(k) + len(v) for k, v in scope["headers"])
    body = b"%d %d" % (size, header_bytes)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    p = free_port()
    server = uvicorn.Server(
        uvicorn.Config(echo_app, host="127.0.0.1", port=p, log_level="error", http=BoundedHttpTools)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    yield p
    server.should_exit = True
    thread.join(timeout=10)


def request(path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_answers(s: socket.socket, count: int) -> list[bytes]:
    """``count`` responses from the connection (each a status line ... body)."""
    data, answers = b"", []
    while len(answers) < count:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
        while b"\r\n\r\n" in data:
            head, rest = data.split(b"\r\n\r\n", 1)
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            if len(rest) < length:
                break
            answers.append(head.split(b"\r\n")[0] + b" | " + rest[:length])
            data = rest[length:]
    return answers


def test_a_head_over_the_bound_is_refused_with_431(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request("/", {"X-Big": "x" * (MAX_HEAD_BYTES + 10_000)}))
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert s.recv(4096) == b""  # and the connection is closed


def test_one_endless_header_is_cut_off(port: int) -> None:
    """A header that never ends (sent 16 KiB at a time) is refused long before it is sent
    in full: the server stops reading it near the bound, not at the end of it."""
    refused_after = None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
        sent = 0
        try:
            for _ in range(2000):  # 32 MB at most
                s.sendall(b"x" * 16384)
                sent += 16384
                s.settimeout(0.0)
                try:
                    answer = s.recv(4096)
                except BlockingIOError:
                    answer = b""
                s.settimeout(10)
                if answer:
                    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
                    refused_after = sent
                    break
        except OSError:  # reset while sending: refused, and this much had gone
            refused_after = sent
    assert refused_after is not None
    # the bound, two server reads and the sockets' buffers, far below 32 MB
    assert refused_after < 8 * 1024 * 1024


def test_large_bodies_and_heads_under_the_bound_are_served(port: int) -> None:
    headers = {f"X-H{i}": "y" * 1000 for i in range(40)}  # about 40 KiB of headers
    body = b"z" * 3_000_000
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request("/", headers, body))
        [answer] = read_answers(s, 1)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert answer.split(b" | ")[1].split()[0] == b"3000000"


def test_heads_of_many_requests_on_one_connection_are_counted_each_on_its_own(port: int) -> None:
    """Keep-alive and pipelining: each request's head starts the count again, however many
    requests (and however large their bodies) the connection carried before."""
    headers = {"X-Pad": "p" * 8000}
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for _ in range(3):  # one after the other: 3 x 40 requests, 320 KiB of heads each
            for _ in range(40):
                s.sendall(request("/", headers, b"b" * 5000))
            answers = read_answers(s, 40)
            assert [a.split(b" ")[1] for a in answers] == [b"200"] * 40
        # pipelined: a large body and the next request's head in the same reads
        s.sendall(request("/", headers, b"q" * 400_000) + request("/", headers, b"r"))
        answers = read_answers(s, 2)
    assert [a.split(b" | ")[1].split()[0] for a in answers] == [b"400000", b"1"]
