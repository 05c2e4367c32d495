"""The FastAPI application: ``create_app(settings)``, and ``app_from_env`` for uvicorn workers.

On start it opens (and migrates) the store, publishes the model files it was given (the
shipped b2b-default model when the store has no model at all), loads the triggers file it was
given, sends score changes to the triggers, starts the writer of posted events (an ingest
process beside this one, or a thread for a store handed in: :mod:`leadscore.service.writer`),
and runs two background threads: the scheduled rescoring (which, as every rescoring of the
whole store, runs in a child process when the service opened the store itself:
:mod:`leadscore.service.rescoring`) and the delivery of the webhook outbox.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import leadscore
from leadscore.errors import LeadscoreError, UsageError
from leadscore.service import (
    ingest,
    keys_api,
    models_api,
    overview,
    segments_api,
    triggers_api,
    validation_api,
    views,
)
from leadscore.service.auth import KeyCache
from leadscore.service.errors import error_body, install_error_handlers, unavailable
from leadscore.service.rescoring import Rescorer, Stopped
from leadscore.service.serving import STOPPING, InFlight
from leadscore.service.state import ServiceState, Settings
from leadscore.service.survivors import collect_rarely, freeze_survivors
from leadscore.service.writer import (
    IngestWriter,
    ProcessWriter,
    ProcessWriterPool,
    with_triggers,
)
from leadscore.store import Store, open_store
from leadscore.store.keeper import RescoreReport
from leadscore.store.outbox import Deliverer, RetryPolicy
from leadscore.store.trigger_config import TriggerSpec
from leadscore.store.triggers import list_triggers, load_triggers, save_triggers

APIDOCS = Path(__file__).parent / "apidocs"  # Swagger UI from npm (see its README.md)


def docs_page_headers(html: str) -> dict[str, str]:
    """Security headers of the API's docs page: the web pages' policy, but with the page's
    own inline script (the one that starts Swagger UI) allowed by its SHA-256."""
    inline = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in inline
    )
    return {
        "Content-Security-Policy": f"default-src 'self'; script-src 'self' {hashes}; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }


__all__ = ["app_from_env", "create_app"]

log = logging.getLogger("leadscore.service")

# ingest processes on PostgreSQL unless told otherwise (--ingest-processes): a request of
# many leads is shared out among them, and one's Python work overlaps the other's wait for
# the database (500-event batches 5,500-6,500 against 3,000-4,150 events/s on 2 cores,
# single events, which go to the front one, at the same rate: 2026-12-07, docs/benchmarks.md)
POSTGRESQL_INGEST_PROCESSES = 2


def _publish_start_models(store: Store, settings: Settings) -> None:
    for path in settings.models:
        version = store.ensure_published(Path(path).read_text(encoding="utf-8"), path)
        if version is not None:
            log.info("published %s version %d from %s", version.name, version.version, path)
    if not settings.models and store.ensure_a_model() is not None:
        log.info("no model in the store: published the shipped b2b-default model")


def _what_it_does(spec: TriggerSpec) -> dict[str, Any]:
    """A trigger's definition but whether it is enabled."""
    definition = spec.definition()
    definition.pop("enabled", None)
    return definition


def _load_start_triggers(store: Store, settings: Settings) -> None:
    if settings.triggers is None:
        return
    sheets = {s.name: s.model for s in store.sheets()}
    specs = load_triggers(settings.triggers, sheets=sheets)
    with store.db.write() as conn:
        before = {t.spec.id: (_what_it_does(t.spec), t.enabled) for t in list_triggers(conn)}
        save_triggers(conn, specs, store.clock())
    log.info("loaded %d trigger(s) from %s", len(specs), settings.triggers)
    # The file wins at every start: say what it undid of changes made over the API or the
    # web page since (a trigger switched off, a PUT), rather than undo them silently.
    after = {s.id: (_what_it_does(s), s.enabled) for s in specs}
    undone = [f"{i!r} removed" for i in before if i not in after]
    for i, (definition, enabled) in after.items():
        if i in before and before[i][0] != definition:
            undone.append(f"{i!r} changed")
        elif i in before and before[i][1] != enabled:
            undone.append(f"{i!r} switched {'on' if enabled else 'off'} again")
    if undone:
        log.warning(
            "the triggers file %s replaced the stored triggers: %s (leave out --triggers to "
            "keep triggers changed over the API or the web page)",
            settings.triggers,
            ", ".join(undone),
        )


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def _nul_refusal(scope: Scope) -> JSONResponse | None:
    """A URL whose path or query holds the NUL character (``%00``) is refused: PostgreSQL
    text cannot hold it, so no id, name or filter value contains it.

    That leaves NUL free to stand for a slash that a lead's URL escaped (``%2F``): a lead
    ``R/history`` is ``/api/v1/leads/R%2Fhistory``, which the router would otherwise read as
    the history of lead ``R`` (it routes the unescaped path). The ``lead`` convertor of the
    lead routes turns it back into a slash (:class:`~leadscore.service.views.LeadIdConvertor`)."""
    if "\x00" in scope["path"] or b"%00" in scope["query_string"]:
        return JSONResponse(
            error_body("bad_request", "the URL may not contain the NUL character (%00)"),
            status_code=400,
        )
    raw = scope.get("raw_path")
    if raw and scope["path"].startswith(LEAD_PATHS) and ESCAPED_SLASH.search(raw):
        raw = raw.split(b"?", 1)[0]  # (ASGI's raw_path has no query; should a server add it)
        kept = "\x00".join(
            unquote(part.decode("ascii", "replace")) for part in ESCAPED_SLASH.split(raw)
        )
        if kept.replace("\x00", "/") == scope["path"]:  # the same path, its slashes told apart
            scope["path"] = kept
    return None


# The requests of the rescorings of every lead that a server beginning to stop ends
_ENDED = re.compile(r"POST /api/v1/(rescore|models/.+/publish)$")

LEAD_PATHS = "/api/v1/leads/"
ESCAPED_SLASH = re.compile(rb"%2[fF]")


class LocalModeGuard:
    """Without keys, only this machine may talk to the service: a web page the user visits
    must not reach it (through a rebinding DNS name, or a cross-site form post). A plain ASGI
    middleware: Starlette's decorator form costs every request a task and a stream."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = _nul_refusal(scope) or self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _refusal(scope: Scope) -> JSONResponse | None:
        headers = Headers(scope=scope)
        host = urlsplit("//" + headers.get("host", "")).hostname or ""
        origin = headers.get("origin")
        if host not in LOOPBACK_NAMES:
            return JSONResponse(
                error_body(
                    "bad_request", f"in local mode (--no-auth) the host {host!r} is refused"
                ),
                status_code=400,
            )
        # a write from a web page must come from this server's own pages: not from another
        # site, nor from another server on this machine (another port: a page of a
        # development server the user runs is "same-site" to the browser, not same-origin)
        other_page = (
            urlsplit(origin).netloc != headers.get("host", "")
            if origin is not None
            else headers.get("sec-fetch-site") in ("cross-site", "same-site")
        )
        if other_page and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            source = origin or "another site"
            return JSONResponse(
                error_body(
                    "forbidden",
                    f"in local mode (--no-auth) writes from web pages of {source} are refused "
                    "(only this server's own pages may write)",
                ),
                status_code=403,
            )
        return None


class BodyLimit:
    """A body over the limit is answered 413 before its key is checked or the body read: at
    once when its declared length (``Content-Length``) says so, else as soon as the bytes
    that arrived pass it (a body sent in chunks). A route reading its body into a model would
    otherwise take any size from anyone.

    Up to the usual limit the body is read here, whole (every route reads it whole), so that a
    refusal is answered before the route starts (stopped part way, a route raises, and the
    server closes the connection under a client that goes on using it). ``larger`` gives some
    paths a limit of their own (the outcomes upload): there the body streams to the route,
    which reads it only once the key is checked, counted as it comes.

    A body sent with ``Content-Encoding: gzip`` (as Segment's and RudderStack's senders may
    send) reaches the routes inflated, the limit counting the inflated bytes (a small body
    that inflates to gigabytes is refused as it inflates); gzip members one after another are
    one body. Another encoding, or gzip on a path of its own limit, is a 415."""

    def __init__(self, app: ASGIApp, limit: int, larger: dict[str, int]) -> None:
        self.app = app
        self.limit = limit
        self.larger = larger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        larger = self.larger.get(scope["path"])
        limit = self.limit if larger is None else larger
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")  # digits: the parser's
        if declared.isdigit() and int(declared) > limit:
            await _refusal(413, "payload_too_large", f"the body is over {limit:,} bytes")(
                scope, receive, send
            )
            return
        encoding = headers.get("content-encoding", "identity").strip().lower()
        gzipped = encoding in ("gzip", "x-gzip")
        if encoding not in ("identity", "") and not (gzipped and larger is None):
            problem = f"Content-Encoding {encoding!r} is not taken here: send the body as is"
            if larger is None:
                problem += " or gzip"
            await _refusal(415, "unsupported_media_type", problem)(scope, receive, send)
            return
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        has_body = scope["method"] in ("POST", "PUT", "PATCH")
        if not has_body and not gzipped and kind not in ("text/plain", *FORM_TYPES):
            await self.app(scope, receive, send)  # a read: nothing to hold (the hot path)
            return
        if kind in FORM_TYPES and has_body:  # curl -d's default: bodies here are JSON, YAML, CSV
            problem = (
                f"send JSON (Content-Type: application/json), or a model or triggers file as "
                f"YAML (application/yaml), not {kind}"
            )
            await _refusal(415, "unsupported_media_type", problem)(scope, receive, send)
            return
        as_json = kind == "text/plain" or (not kind and has_body)
        if gzipped or as_json:
            # the routes see the body as it was before it was compressed, and text/plain or
            # no type (as some senders post JSON) as the JSON it is
            dropped = {b"content-type"}
            if gzipped:  # the inflated body has no encoding, and another length
                dropped |= {b"content-encoding", b"content-length"}
            kept = [(k, v) for k, v in scope["headers"] if k.lower() not in dropped]
            if as_json or kind:
                kept.append((b"content-type", b"application/json" if as_json else kind.encode()))
            scope = {**scope, "headers": kept}
        if larger is not None or not gzipped:  # (as it comes, counted: the hot path)
            await _streamed(self.app, limit, scope, receive, send)
            return
        parts: list[bytes] = []
        inflated = _Inflated(limit) if gzipped else None
        seen = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            body = message.get("body", b"")
            more = bool(message.get("more_body", False))
            if inflated is not None:
                try:
                    body = inflated.more(body)
                except ValueError as e:
                    refusal = _refusal(400, "bad_request", str(e))
                    await _drained(receive, more, refusal)(scope, receive, send)
                    return
            seen += len(body)
            if seen > limit:
                problem = f"the body is over {limit:,} bytes"
                refusal = _refusal(413, "payload_too_large", problem)
                await _drained(receive, more, refusal)(scope, receive, send)
                return
            parts.append(body)
        if inflated is not None and not inflated.done:
            await _refusal(400, "bad_request", "the gzip body is cut short")(scope, receive, send)
            return
        whole: Message | None = {"type": "http.request", "body": b"".join(parts)}

        async def replayed() -> Message:
            nonlocal whole
            if whole is not None:
                message, whole = whole, None
                return message
            return await receive()  # after the body: the client leaving

        await self.app(scope, replayed, send)


class _Inflated:
    """A gzip body inflated as it arrives, never to more than ``limit`` bytes and one (enough
    to know it is over): members one after another are one body, other bytes after a member
    are an error (ValueError)."""

    def __init__(self, limit: int) -> None:
        self.left = limit + 1
        self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)

    @property
    def done(self) -> bool:
        return self.inflate.eof and not self.inflate.unused_data

    def more(self, data: bytes) -> bytes:
        out: list[bytes] = []
        while data and self.left > 0:
            try:
                chunk = self.inflate.decompress(data, self.left)
            except zlib.error as e:
                raise ValueError(f"the body is not valid gzip: {e}") from None
            out.append(chunk)
            self.left -= len(chunk)
            data = self.inflate.unconsumed_tail
            if self.inflate.eof and self.inflate.unused_data:  # another member, or not gzip
                data = self.inflate.unused_data
                if not data.startswith(b"\x1f\x8b"):
                    raise ValueError("the body holds bytes after its gzip data")
                self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return b"".join(out)


async def _streamed(app: ASGIApp, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    """``app`` with its body streamed to it, refused (413) once more than ``limit`` bytes came:
    the route is then told that the client left, and what it says after goes nowhere."""
    seen = 0
    answered = started = False

    async def counted() -> Message:
        nonlocal seen, answered
        message = await receive()
        if message["type"] == "http.request" and not answered:
            seen += len(message.get("body", b""))
            if seen > limit:
                answered = True
                if not started:
                    problem = f"the body is over {limit:,} bytes"
                    await _refusal(413, "payload_too_large", problem)(scope, receive, send)
                return {"type": "http.disconnect"}
        return message

    async def unless_answered(message: Message) -> None:
        nonlocal started
        if answered and not started:
            return
        started = started or message["type"] == "http.response.start"
        await send(message)

    await app(scope, counted, unless_answered)


def _drained(receive: Receive, more: bool, refusal: JSONResponse) -> ASGIApp:
    """``refusal``, sent once the rest of the body is read (up to :data:`DRAIN_BYTES`): a
    connection closed with bytes unread is reset, and the client could lose the answer; past
    that much, it is told to close."""

    async def answer(scope: Scope, receive_: Receive, send: Send) -> None:
        nonlocal more
        drained = 0
        while more and drained <= DRAIN_BYTES:
            rest = await receive()
            drained += len(rest.get("body", b""))
            more = rest["type"] == "http.request" and bool(rest.get("more_body", False))
        if more:
            refusal.headers["Connection"] = "close"
        await refusal(scope, receive_, send)

    return answer


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# How much of a refused body's rest is read before the answer (BodyLimit): more, and the
# connection is closed with it unread
DRAIN_BYTES = 1_000_000


def _refusal(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


class CrossSiteGuard:
    """With keys, a browser signed in to the web interface resends its key (HTTP Basic) on
    every request to this server, also when another site's page makes it post here. A write
    that a page of another site sent (``Origin`` of another host, or ``Sec-Fetch-Site:
    cross-site``) is refused unless it carries a Bearer key, which a browser never adds by
    itself: senders that post from their own web pages send their key that way."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = _nul_refusal(scope) if scope["type"] == "http" else None
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"].startswith(SEGMENT_PREFIX):
            # Segment's browser senders (analytics.js) post from the site's own pages, with
            # the write key in the body: any origin may, without credentials (CORS)
            if scope["method"] == "OPTIONS":
                await Response(status_code=204, headers=SEGMENT_PREFLIGHT)(scope, receive, send)
                return
            send = _with_headers(send, SEGMENT_CORS)
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            cross = headers.get("sec-fetch-site") == "cross-site" or (
                origin is not None and urlsplit(origin).netloc != headers.get("host", "")
            )
            authorization = headers.get("authorization")
            # no header at all: a Segment call whose write key is in its body, which no
            # browser adds on its own (a key the browser resends is a header)
            keyed = authorization is None and scope["path"].startswith(SEGMENT_PREFIX)
            bearer = (authorization or "").lower().startswith("bearer ")
            if cross and not (bearer or keyed):
                refusal = JSONResponse(
                    error_body(
                        "forbidden",
                        f"a write from a web page of {origin or 'another site'} needs an "
                        "`Authorization: Bearer <key>` header",
                    ),
                    status_code=403,
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


SEGMENT_PREFIX = "/v1/"
SEGMENT_CORS = [(b"access-control-allow-origin", b"*")]
SEGMENT_PREFLIGHT = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
    "Access-Control-Max-Age": "86400",
}


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """``send`` adding ``extra`` headers to the response."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


def ingest_processes(settings: Settings, sqlite: bool) -> int:
    """How many ingest processes to start (``Settings.ingest_processes``; 0: as suits the
    store, ``POSTGRESQL_INGEST_PROCESSES`` on PostgreSQL, one on SQLite). SQLite takes one
    writer at a time: more than one is refused there. On PostgreSQL two share out large
    requests by lead, so that one's Python work overlaps the other's wait for the database
    (docs/benchmarks.md)."""
    n = settings.ingest_processes
    if sqlite and n > 1:
        raise UsageError(
            f"ingest processes: {n} asked, but SQLite takes one writer at a time; more than "
            "one needs PostgreSQL"
        )
    if n < 1:
        return 1 if sqlite else POSTGRESQL_INGEST_PROCESSES
    return n


def _every(
    interval: float,
    stop: threading.Event,
    job: str,
    run: Callable[[], object],
    at_once: Callable[[], bool] | None = None,
) -> threading.Thread:
    """A thread that calls ``run`` every ``interval`` seconds until ``stop``, counted from
    one start to the next (a run that takes longer is followed by the next at once, never
    overlapped); first at once when ``at_once`` (asked in the thread; it must not raise)
    says so. Each run is logged (INFO) with its time and what ``run`` returned."""

    def loop() -> None:
        first = at_once is not None and at_once()
        due = time.monotonic() + (0 if first else interval)
        while not stop.wait(max(0.0, due - time.monotonic())):
            started = time.monotonic()
            due = started + interval
            try:
                result = run()
            except Stopped:  # the service stops
                return
            except Exception:  # keep the loop alive; the next pass retries
                log.exception("%s failed", job)
            else:
                log.info("%s done in %.1f s: %s", job, time.monotonic() - started, result)

    thread = threading.Thread(target=loop, name=f"leadscore-{job}", daemon=True)
    thread.start()
    return thread


def _rescored(report: RescoreReport) -> str:
    """A scheduled rescoring as its log line says it."""
    kept = f", {report.skipped:,} kept (rescored live meanwhile)" if report.skipped else ""
    leads = f"{report.leads:,} lead{'' if report.leads == 1 else 's'}"
    changes = f"{report.changed:,} score change{'' if report.changed == 1 else 's'}"
    return f"{leads} rescored, {changes}{kept}"


def _replaced_at_start(store: Store, scheduled: bool) -> bool:
    """Whether some leads still have scores of a model version no longer active (a publish
    whose rescoring stopped part way: Store.publish), logged; the scheduled rescoring then
    runs at once and brings them over (recorded as model change)."""
    try:
        left = store.replaced_scores()
    except Exception:  # the server goes on; the next rescoring brings them over all the same
        log.exception("checking the scores' model versions at start failed")
        return False
    if left:
        log.warning(
            "%s %s a score of a model version no longer active (a publish whose rescoring "
            "stopped part way): %s",
            f"{left:,} lead{'s' if left != 1 else ''}",
            "has" if left == 1 else "have",
            "rescoring every lead now"
            if scheduled
            else "run `leadscore rescore` or POST /api/v1/rescore to bring them over",
        )
    return left > 0


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """The service. Pass a ``store`` to share one (tests); otherwise ``settings.db`` is opened."""
    settings = settings or Settings()
    stop = threading.Event()
    in_flight: dict[int, str] = {}  # the requests under way (InFlight)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        own = store is None
        s = (
            store
            if store is not None
            else open_store(
                settings.db, durable=settings.durable, cached_events=settings.cached_events
            )
        )
        with_triggers(s)
        _publish_start_models(s, settings)
        _load_start_triggers(s, settings)
        writer: IngestWriter | ProcessWriter | ProcessWriterPool
        if own and settings.ingest_process and not s.db.in_memory:
            # the server process keeps a tenth of the cache: its rescorings (leads posted,
            # Segment identify calls) are few beside the ingest process's
            s.keep_events(settings.cached_events // 10)
            processes = ingest_processes(settings, s.db.is_sqlite)
            if processes > 1:  # the cache shared out: each keeps the leads it writes
                writer = ProcessWriterPool(
                    processes,
                    settings.db,
                    durable=settings.durable,
                    cached_events=settings.cached_events // processes,
                )
            else:
                writer = ProcessWriter(
                    settings.db,
                    durable=settings.durable,
                    cached_events=settings.cached_events,
                    scoring_process=settings.scoring_process,
                )
        else:
            writer = IngestWriter(s)
        rescorer = Rescorer(
            s, settings.db, durable=settings.durable, apart=own and not s.db.in_memory, stop=stop
        )
        app.state.leadscore = ServiceState(settings, s, KeyCache(), writer, rescorer)
        threads = []
        scheduled = settings.rescore_interval > 0
        if scheduled:
            threads.append(
                _every(
                    settings.rescore_interval,
                    stop,
                    "rescore",
                    lambda: _rescored(rescorer.rescore("decay")),
                    at_once=lambda: _replaced_at_start(s, scheduled),
                )
            )
        else:
            thread = threading.Thread(
                target=_replaced_at_start, args=(s, scheduled), name="leadscore-check", daemon=True
            )
            thread.start()
            threads.append(thread)
        policy = RetryPolicy(
            timeout_s=settings.webhook_timeout, first_delay_s=settings.retry_first_delay
        )
        deliverer = Deliverer(s.db, clock=s.clock, policy=policy)
        if settings.deliver_interval > 0:
            thread = threading.Thread(
                target=deliverer.run_forever,
                args=(stop, settings.deliver_interval),
                name="leadscore-deliver",
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        if settings.freeze_at_start:
            freeze_survivors()  # all made so far lives as long as the server
            collect_rarely()

        def stopping() -> list[str]:
            """The server begins to stop (leadscore.service.serving): the rescorings of every
            lead under way end now, rather than once uvicorn is done waiting for their
            requests; what was ended, and the requests still awaited, a line each."""
            ended = rescorer.under_way()
            stop.set()
            said = [f"{what} was under way: ended; {left}" for what, left in ended]
            waiting = sorted(r for r in in_flight.values() if not (ended and _ENDED.match(r)))
            if waiting:
                n = len(waiting)
                said.append(
                    f"waiting for {n} request{'s' if n > 1 else ''} under way to be answered: "
                    f"{', '.join(dict.fromkeys(waiting))} (press Ctrl-C again to stop at once)"
                )
            return said

        try:
            yield {STOPPING: stopping}
        finally:
            stop.set()
            writer.close()
            for t in threads:
                t.join(timeout=15)
            deliverer.close()
            if own:
                s.db.dispose()

    app = FastAPI(
        title="leadscore",
        version=leadscore.__version__,
        summary="Lead scoring service: ingest, current scores with explanations, history, "
        "models and triggers.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load Swagger UI (and ReDoc) from a CDN: served below
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(InFlight, requests=in_flight)  # innermost: the requests routes took
    app.add_middleware(LocalModeGuard if settings.no_auth else CrossSiteGuard)
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        larger={"/api/v1/outcomes": max(settings.max_upload_bytes, settings.max_body_bytes)},
    )
    app.include_router(ingest.router)
    app.include_router(views.router)
    app.include_router(overview.router)
    app.include_router(models_api.router)
    app.include_router(triggers_api.router)
    app.include_router(keys_api.router)
    app.include_router(segments_api.router)
    app.include_router(validation_api.router)

    app.mount("/docs/assets", StaticFiles(directory=APIDOCS), name="apidocs")

    docs_page = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title="leadscore API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},  # no badge from validator.swagger.io
    )
    docs_headers = docs_page_headers(bytes(docs_page.body).decode())

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        """The browsable API (Swagger UI, vendored: nothing loads from outside the server),
        with the web pages' protections: only its own scripts run, and no site can frame it."""
        return HTMLResponse(bytes(docs_page.body), headers=docs_headers)

    @app.get("/api/v1/health", tags=["service"])
    def health() -> dict[str, object]:
        """The service's state: 200 when it can serve; 503 with the reason (and a
        Retry-After) when its store cannot be reached or read now (a PostgreSQL server down,
        a SQLite file gone or unreadable), or no ingest process can be started (the back-off
        after a failed start)."""
        state: ServiceState = app.state.leadscore
        try:
            state.store.db.check()
        except LeadscoreError:
            raise
        except Exception as e:  # the driver's: as a request meeting it would hear it
            raise unavailable(e) from None
        problem = state.writer.problem()
        if problem is not None:
            raise problem
        return {
            "status": "ok",
            "version": leadscore.__version__,
            "store": state.store.db.engine.dialect.name,
            "sheets": [s.name for s in state.store.sheets()],
            "event_cache": state.writer.cache_stats(),
            "ingest_processes": (
                len(state.writer.writers)
                if isinstance(state.writer, ProcessWriterPool)
                else int(isinstance(state.writer, ProcessWriter))
            ),
        }

    return app


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory``: the settings come from ``LEADSCORE_SERVICE_SETTINGS``."""
    return create_app(Settings.from_env())
