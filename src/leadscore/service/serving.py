"""The uvicorn server that ``leadscore serve`` and the demo run, and what the service tells it
when it begins to stop.

Told to stop (Ctrl-C, SIGTERM), uvicorn first waits for the requests under way to be answered,
and only then tells the application (the end of its lifespan). A request that asked for a
rescoring of every lead or a publish waits for it: it went on for as long as it took (minutes
on a large store), with nothing said (uvicorn's "Waiting for connections to close" is an info
line). :class:`Server` calls the service's hook (:data:`STOPPING`, which the service's
lifespan puts in its state) as soon as it begins to stop: the rescorings of every lead under
way are ended at once (their requests hear 503; what they wrote stays, and the next rescoring
does the rest), and what was ended, and which requests it still waits for, is logged.
"""

from __future__ import annotations

import itertools
import logging
import socket
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["STOPPING", "InFlight", "Server", "Stopping"]

log = logging.getLogger("leadscore.service")

# The key of the hook in the lifespan's state: called once as the server begins to stop, it
# ends what can be ended and says, a line each, what it ended and what is still under way.
STOPPING = "leadscore.stopping"
Stopping = Callable[[], list[str]]


class InFlight:
    """ASGI middleware: the requests under way (``METHOD /path``), for a server that stops to
    say what it waits for. (A dict entry per request: nothing on the hot path to speak of.)"""

    def __init__(self, app: ASGIApp, requests: dict[int, str]) -> None:
        self.app = app
        self.requests = requests  # kept up to date here, read by whoever handed it in
        self._ids = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = next(self._ids)
        self.requests[key] = f"{scope['method']} {scope['path']}"
        try:
            await self.app(scope, receive, send)
        finally:
            del self.requests[key]


class Server(uvicorn.Server):
    """uvicorn's server, which tells the service as soon as it begins to stop (see the
    module's docstring)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        lifespan = getattr(self, "lifespan", None)
        hook = getattr(lifespan, "state", {}).get(STOPPING)
        if hook is not None:
            try:
                for line in hook():
                    log.warning("stopping: %s", line)
            except Exception:  # stopping goes on all the same
                log.exception("telling the service that the server stops failed")
        await super().shutdown(sockets)
