"""The HTTP parser of ``leadscore serve`` (leadscore.service.http): httptools with a bound on a
request's line and headers, and no bound on what is not head (bodies, requests in a row)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from leadscore.service import http
from leadscore.service.http import MAX_HEAD_BYTES, MAX_PIPELINED, BoundedHttpTools
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


# --- the protocol on its own, fed reads by hand ----------------------------------------------


class FakeTransport:
    """What the protocol writes, and whether it closed or paused the connection."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


READ = 16384  # bytes a read brings in these tests


def feed_until_closed(
    protocol: BoundedHttpTools, transport: FakeTransport, start: bytes, filler: bytes
) -> int:
    """Feed ``start``, then ``filler`` a read at a time, until the connection is closed (at
    most 32 MB); the bytes fed by then."""
    protocol.data_received(start)
    fed = len(start)
    while not transport.closed and fed < 32 * 1024 * 1024:
        protocol.data_received(filler)
        fed += len(filler)
    return fed


def with_protocol(check: Any) -> None:
    """Run ``check(protocol, transport)`` inside an event loop (the app's tasks need one)."""

    async def main() -> None:
        config = uvicorn.Config(echo_app, log_level="error", http=BoundedHttpTools)
        config.load()
        protocol = BoundedHttpTools(config, ServerState(), {})
        transport = FakeTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        check(protocol, transport)
        await asyncio.sleep(0)

    asyncio.run(main())


def test_a_header_line_that_never_ends_is_cut_off_near_the_bound() -> None:
    def check(protocol: BoundedHttpTools, transport: FakeTransport) -> None:
        fed = feed_until_closed(protocol, transport, b"GET / HTTP/1.1\r\nX-Endless: ", b"x" * READ)
        assert fed <= MAX_HEAD_BYTES + 2 * READ
        assert transport.written.startswith(b"HTTP/1.1 431")

    with_protocol(check)


def test_many_small_headers_are_counted_as_they_are_parsed() -> None:
    def check(protocol: BoundedHttpTools, transport: FakeTransport) -> None:
        lines = b"".join(b"h%d: v\r\n" % i for i in range(2000))  # every read ends lines
        fed = feed_until_closed(protocol, transport, b"GET / HTTP/1.1\r\n", lines)
        assert fed <= MAX_HEAD_BYTES + len(lines) + 100
        assert len(protocol.headers) * 6 <= MAX_HEAD_BYTES + 100
        assert transport.written.startswith(b"HTTP/1.1 431")

    with_protocol(check)


def test_trailers_count_against_the_bound() -> None:
    """Chunked trailers are headers too: lines of them without end, or one that never ends,
    close the connection (no 431: the request is being answered already)."""
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"

    def many(protocol: BoundedHttpTools, transport: FakeTransport) -> None:
        fed = feed_until_closed(protocol, transport, head, b"a: b\r\n" * (READ // 6))
        assert fed <= MAX_HEAD_BYTES + 2 * READ
        assert len(protocol.headers) <= MAX_HEAD_BYTES // 6

    def endless(protocol: BoundedHttpTools, transport: FakeTransport) -> None:
        fed = feed_until_closed(protocol, transport, head + b"X-Trailer: ", b"t" * READ)
        assert fed <= MAX_HEAD_BYTES + 3 * READ

    with_protocol(many)
    with_protocol(endless)


def test_pipelined_requests_are_bounded() -> None:
    """Requests read ahead of the one being answered: of a read that brings more than
    MAX_PIPELINED, those kept are answered and the last of them closes the connection (the
    one being answered is not cut off); reading stays paused while any wait, whatever a
    request's receive asks."""

    def flood(protocol: BoundedHttpTools, transport: FakeTransport) -> None:
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 1000)
        assert len(protocol.pipeline) == MAX_PIPELINED
        assert not transport.closed  # the first request is being answered
        assert protocol.cycle.keep_alive is False  # the last one kept closes the connection
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 1000)  # dropped
        assert len(protocol.pipeline) == MAX_PIPELINED

    def few(protocol: BoundedHttpTools, transport: FakeTransport) -> None:
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 5)
        assert not transport.closed and len(protocol.pipeline) == 4
        assert not transport.reading
        protocol.flow.resume_reading()  # as a request's receive() does
        assert not transport.reading
        protocol.on_response_complete()  # the first answered: the next starts, still paused
        assert len(protocol.pipeline) == 3 and not transport.reading
        for _ in range(3):
            protocol.on_response_complete()
        assert not protocol.pipeline
        protocol.on_response_complete()  # the last answered: reading again
        assert transport.reading

    with_protocol(flood)
    with_protocol(few)


def test_bodies_do_not_count_against_the_bound() -> None:
    def check(protocol: BoundedHttpTools, transport: FakeTransport) -> None:
        body = 5 * MAX_HEAD_BYTES
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % body)
        for _ in range(body // READ):
            protocol.data_received(b"b" * READ)
        assert not transport.closed

    with_protocol(check)


@pytest.fixture
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deadlines of half a second (read when they are set, so the running server uses them)."""
    monkeypatch.setattr(http, "HEAD_SECONDS", 0.5)
    monkeypatch.setattr(http, "BODY_IDLE_SECONDS", 0.5)


def _answer_and_close(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return data


@pytest.mark.usefixtures("short_deadlines")
def test_a_request_that_never_finishes_its_head_is_cut_off(port: int) -> None:
    """A slow client holding connections open with unfinished heads (or nothing at all) is
    answered 408 and closed, rather than held for ever."""
    for sent in (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n", b""):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            start = time.monotonic()
            s.sendall(sent)
            answer = _answer_and_close(s)
            assert time.monotonic() - start < 5
            assert answer.startswith(b"HTTP/1.1 408"), answer[:100]


@pytest.mark.usefixtures("short_deadlines")
def test_a_body_that_stalls_is_cut_off_and_one_that_trickles_is_served(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request("/", body=b"x" * 10)[:-5])  # 5 bytes of the body never come
        assert _answer_and_close(s).startswith(b"HTTP/1.1 408")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        whole = request("/", body=b"y" * 8)
        head, body = whole[:-8], whole[-8:]
        s.sendall(head)
        for byte in body:  # a byte every 0.2 s: 1.6 s in all, never 0.5 s without one
            time.sleep(0.2)
            s.sendall(bytes([byte]))
        [answer] = read_answers(s, 1)
    assert answer.startswith(b"HTTP/1.1 200") and answer.split(b" | ")[1].split()[0] == b"8"
