"""The HTTP parser ``leadscore serve`` runs under uvicorn: httptools, with a bound on headers.

httptools (llhttp, in C) parses a request in a fraction of h11's time, which is most of what
a single-event POST costs the server process (docs/benchmarks.md). But it keeps a request's
URL and headers in memory whatever their size, where h11 refuses a request whose head
outgrows its buffer. :class:`BoundedHttpTools` restores the bound: a connection that sends
more than ``MAX_HEAD_BYTES`` of request line and headers hears 431 and is closed, so a client
cannot make the server hold more than that (and one read's worth) for it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

__all__ = ["MAX_HEAD_BYTES", "BoundedHttpTools"]

# request line and headers of one request, at most (h11's buffer, which uvicorn uses
# otherwise, is 16 KiB; this counts in whole reads, so it is given room above that)
MAX_HEAD_BYTES = 64 * 1024


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a refused request (httptools hands it
    back to uvicorn as a parser error, whose 400 the protocol then leaves unsent)."""


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing heads larger than ``MAX_HEAD_BYTES`` with 431.

    A head that ends is measured once parsed (its URL and headers). One that has not ended yet
    is measured in whole reads: a read that arrives while the connection waits for (or reads)
    a request's head, and does not finish it, counts in full; so a head that never ends is cut
    off once the reads that carried it pass the bound, and the server never holds more than
    the bound and one read (up to 256 KiB under asyncio) of it.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._in_head = True  # waiting for, or reading, a request's line and headers
        self._head_bytes = 0  # of the head under way, in the reads before the current one
        self._boundary = False  # a head or a request ended within the current read
        self._refused = False

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > MAX_HEAD_BYTES:
            self._refuse_head()
            raise _HeadTooLarge
        self._in_head, self._head_bytes, self._boundary = False, 0, True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head, self._head_bytes, self._boundary = True, 0, True
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        was_in_head = self._in_head
        self._boundary = False
        super().data_received(data)
        if was_in_head and self._in_head and not self._boundary and not self._refused:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # else the parser stopped at a refused head: 431 was sent
            super().send_400_response(msg)

    def _refuse_head(self) -> None:
        self._refused = True
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
