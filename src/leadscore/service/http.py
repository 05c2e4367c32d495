"""The HTTP parser ``leadscore serve`` runs under uvicorn: httptools, with bounds.

httptools (llhttp, in C) parses a request in a fraction of h11's time, which is much of what
a single-event POST costs the server process (docs/benchmarks.md). But under uvicorn it keeps
a request's URL, headers and trailers in memory whatever their size, and parses every
pipelined request of a read at once, where h11 refuses a head that outgrows its buffer and
takes requests one at a time. :class:`BoundedHttpTools` restores bounds on both.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

__all__ = [
    "BODY_IDLE_SECONDS",
    "HEAD_SECONDS",
    "MAX_HEAD_BYTES",
    "MAX_PIPELINED",
    "BoundedHttpTools",
]

# request line and headers (and trailers) of one request, at most (h11's buffer, which uvicorn
# uses otherwise, is 16 KiB)
MAX_HEAD_BYTES = 64 * 1024
# requests read ahead of the one being answered on a connection (HTTP pipelining), at most
MAX_PIPELINED = 32
# seconds a connection has to send a request's line and headers (from its first byte, or from
# the connection's start), and a body may send nothing: a client that holds a connection open
# with a request it never finishes is cut off (uvicorn waits for ever, and enough of them use
# up the process's file descriptors)
HEAD_SECONDS = 30.0
BODY_IDLE_SECONDS = 60.0


class _PipelineFlow(FlowControl):
    """uvicorn's flow control, with reading kept paused while pipelined requests wait (a
    request's ``receive`` and the end of each response resume it otherwise). The request
    being answered has all its body by then: the requests behind it were parsed after it."""

    def __init__(self, transport: asyncio.Transport, protocol: BoundedHttpTools) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def resume_reading(self) -> None:
        if not self._protocol.pipeline:
            super().resume_reading()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a refused request (httptools hands it
    back to uvicorn as a parser error, whose 400 the protocol then leaves unsent)."""


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, with bounds on what a connection can make it hold.

    - A request's URL and headers (and chunked trailers) are counted as they are parsed: past
      ``MAX_HEAD_BYTES`` the request hears 431 and the connection is closed.
    - What httptools keeps before it has parsed a whole URL, header or trailer line is bounded
      by counting reads: a read that carries no body and ends no head and no request counts
      in full, and once such reads in a row pass ``MAX_HEAD_BYTES`` the connection is refused
      the same way. So a line that never ends is cut off, and the server holds at most the
      bound and two reads (up to 256 KiB each under asyncio) of it.
    - Requests pipelined behind the one being answered: reading stays paused until they are
      answered, and of a read that brings more than ``MAX_PIPELINED`` of them the rest is
      dropped: the requests kept are answered, then the connection is closed (as HTTP lets a
      server do; the client sends the others again).
    - A request's line and headers must arrive within ``HEAD_SECONDS`` of its first byte
      (or of the connection's start), and its body may not stall for ``BODY_IDLE_SECONDS``:
      else it hears 408 and the connection is closed.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._head_bytes = 0  # URL and header lines of the request being parsed
        self._idle_bytes = 0  # of the reads in a row that made no progress
        self._progress = False  # the current read carried body, or ended a head or request
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None  # the deadline of the head or body
        self._body_at = 0.0  # when body last arrived (the loop's clock)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _PipelineFlow(transport, self)
        self._arm(HEAD_SECONDS)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._deadline)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadline(self) -> None:
        """The head did not arrive in time, or the body stalled: 408, and the connection is
        closed (a body that sent something meanwhile gets the rest of its time)."""
        self._timer = None
        if self._refused or self.transport.is_closing():
            return
        if self.headers is not None and self.cycle is not None:  # in the body
            idle = self.loop.time() - self._body_at
            if idle < BODY_IDLE_SECONDS:
                self._timer = self.loop.call_later(BODY_IDLE_SECONDS - idle, self._deadline)
                return
        self._refused = True
        busy = self.pipeline or (
            self.cycle is not None
            and self.cycle.response_started
            and not self.cycle.response_complete
        )
        if not busy:
            message = b"the request did not arrive in time"
            self.transport.write(
                b"".join(
                    [
                        STATUS_LINE[408],
                        b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: %d\r\n" % len(message),
                        b"connection: close\r\n\r\n",
                        message,
                    ]
                )
            )
        self.transport.close()

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        self._arm(HEAD_SECONDS)
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if len(self.pipeline) >= MAX_PIPELINED:
            # the requests kept are answered, the last of them closing the connection; the
            # rest of what was read is dropped
            self._refused = True
            self.cycle.keep_alive = False
            raise _Refused
        self._progress = True
        # the head's deadline, when it comes, now looks at how long the body has been idle
        # (one timer a request, not one more for its body)
        self._body_at = self.loop.time()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._progress = True
        self._body_at = self.loop.time()  # the deadline moves on (checked when it comes)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._progress = True
        self._disarm()
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._progress = False
        super().data_received(data)
        if self._refused:
            return
        if self._progress:
            self._idle_bytes = 0
        else:
            self._idle_bytes += len(data)
            if self._idle_bytes > MAX_HEAD_BYTES:
                self._refuse(raised=False)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # else the parser stopped at a refused request: answered
            super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse()

    def _refuse(self, raised: bool = True) -> None:
        """Close the connection: with a 431 unless an earlier request on it is still being
        answered (the 431 would be taken for that request's answer)."""
        self._refused = True
        busy = self.pipeline or (self.cycle is not None and not self.cycle.response_complete)
        if not busy:
            message = b"request line and headers over %d bytes" % MAX_HEAD_BYTES
            self.transport.write(
                b"".join(
                    [
                        STATUS_LINE[431],
                        b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: %d\r\n" % len(message),
                        b"connection: close\r\n\r\n",
                        message,
                    ]
                )
            )
        self.transport.close()
        if raised:
            raise _Refused
