"""Group commit for ingest: events from concurrent requests share one store transaction.

Each request hands its events to a writer and waits; the writer takes everything waiting,
stores and rescores it in one transaction (each lead rescored once, one commit, one disk
flush), and answers every request with its own items' outcomes. A request is still answered
only after its events are committed. Under load this turns hundreds of small transactions into
a few large ones; with a single request waiting it costs nothing extra.

Three writers, one interface (``ingest``, ``close``, ``cache_stats``):

- :class:`ProcessWriter` writes in a process of its own, the one ``leadscore serve`` uses. The
  server process then speaks HTTP while the ingest process stores and rescores, each on a core
  of its own; in one process the two take turns under Python's global interpreter lock. On
  SQLite the ingest process hands the rescoring to a scoring process beside it
  (:mod:`leadscore.service.scoring`) and writes each batch in two transactions, storing the
  next batch while the scoring process scores the last; a request is still answered only
  after its leads' scores are committed.
- :class:`ProcessWriterPool` (PostgreSQL, what ``leadscore serve`` uses there): several
  ingest processes writing at once, a large request shared out among them by lead.
- :class:`IngestWriter` writes in a thread of the server process: for a store handed to the
  application (tests, a settable clock) and for in-memory databases, which another process
  cannot open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import pickle
import queue
import selectors
import signal
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any, cast

from sqlalchemy.engine import Connection

from leadscore.errors import LeadscoreError, StoreError, StoreUnavailable
from leadscore.service.errors import (
    ApiError,
    from_leadscore,
    start_failure,
    store_down,
    unavailable,
)
from leadscore.service.scoring import ScorerLink, preload, scoring_process
from leadscore.service.survivors import collect_rarely, freeze_survivors
from leadscore.store import EventInput, ItemOutcome, Store, open_store
from leadscore.store.db import connection_lost, database_url
from leadscore.store.deferred import (
    Earlier,
    Stored,
    settle,
    store_and_score,
    store_events,
    write_scored,
    write_scored_and_store,
)
from leadscore.store.eventcache import Preloader
from leadscore.store.keeper import ChangeListener
from leadscore.store.leads import email_key
from leadscore.store.scores import ScoreChange
from leadscore.store.triggers import TriggerEngine

__all__ = ["IngestWriter", "ProcessWriter", "ProcessWriterPool", "with_triggers"]

log = logging.getLogger("leadscore.service")

MAX_ITEMS = 2000  # events in one transaction, at most (a request's are never split there)
# ProcessWriterPool: a request of more events than this, for several leads, is shared out
# among the ingest processes by lead
SPLIT_ABOVE = 64
START_SECONDS = 60.0  # for the ingest process to open the store
STOP_SECONDS = 30.0  # for it to finish the transaction under way and exit
RESTART_FIRST_SECONDS = 1.0  # the wait after a failed start of the ingest process, doubling
RESTART_MAX_SECONDS = 60.0  # with each further failure up to this

Outcome = list[ItemOutcome] | BaseException


def with_triggers(store: Store) -> None:
    """Make the store's score changes go to the triggers (before any listener it had)."""
    if isinstance(store.listener, TriggerEngine):
        return
    engine = TriggerEngine(store.model_by_id)
    then = store.listener
    if then is None:
        store.listener = engine
        return

    def both(conn: Connection, changes: Sequence[ScoreChange], now_us: int, fire: bool) -> None:
        engine(conn, changes, now_us, fire)
        then(conn, changes, now_us, fire)

    listener: ChangeListener = both
    store.listener = listener


def _name(item: EventInput) -> str | None:
    """How an event names its lead: lead id, else email (as the store finds leads by it),
    else anonymous id."""
    return item.lead_id or email_key(item.email) or item.anonymous_id


def _by_lead(items: Sequence[EventInput]) -> list[tuple[str | None, list[int]]]:
    """The indexes of ``items`` grouped by lead as far as their names tell, before the store
    resolves them: events sharing a lead id, email (as the store matches it; a lead first
    known by its email has it as its id), anonymous id or message id are together. Each
    group with the first name (:func:`_name`) of its events, None if none names a lead."""
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    tagged = [
        [
            tag + value
            for tag, value in (
                ("n:", it.lead_id),
                ("n:", email_key(it.email)),
                ("a:", it.anonymous_id),
                ("m:", it.message_id),
            )
            if value
        ]
        for it in items
    ]
    for names in tagged:
        for other in names[1:]:
            parent[root(other)] = root(names[0])
    groups: dict[str | None, tuple[list[str | None], list[int]]] = {}
    for i, names in enumerate(tagged):
        key, indexes = groups.setdefault(root(names[0]) if names else None, ([None], []))
        if key[0] is None:
            key[0] = _name(items[i])
        indexes.append(i)
    return [(key[0], indexes) for key, indexes in groups.values()]


def _unstored(error: BaseException) -> str:
    """What an event of a request's failed share hears (the others' were stored)."""
    if isinstance(error, ApiError):
        reason = error.message
    elif isinstance(error, LeadscoreError):
        reason = str(error)
    else:
        reason = "the events could not be stored"
    return (
        f"not acknowledged: {reason}; send this event again (with its event_id a repeat "
        "is not stored twice)"
    )


def _merged(
    shares: Sequence[tuple[object, list[int]]], results: Sequence[list[ItemOutcome]]
) -> list[ItemOutcome]:
    """The outcomes of a request's shares, each indexed within its share, as the request's
    (indexed within the request, in its order)."""
    outcomes: list[ItemOutcome] = []
    for (_, share), result in zip(shares, results, strict=True):
        for outcome in result:
            outcome.index = share[outcome.index]
            outcomes.append(outcome)
    outcomes.sort(key=lambda o: o.index)
    return outcomes


def write_jobs(store: Store, jobs: Sequence[Sequence[EventInput]]) -> list[Outcome]:
    """Store and rescore the events of several requests in one transaction: each request's
    outcomes (indexed within the request), or the exception it is to hear."""
    merged = [item for job in jobs for item in job]
    try:
        outcomes = _ingest(store, merged)
    except Exception as e:
        if store_down(e):
            # the store is down or full: every request hears why; as the connection may have
            # gone with the commit under way, the events may be stored (their ids make a
            # repeat safe)
            down = unavailable(e)
            return [
                StoreUnavailable(
                    f"{down}; the events may or may not be stored: send them again (with their "
                    "event_id a repeat is not stored twice)"
                )
                for _ in jobs
            ]
        if len(jobs) == 1:
            if isinstance(e, LeadscoreError):  # the request's to hear (a 409: send again)
                return [e]
            log.exception("ingest failed")
            return [RuntimeError("the events could not be stored")]
        # one request's events broke the shared transaction: write each on its own, so the
        # others are not refused for it
        return [result for job in jobs for result in write_jobs(store, [job])]
    return _split(outcomes, jobs)


# PostgreSQL: a transaction that met a deadlock (another writer took locks the other way
# round: two servers, or two ingest processes) or a serialization failure is run again, up to
# this many times, before its requests hear of it
CONFLICT_RETRIES = 3


def _ingest(store: Store, items: list[EventInput]) -> list[ItemOutcome]:
    attempt = 0
    reconnected = False
    while True:
        try:
            return store.ingest_events(items)
        except Exception as e:
            orig = getattr(e, "orig", None)
            sqlstate = getattr(orig, "sqlstate", None)
            if not reconnected and connection_lost(e) and all(item.message_id for item in items):
                # The database closed the connection (a restart): once more on a new one.
                # Only when every event has a message id: had the commit gone through before
                # the connection broke, they are acknowledged as repeats, not stored twice.
                reconnected = True
                log.warning("ingest lost its database connection (%s): run again", orig)
                continue
            if sqlstate not in ("40P01", "40001") or attempt == CONFLICT_RETRIES:
                raise
            attempt += 1
            log.warning("ingest met %s (SQLSTATE %s): run again", type(orig).__name__, sqlstate)


def _split(outcomes: list[ItemOutcome], jobs: Sequence[Sequence[EventInput]]) -> list[Outcome]:
    """The outcomes of a transaction's items, per request (indexed within the request)."""
    results: list[Outcome] = []
    start = 0
    for job in jobs:
        mine = outcomes[start : start + len(job)]
        for o in mine:
            o.index -= start
        start += len(job)
        results.append(mine)
    return results


@dataclass
class _Job:
    items: list[EventInput]
    loop: asyncio.AbstractEventLoop  # the request's, which awaits ``done``
    done: asyncio.Future[list[ItemOutcome]]
    sent: bool = False  # queued for the ingest process's pipe (ProcessWriter)
    restarting: bool = False  # with the thread that starts the ingest process again

    @classmethod
    def here(cls, items: list[EventInput]) -> _Job:
        """A job awaited in the running event loop."""
        loop = asyncio.get_running_loop()
        return cls(items, loop, loop.create_future())


def _settle(job: _Job, result: Outcome) -> None:
    """Answer a job, from any thread: at once in its loop's own thread, else through it."""
    if _running_loop() is job.loop:
        _resolve(job.done, result)
        return
    # its loop closed (asyncio.run over, the request given up): no one waits
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(_resolve, job.done, result)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _resolve(done: asyncio.Future[list[ItemOutcome]], result: Outcome) -> None:
    if done.done():  # the request was cancelled (a client gone, a shutdown): no one waits
        return
    if isinstance(result, BaseException):
        done.set_exception(result)
    else:
        done.set_result(result)


class IngestWriter:
    """One thread writing the events of every request, in batches of up to ``max_items``."""

    def __init__(self, store: Store, max_items: int = MAX_ITEMS) -> None:
        self.store = store
        self.max_items = max_items
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="leadscore-ingest", daemon=True)
        self._thread.start()

    async def ingest(self, items: list[EventInput]) -> list[ItemOutcome]:
        """Store and rescore ``items``; their outcomes once they are committed."""
        job = _Job.here(items)
        self._jobs.put(job)
        return await job.done

    def cache_stats(self) -> dict[str, int]:
        """The statistics of the event cache that rescoring after ingest uses."""
        return self.store.event_cache.stats()

    def problem(self) -> ApiError | None:
        """None: a thread of the server process needs no start (see ProcessWriter.problem)."""
        return None

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=STOP_SECONDS)

    def _take(self) -> tuple[list[_Job], bool]:
        """The jobs waiting (at least one, blocking for it), and whether to stop after them."""
        first = self._jobs.get()
        if first is None:
            return [], True
        jobs, size = [first], len(first.items)
        while size < self.max_items:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            size += len(job.items)
        return jobs, False

    def _run(self) -> None:
        stop = False
        while not stop:
            jobs, stop = self._take()
            if jobs:
                for job, result in zip(
                    jobs, write_jobs(self.store, [j.items for j in jobs]), strict=True
                ):
                    _settle(job, result)


# --- the ingest process -------------------------------------------------------------------------

# An error crosses the pipe as what the request is to hear: a LeadscoreError of any kind as
# the API error it stands for (status, message, code, details), anything else as a message
# (a pickled exception does not always unpickle).
_Wire = list[ItemOutcome] | tuple[str, int, str, str, list[dict[str, Any]]] | tuple[str, str]


def _to_wire(result: Outcome) -> _Wire:
    if isinstance(result, LeadscoreError):
        e = from_leadscore(result)
        return ("api", e.status, e.message, e.code, e.details)
    if isinstance(result, BaseException):
        return ("error", str(result))
    return result


def _from_wire(result: _Wire) -> Outcome:
    if isinstance(result, list):
        return result
    if result[0] == "api" and len(result) == 5:
        _, status, message, code, details = result
        again = {"Retry-After": "5"} if status == 503 else None  # (StoreUnavailable)
        return ApiError(status, message, code=code, details=details, headers=again)
    return RuntimeError(str(result[-1]))


# A batch of at most this many events that arrives while none is in flight is stored and
# scored by the ingest process in one transaction: sooner than two transactions with a trip
# to the scoring process between them (single events, light traffic).
INLINE_EVENTS = 16
# the journals of such transactions kept for the scoring process's next job, at most (beyond,
# its kept lists are checked against the database again instead)
MAX_EARLIER_EVENTS = 10_000


def _ingest_process(
    jobs_in: Pipe,
    results_out: Pipe,
    db: str | None,
    durable: bool,
    cached: int,
    max_items: int,
    scoring: Pipe | None = None,
    inline_events: int = INLINE_EVENTS,
) -> None:
    """The ingest process: open the store, then write what arrives until the server sends
    ``None`` or goes away (its end of the pipe closes). With ``scoring`` (a pipe to the
    scoring process, leadscore.service.scoring), it stores each batch and writes its scores in
    two transactions, the scoring done there in between (batches of up to ``inline_events``
    events arriving while none is in flight: in one transaction, scored here)."""
    # The server stops it (after the transaction under way): Ctrl-C, which reaches the whole
    # process group, is the server's to handle. SIGTERM (a service manager's stop, or
    # multiprocessing's own at the server's exit) ends it between transactions, never inside one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    collect_rarely()
    state = _State()

    def on_term(_signum: int, _frame: object) -> None:
        if not state.busy:
            raise SystemExit(0)
        state.stop_asked = True

    signal.signal(signal.SIGTERM, on_term)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: ingest process: %(message)s")
    link = ScorerLink(scoring) if scoring is not None else None
    try:
        # with a scoring process, that process keeps the leads' events, this one none
        store = open_store(db, durable=durable, cached_events=0 if link else cached, create=False)
    except Exception as e:
        if link is not None:
            link.stop()
        results_out.send(("failed", f"could not open the store: {start_failure(e)}"))
        return
    try:
        try:
            with_triggers(store)
            # the leads of events stored and never rescored before the last stop (see
            # leadscore.store.deferred), whether or not this process has a scoring process
            settled = settle(store)
            if settled:
                log.warning("rescored %d leads whose scores were not written before", settled)
            if link is not None and not (store.db.is_sqlite and link.start(store.db.epoch)):
                link.stop()
            if link is None or not link.alive:
                store.keep_events(cached)
            freeze_survivors()  # the modules, the store, the cache read so far
        except Exception as e:  # the server's requests hear why (it logs it)
            results_out.send(("failed", f"could not start: {start_failure(e)}"))
            return
        results_out.send(("ready", _stats(store, link)))
        _write_loop(store, link, jobs_in, results_out, max_items, cached, state, inline_events)
    finally:
        if link is not None:
            link.stop()
        store.db.dispose()


@dataclass
class _State:
    busy: bool = False  # a transaction under way or a batch in flight: SIGTERM waits
    stop_asked: bool = False


# At most this many batches stored and not yet answered: one whose scores are being computed,
# one stored meanwhile.
MAX_IN_FLIGHT = 2
# A batch of more leads than one and a half times this goes to the scoring process in parts
# of about as many (Stored.parts): each part's scores are written, in a transaction of their
# own, while the scoring process scores the next, and the requests are answered once the last
# is written. Full size, 500-event batches: about 5% more events a second with parts of 250
# than whole; parts of 64 or 128 gained less (more commits, docs/benchmarks.md).
PART_LEADS = 250

_Batch = list[tuple[int, list[EventInput]]]


def _stats(store: Store, link: ScorerLink | None) -> dict[str, int]:
    """The event cache's figures: the scoring process's when there is one (what it keeps),
    with the leads this process read itself counted in (small batches it scored alone)."""
    mine = store.event_cache.stats()
    if link is None or not link.alive:
        return mine
    stats = dict(link.stats)
    for key in ("hits", "extended", "misses", "unchecked", "preloaded"):
        stats[key] = stats.get(key, 0) + mine[key]
    return stats


def _write_loop(
    store: Store,
    link: ScorerLink | None,
    jobs_in: Pipe,
    results_out: Pipe,
    max_items: int,
    cached: int,
    state: _State,
    inline_events: int = INLINE_EVENTS,
) -> None:
    # between requests, the events of the leads most recently active are read into the cache
    # (by the scoring process, when there is one). Not on PostgreSQL: every rescoring there
    # asks the database for the leads' events anyway, so a kept list saves the decoding but
    # not the reads, and it measured no faster (docs/benchmarks.md)
    preloader = Preloader(store.event_cache)
    preloader.done = preloader.done or not store.db.is_sqlite
    in_flight: deque[tuple[int, _Batch, Stored]] = deque()
    seq = 0
    # journals of the transactions written here alone since the scoring process's last job
    earlier: list[Earlier] = []
    earlier_events = 0
    stop = False

    def piped() -> bool:
        return link is not None and link.alive

    def gather(first: tuple[int, list[EventInput]]) -> _Batch:
        """The first request and those waiting behind it, up to ``max_items`` events."""
        nonlocal stop
        batch, size = [first], len(first[1])
        while size < max_items and jobs_in.poll():
            try:
                job = jobs_in.recv()
            except EOFError:  # the server is gone: write what has arrived
                job = None
            if job is None:
                stop = True
                break
            batch.append(job)
            size += len(job[1])
        return batch

    def answer(batch: _Batch, results: Sequence[Outcome]) -> bool:
        reply = [(jid, _to_wire(r)) for (jid, _), r in zip(batch, results, strict=True)]
        try:
            results_out.send((reply, _stats(store, link)))
        except OSError:  # the server is gone; what was committed stays
            return False
        return True

    def finish(after: _Batch | None = None) -> tuple[bool, Stored | None]:
        """Write the scores of the oldest part in flight (in one transaction with storing
        the events of ``after``, the next batch, if given) and, if it is its batch's last,
        answer the batch's requests; whether the answers went out (or were not yet due),
        and the next batch stored (None: to be stored yet)."""
        n, batch, stored = in_flight.popleft()
        jobs = [items for _, items in batch]
        scored = link.receive(n) if link is not None else None
        if scored is None:
            # the scoring process may have missed this batch's journal: its kept lists are
            # to be checked against the database from now on
            store.db.end_epoch()
        results: list[Outcome]
        stored_after: Stored | None = None
        try:
            if after is not None and piped():
                items = [item for _, job in after for item in job]
                _, stored_after = write_scored_and_store(store, stored, scored, items)
            else:
                write_scored(store, stored, scored)
            results = _split(stored.outcomes, jobs) if stored.final else []
        except Exception:
            log.exception("writing the scores of stored events failed")
            try:  # once more, on their own, rescored here
                write_scored(store, stored, None)
                results = _split(stored.outcomes, jobs) if stored.final else []
            except Exception:
                # The events are stored and their leads' scores are not: end this process
                # unanswered (the requests hear 503, send again, and hear their events are
                # duplicates); the next ingest process rescores those leads first.
                log.exception("rescoring stored events failed: the ingest process stops")
                return False, None
        if link is not None and not link.alive and store.event_cache.max_events == 0:
            alone()
        if not stored.final:  # answered with the batch's last part
            return True, stored_after
        return answer(batch, results), stored_after

    def alone() -> None:
        """The scoring process is gone: keep the leads' events here from now on."""
        nonlocal preloader
        store.keep_events(cached)
        preloader = Preloader(store.event_cache)
        preloader.done = preloader.done or not store.db.is_sqlite

    def keep_journal(stored: Stored) -> None:
        """A transaction written here alone: the scoring process takes its journal in with its
        next job (past a bound, the epoch ends instead and it checks its lists)."""
        nonlocal earlier_events
        journal = stored.earlier()
        if journal is None:  # nothing for it (repeats only), or the epoch ends with it
            if stored.epoch is None or stored.broken:
                earlier.clear()
                earlier_events = 0
            return
        if earlier and earlier[-1].epoch != journal.epoch:  # those before are of no use
            earlier.clear()
            earlier_events = 0
        earlier.append(journal)
        earlier_events += sum(len(rows) for rows in journal.added.values())
        if earlier_events > MAX_EARLIER_EVENTS:
            store.db.end_epoch()
            earlier.clear()
            earlier_events = 0

    def alone_now(batch: _Batch) -> tuple[bool | None, Stored | None]:
        """A small batch with none in flight: stored and scored here in one transaction, and
        answered (whether the answers went out); or only stored, its leads' histories being
        long (that Stored, for the scoring process); or (None, None) if the transaction
        failed (the batch is to be written as without the scoring process)."""
        try:
            stored = store_and_score(store, [item for _, items in batch for item in items])
        except Exception as e:
            if not isinstance(e, LeadscoreError):  # else a request's to hear, below
                log.warning("a small batch failed (%s): its requests are written one by one", e)
            return None, None
        if not stored.scored:
            return None, stored
        keep_journal(stored)
        return answer(batch, _split(stored.outcomes, [items for _, items in batch])), None

    def start(batch: _Batch, stored: Stored | None) -> bool:
        """A batch received: hand it to the scoring process once stored (``stored``: it is
        already), or write it here in one transaction; whether answers could go out."""
        nonlocal seq, earlier_events
        jobs = [items for _, items in batch]
        if (
            stored is None
            and piped()
            and not in_flight
            and sum(len(items) for items in jobs) <= inline_events
        ):
            sent, stored = alone_now(batch)
            if sent is not None:
                return sent
            # else stored only (scored below, by the scoring process), or written below, each
            # request on its own
        elif stored is None and piped():
            try:
                stored = store_events(store, [item for items in jobs for item in items])
            except Exception:  # written below, each request on its own, as without the pipe
                stored = None
        if stored is not None and stored.leads and link is not None and link.alive:
            for part in stored.parts(PART_LEADS):
                seq += 1
                link.send(part.job(seq, earlier))
                earlier.clear()  # with the first part
                earlier_events = 0
                in_flight.append((seq, batch, part))
            return True
        results: list[Outcome]
        if stored is not None and not stored.leads:  # nothing to rescore: repeats, anonymous
            while in_flight:  # a repeat is answered after its original
                if not finish()[0]:
                    return False
            results = _split(stored.outcomes, jobs)
        elif stored is not None:  # stored, and the scoring process gone meanwhile
            in_flight.append((0, batch, stored))
            while in_flight:
                if not finish()[0]:
                    return False
            return True
        else:
            while in_flight:  # in order: the batches before this one first
                if not finish()[0]:
                    return False
            results = write_jobs(store, jobs)
            if link is not None:  # events the scoring process was not told of
                store.db.end_epoch()
        return answer(batch, results)

    while True:
        if in_flight and (
            link is None
            or not link.alive
            or stop
            or state.stop_asked
            or sum(stored.final for _, _, stored in in_flight) >= MAX_IN_FLIGHT
            # whichever comes first: the scores of the batch in flight, or another request
            # to store meanwhile (neither within a second: wait for the scores, at most
            # ScorerLink's time limit, and look at SIGTERM)
            or jobs_in not in wait([jobs_in, link.pipe], timeout=1.0)
        ):
            after: _Batch | None = None
            # batches still unanswered once the oldest part is written (a part that is not
            # its batch's last answers none): another may be stored only below the bound
            left = sum(p.final for _, _, p in in_flight) - in_flight[0][2].final
            if (
                piped()
                and not stop
                and not state.stop_asked
                and left < MAX_IN_FLIGHT
                and jobs_in.poll()
            ):
                # another request waits: stored in the transaction that writes these scores
                try:
                    first = jobs_in.recv()
                except EOFError:
                    first = None
                if first is None:
                    stop = True
                else:
                    after = gather(first)
            sent, stored_after = finish(after)
            if not sent or (after is not None and not start(after, stored_after)):
                return
            continue
        if stop or state.stop_asked:
            return
        if not in_flight:
            state.busy = False
            while not piped() and not preloader.done and not jobs_in.poll():
                preload(store, preloader)
        try:
            first = jobs_in.recv()
        except EOFError:  # the server is gone
            stop = True
            continue
        if first is None:
            stop = True
            continue
        state.busy = True  # until the answers are sent
        if not start(gather(first), None):
            return


def _unavailable(message: str, retry_after: float = 1.0) -> ApiError:
    """What a request hears when the ingest process is not there to answer: a 503 (a
    sender's usual cue to retry), not a server error that closes its connection."""
    return ApiError(503, message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


def _stopping() -> ApiError:
    """What a request hears when the server stops before its events were sent on."""
    return _unavailable("the server is stopping: send the events again")


# multiprocessing's framing of a message on a pipe (Connection.send_bytes / recv_bytes): a
# 4-byte big-endian signed length, or -1 and an 8-byte length for 2 GiB and more
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
READ_BYTES = 1 << 20  # read from the answers' pipe at once, at most
# a request handed to another thread's event loop: how often to check that loop still runs
WATCH_SECONDS = 0.5


def _frame(message: object) -> list[memoryview]:
    """``message`` as ``Connection.send`` would write it (``Connection.recv`` reads it)."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(body) > 0x7FFFFFFF:
        head = _SHORT.pack(-1) + _LONG.pack(len(body))
    else:
        head = _SHORT.pack(len(body))
    if len(body) < 16384:  # one write, as Connection.send does
        return [memoryview(head + body)]
    return [memoryview(head), memoryview(body)]


def _unframe(buffer: bytearray) -> object | None:
    """The first whole message in ``buffer`` (taken out of it), or None if none is whole."""
    if len(buffer) < _SHORT.size:
        return None
    (size,) = _SHORT.unpack_from(buffer)
    start = _SHORT.size
    if size == -1:
        if len(buffer) < start + _LONG.size:
            return None
        (size,) = _LONG.unpack_from(buffer, start)
        start += _LONG.size
    if len(buffer) < start + size:
        return None
    message: object = pickle.loads(buffer[start : start + size])
    del buffer[: start + size]
    return message


class _Child:
    """One ingest process, the pipes to it, and the requests it has not answered yet.

    Its pipes are read and written by an event loop (``bind``), without blocking and without
    a thread between a request and the pipe: a request's events are written by the loop
    that received it (what the pipe cannot take yet is written as it drains), and the answers
    are read by that loop as they arrive. Everything below but ``stop`` runs in the thread of
    the loop bound.
    """

    def __init__(
        self,
        db: str | None,
        durable: bool,
        cached: int,
        max_items: int,
        scoring: bool,
        inline_events: int,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")  # not fork: the server runs threads
        jobs_in, self._jobs_out = ctx.Pipe(duplex=False)
        self._results_in, results_out = ctx.Pipe(duplex=False)
        # the scoring process, a sibling (a daemonic process may not start children): it
        # talks only to the ingest process, and ends when that one's end of their pipe closes
        self.scorer: BaseProcess | None = None
        to_scorer: Pipe | None = None
        if scoring:
            to_scorer, scorer_end = ctx.Pipe(duplex=True)
            self.scorer = ctx.Process(
                target=scoring_process,
                args=(scorer_end, db, durable, cached),
                name="leadscore-scoring",
                daemon=True,
            )
            self.scorer.start()
            scorer_end.close()
        self.process = ctx.Process(
            target=_ingest_process,
            args=(jobs_in, results_out, db, durable, cached, max_items, to_scorer, inline_events),
            name="leadscore-ingest",
            daemon=True,
        )
        self.process.start()
        jobs_in.close()
        results_out.close()
        if to_scorer is not None:
            to_scorer.close()
        self._pending: dict[int, _Job] = {}
        self._next_id = 0
        self._out: deque[memoryview] = deque()  # framed requests the pipe has not taken yet
        self._in = bytearray()  # answers' bytes read, not yet a whole message
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop doing the pipe I/O
        self._writing = False  # the loop waits for the pipe to drain
        self.alive = True
        self._stopped = False
        self.stats: dict[str, int] = {}
        self._wait_ready()
        os.set_blocking(self._jobs_out.fileno(), False)
        os.set_blocking(self._results_in.fileno(), False)

    def _wait_ready(self) -> None:
        try:
            self._ready()
        except StoreError:
            for p in (self.process, self.scorer):
                if p is not None and p.is_alive():
                    p.kill()
                if p is not None:
                    p.join(timeout=5)
            self._jobs_out.close()
            self._results_in.close()
            raise

    def _ready(self) -> None:
        try:
            if not self._results_in.poll(START_SECONDS):
                raise StoreError(f"the ingest process did not start within {START_SECONDS:.0f} s")
            kind, detail = self._results_in.recv()
        except (EOFError, OSError):
            self.process.join(timeout=5)
            raise StoreError(
                f"the ingest process stopped while starting ({_ended(self.process.exitcode)}; "
                "the server's log has what it said)"
            ) from None
        if kind != "ready":
            raise StoreError(f"the ingest process {detail}")
        self.stats = detail

    def bind(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Have ``loop`` (the one running in this thread) do the pipe I/O from now on, unless
        another loop still runs and does (False). A process found ended is marked gone."""
        if self.loop is loop:
            return True
        old = self.loop
        if old is not None:
            if not old.is_closed() and old.is_running():
                return False
            self._unwatch()  # a loop closed or stopped for good: its requests are over
        self.loop = loop
        if self.process.exitcode is not None:  # ended while no loop watched its pipe
            self._gone()
            return True
        loop.add_reader(self._results_in.fileno(), self._readable)
        if self._out:
            self._flush()
        return True

    def submit(self, job: _Job) -> bool:
        """Send ``job``'s events (in the bound loop's thread); False if the process had ended
        before they could go (they did not: the job may be sent to another one)."""
        if not self.alive:
            return False
        self._next_id += 1
        jid = self._next_id
        if not self._out and self.process.exitcode is not None:
            self._gone()
            return False
        self._pending[jid] = job
        self._out.extend(_frame((jid, job.items)))
        job.sent = True
        self._flush()
        return True

    def _flush(self) -> None:
        """Write what the pipe takes; wait for it to drain for the rest."""
        fd = self._jobs_out.fileno()
        out = self._out
        try:
            while out:
                written = os.write(fd, out[0])
                if written < len(out[0]):
                    out[0] = out[0][written:]
                    break
                out.popleft()
        except BlockingIOError:
            pass
        except OSError:  # the process ended: its requests hear so (_gone)
            self._gone()
            return
        assert self.loop is not None
        if self._out and not self._writing:
            self.loop.add_writer(fd, self._flush)
            self._writing = True
        elif not self._out and self._writing:
            self.loop.remove_writer(fd)
            self._writing = False

    def _readable(self) -> None:
        if not self._read_answers(all_there=False):  # the process ended
            self._gone()

    def _read_answers(self, all_there: bool) -> bool:
        """Read the answers the pipe holds (one read, or ``all_there``: until it is empty)
        and answer their requests; False once the pipe has ended (the process with it)."""
        while True:
            try:
                data = os.read(self._results_in.fileno(), READ_BYTES)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self._in += data
            while (message := _unframe(self._in)) is not None:
                answer, self.stats = cast(tuple[list[tuple[int, _Wire]], dict[str, int]], message)
                for jid, result in answer:
                    job = self._pending.pop(jid, None)
                    if job is not None:
                        _settle(job, _from_wire(result))
            if not all_there:
                return True

    def _unwatch(self) -> None:
        """No loop does this child's pipe I/O any more."""
        loop, self.loop = self.loop, None
        writing, self._writing = self._writing, False
        if loop is None or loop.is_closed():  # a closed loop watches nothing
            return
        # a stopped loop of another thread may be closing meanwhile: then it watches nothing
        with contextlib.suppress(RuntimeError, ValueError, KeyError, OSError):
            loop.remove_reader(self._results_in.fileno())
            if writing:
                loop.remove_writer(self._jobs_out.fileno())

    def _gone(self) -> None:
        """The process ended: the requests it had not answered hear so (their events may or
        may not be stored; sending them again with their ids is safe)."""
        self._unwatch()
        self._out.clear()
        self._read_answers(all_there=True)  # what it answered before it ended
        self._fail_pending()
        self.alive = False  # last: then another thread may start a process in its place

    def pending_events(self) -> int:
        """The events of the requests sent and not answered yet."""
        return sum(len(job.items) for job in self._pending.values())

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for job in pending.values():
            _settle(
                job,
                _unavailable(
                    "the ingest process stopped before answering: the events may not be "
                    "stored; send them again (their event ids make that safe)"
                ),
            )

    def stop(self) -> None:
        """Stop the process and close the pipes (``detach`` first): the requests written
        and the end are sent, answers read meanwhile (so that a process writing answers is
        not left waiting for a reader), within ``STOP_SECONDS`` in all; the requests still
        unanswered then hear 503. Once; again, nothing."""
        self.alive = False
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + STOP_SECONDS
        out, self._out = self._out, deque()
        out.extend(_frame(None))
        reading, wfd = self._results_in.fileno(), self._jobs_out.fileno()
        with contextlib.suppress(OSError, ValueError), selectors.DefaultSelector() as sel:
            sel.register(reading, selectors.EVENT_READ)
            sel.register(wfd, selectors.EVENT_WRITE)
            while (left := deadline - time.monotonic()) > 0:
                if not out and wfd in sel.get_map():
                    sel.unregister(wfd)
                ready = {key.fd for key, _ in sel.select(min(left, 0.5))}
                readable, writable = reading in ready, wfd in ready
                if writable:
                    try:
                        written = os.write(wfd, out[0])
                    except BlockingIOError:
                        written = 0
                    except OSError:  # the process ended: nothing more goes
                        out.clear()
                    else:
                        if written < len(out[0]):
                            out[0] = out[0][written:]
                        else:
                            out.popleft()
                if readable and not self._read_answers(all_there=True):
                    break  # the process ended
        self.process.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            log.warning("the ingest process did not stop within %.0f s: ended", STOP_SECONDS)
            self.process.kill()
            self.process.join()
        with contextlib.suppress(OSError, ValueError):
            self._read_answers(all_there=True)
        self._fail_pending()
        self._jobs_out.close()
        self._results_in.close()
        if self.scorer is not None:  # ends once the ingest process has
            self.scorer.join(timeout=5)
            if self.scorer.is_alive():
                self.scorer.kill()
                self.scorer.join()

    def detach(self) -> None:
        """No loop does the pipe I/O any more (before ``stop``, from any thread)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        if _running_loop() is loop or not loop.is_running():
            self._unwatch()
            return
        done = threading.Event()

        def off() -> None:
            self._unwatch()
            done.set()

        with contextlib.suppress(RuntimeError):  # closed meanwhile
            loop.call_soon_threadsafe(off)
            done.wait(STOP_SECONDS)


def _ended(exitcode: int | None) -> str:
    """How a process ended, by its exit code (a signal's name for one that killed it)."""
    if exitcode is None or exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    hint = ": out of memory?" if name == "SIGKILL" else ""
    return f"killed by {name}{hint}"


class _Revive:
    """For the restarting thread: start another ingest process, no request waiting."""


_REVIVE = _Revive()


class ProcessWriter:
    """Writes the events of every request in an ingest process of its own (started here, and
    again should it end; after a start that failed, requests hear 503 at once until a back-off
    of 1 s, doubling with each failure up to a minute, is over), in batches
    of up to ``max_items``. The store at ``db`` must be a file or a server: an in-memory
    database exists only in the process that opened it.

    The event loop of the requests talks to the ingest process itself (``_Child``); a thread
    of its own starts the process again when it has ended, which takes a while."""

    def __init__(
        self,
        db: str | None,
        *,
        durable: bool = True,
        cached_events: int,
        max_items: int = MAX_ITEMS,
        scoring_process: bool = True,
        inline_events: int = INLINE_EVENTS,
    ) -> None:
        # a scoring process beside it on SQLite (leadscore.service.scoring); batches of up to
        # inline_events events that find none in flight are scored without it
        scoring = scoring_process and database_url(db).startswith("sqlite")
        self._args = (db, durable, cached_events, max_items, scoring, inline_events)
        self._child = _Child(*self._args)  # fails here, at start, if the store cannot be opened
        # requests for the thread that starts the ingest process again
        self._jobs: queue.SimpleQueue[_Job | _Revive | None] = queue.SimpleQueue()
        # after a failed start of the ingest process: seconds waited, until when, and why
        self._backoff = 0.0
        self._retry_at = 0.0
        self._start_error = ""
        self._closed = False
        self._reviving = False  # a start asked of the restarting thread with no request
        self._restarter = threading.Thread(
            target=self._restart, name="leadscore-ingest-restart", daemon=True
        )
        self._restarter.start()

    @property
    def pid(self) -> int | None:
        """The ingest process's id."""
        return self._child.process.pid

    async def ingest(self, items: list[EventInput]) -> list[ItemOutcome]:
        """Store and rescore ``items``; their outcomes once they are committed."""
        job = _Job.here(items)
        if self._submit(job):
            return await job.done
        # handed to the loop of another thread, which does the pipe I/O, or to the thread
        # that starts the process: should that loop end before the job is written or
        # answered, this one takes the I/O over
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(job.done), WATCH_SECONDS)
                self._take_over(job)
        except asyncio.CancelledError:
            job.done.cancel()
            raise

    def _submit(self, job: _Job) -> bool:
        """Hand ``job`` to the ingest process (in its loop's thread): True if this loop does
        the pipe I/O (or the job is answered already); False if it went through the loop of
        another thread, or to the thread that starts a process (to be watched)."""
        job.restarting = False
        if job.sent or job.done.done():  # sent already, or given up
            return True
        if self._closed:
            _settle(job, _stopping())
            return True
        child = self._child
        if child.alive and child.bind(job.loop):
            if child.submit(job):
                return True
        elif child.alive and (there := child.loop) is not None:
            try:
                there.call_soon_threadsafe(self._submit_there, child, job)
                return False
            except RuntimeError:  # closed meanwhile: to the thread, below
                pass
        job.restarting = True
        self._jobs.put(job)
        return False

    def _submit_there(self, child: _Child, job: _Job) -> None:
        """``job`` of another loop, sent by the loop doing ``child``'s pipe I/O."""
        if job.sent or job.done.done() or job.restarting:  # taken over meanwhile, or given up
            return
        if self._closed:
            _settle(job, _stopping())
        elif not child.submit(job):
            job.restarting = True
            self._jobs.put(job)

    def _take_over(self, job: _Job) -> None:
        """``job`` waited long for another thread's loop: if that loop no longer runs, this
        one does the pipe I/O from now on (sending the job, if it was not, and reading the
        answers)."""
        if job.restarting or self._closed:  # the restarting thread has it, or none will
            if self._closed and not job.sent:
                _settle(job, _stopping())
            return
        child = self._child
        there = child.loop
        if there is not None and not there.is_closed() and there.is_running():
            return  # busy, not gone
        if not job.sent:
            self._submit(job)
        elif child.alive:
            child.bind(job.loop)

    def cache_stats(self) -> dict[str, int]:
        """The ingest process's event cache, as of its last answer."""
        return dict(self._child.stats)

    def pending_events(self) -> int:
        """The events of the requests its ingest process has not answered yet."""
        return self._child.pending_events()

    @property
    def up(self) -> bool:
        """Whether its ingest process runs (else one is to be started, or is starting)."""
        return self._child.alive

    def problem(self) -> ApiError | None:
        """What a request would hear now for want of an ingest process (the last start of one
        failed, and its back-off is not over), with the reason; None when one runs or is to
        be started."""
        wait = self._retry_at - time.monotonic()
        if self._child.alive or not self._start_error or wait <= 0:
            return None
        return _unavailable(f"the events could not be stored: {self._start_error}", wait)

    def revive(self) -> None:
        """Have the restarting thread start another ingest process now if this one has
        ended (unless a failed start's back-off is not over), with no request waiting for it:
        for a pool that sends its requests elsewhere meanwhile."""
        if not self._child.alive and not self._reviving and not self._closed:
            self._reviving = True
            self._jobs.put(_REVIVE)

    def close(self) -> None:
        self.begin_close()
        self.end_close()

    def begin_close(self) -> None:
        """Ask the ingest process to finish and stop (``end_close`` waits for it)."""
        self._closed = True
        self._child.detach()
        self._jobs.put(None)

    def end_close(self) -> None:
        self._restarter.join(timeout=STOP_SECONDS + 10)

    def _restart(self) -> None:
        # Requests that found the ingest process ended: start another (blocking, up to a
        # minute), then hand them back to their loops.
        while True:
            job = self._jobs.get()
            if isinstance(job, _Revive):
                self._reviving = False
                try:
                    self._start_if_ended()
                except Exception:
                    log.exception("starting the ingest process again failed")
                continue
            try:
                if not self._restart_for(job):
                    return
            except Exception as e:  # the request hears it; the thread goes on for the next ones
                log.exception("starting the ingest process again failed")
                if job is not None:
                    message = f"the events could not be stored: {start_failure(e)}"
                    _settle(job, _unavailable(message))

    def _restart_for(self, job: _Job | None) -> bool:
        """One request for the restarting thread (None: stop); whether to go on."""
        if job is None:
            self._child.stop()
            while True:  # requests that came in meanwhile hear that the server stops
                try:
                    late = self._jobs.get_nowait()
                except queue.Empty:
                    return False
                if isinstance(late, _Job):
                    _settle(late, _stopping())
        refused = self._start_if_ended()
        if refused is not None:
            _settle(job, refused)
            return True
        with contextlib.suppress(RuntimeError):  # its loop closed: no one waits
            job.loop.call_soon_threadsafe(self._submit, job)
        return True

    def _start_if_ended(self) -> ApiError | None:
        """Start another ingest process if the last one has ended; what a request is to hear
        if there is none (a start failed, or the back-off of the last failure is not over)."""
        if not self._child.alive:
            wait = self._retry_at - time.monotonic()
            if wait > 0:  # the last start failed: not again before its back-off is over
                message = f"the events could not be stored: {self._start_error}"
                return _unavailable(message, wait)
            code = self._child.process.exitcode
            if not self._start_error:
                log.error("the ingest process ended (exit code %s): starting another", code)
            self._child.stop()
            try:
                self._child = _Child(*self._args)
            except Exception as e:  # (a process that could not be made too: OSError)
                # each failed start waits twice as long before the next (1 s up to a
                # minute), so that requests do not start a process each
                self._backoff = min(
                    RESTART_MAX_SECONDS, max(RESTART_FIRST_SECONDS, 2 * self._backoff)
                )
                self._retry_at = time.monotonic() + self._backoff
                self._start_error = start_failure(e)
                log.error("%s (next attempt in %.0f s)", self._start_error, self._backoff)
                message = f"the events could not be stored: {self._start_error}"
                return _unavailable(message, self._backoff)
            if self._start_error:
                log.warning("the ingest process started again")
            self._backoff, self._retry_at, self._start_error = 0.0, 0.0, ""
        return None


class ProcessWriterPool:
    """Several ingest processes (a :class:`ProcessWriter` each) writing to one PostgreSQL
    database at once, for ``leadscore serve`` on PostgreSQL (two unless ``--ingest-processes``
    says otherwise).

    A transaction alternates between the ingest process's Python (reading, the evaluator)
    and PostgreSQL's work, each waiting for the other: two processes overlap them. Concurrent
    transactions are as safe as those of several servers sharing the database: a lead's rows
    are locked in lead-id order by whichever writes it first, the other waits.

    A request of more than ``SPLIT_ABOVE`` events for several leads is shared out by lead:
    each lead has a home process, the one the name its events give it hashes to (the lead
    id, else the email as leads are found by it, else the anonymous id: :func:`_name`;
    events whose names meet go together: :func:`_by_lead`), and each share goes to its
    leads' home,
    written at once with the others and answered when all are committed. So two large
    requests' transactions do not wait for each other's locks (two batches of 500 random
    leads share a few), and each process keeps (in its event cache) about its share.

    Smaller requests (single events) go to the first process, the front one, while fewer
    than ``SPLIT_ABOVE`` events wait there: its transactions then group as many requests as
    one process would (spread over two, each transaction held fewer and single events went
    slower on 2 cores). Past that (a front process that does not keep up, or that writes a
    large request's share) a request whose events all name one lead goes to its lead's home,
    any other to the process with the fewest events waiting.

    While a process has ended, requests go whole to those that run, and the ended one is
    started again at once (after the back-off of a failed start, as :class:`ProcessWriter`
    does); with none running, requests go to it all the same and hear what it hears."""

    def __init__(self, processes: int, db: str | None, **kwargs: Any) -> None:
        if processes < 2:
            raise ValueError("a pool is for two ingest processes or more")
        if database_url(db).startswith("sqlite"):
            raise ValueError("SQLite takes one writer at a time: one ingest process")
        self.writers: list[ProcessWriter] = []
        try:
            for _ in range(processes):
                self.writers.append(ProcessWriter(db, **kwargs))
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int | None]:
        """The ingest processes' ids."""
        return [w.pid for w in self.writers]

    def _up(self) -> list[ProcessWriter]:
        """The ingest processes running now (those that are not are started again)."""
        up = []
        for w in self.writers:
            if w.up:
                up.append(w)
            else:  # started again now, rather than when a request comes its way
                w.revive()
        return up

    def home(self, key: str) -> ProcessWriter:
        """The home process of the lead an event names ``key`` (see the class)."""
        return self.writers[self._home_index(key)]

    def _home_index(self, key: str | None) -> int:
        return 0 if key is None else zlib.crc32(key.encode()) % len(self.writers)

    def writer_for(self, items: Sequence[EventInput]) -> ProcessWriter:
        """The ingest process that is to write these events, all of them (see the class)."""
        up = self._up()
        front = self.writers[0]
        if front.up and front.pending_events() < SPLIT_ABOVE:
            return front
        first = items[0] if items else None
        key = None if first is None else _name(first)
        if key is not None and all(_name(it) == key for it in items):
            mine = self.home(key)
            if mine.up or not up:
                return mine
        return min(up or self.writers, key=lambda w: w.pending_events())

    def shares(self, items: Sequence[EventInput]) -> list[tuple[ProcessWriter, list[int]]]:
        """A request of more than ``SPLIT_ABOVE`` events for several leads, while every
        ingest process runs: its events shared out by lead (the indexes of each process's
        share, in the request's order). Events whose names meet (an event giving a lead id
        and an email, another the email alone) go together, to the home of the first's name.
        Otherwise one share, all of it (:meth:`writer_for`)."""
        if len(items) > SPLIT_ABOVE and len(self._up()) == len(self.writers):
            groups: dict[int, list[int]] = {}
            for key, indexes in _by_lead(items):
                groups.setdefault(self._home_index(key), []).extend(indexes)
            if len(groups) > 1:
                return [
                    (self.writers[home], sorted(share)) for home, share in sorted(groups.items())
                ]
        return [(self.writer_for(items), list(range(len(items))))]

    async def ingest(self, items: list[EventInput]) -> list[ItemOutcome]:
        """Store and rescore ``items``; their outcomes once they are committed. A request
        shared out is answered when every share has ended. Should some fail and others be
        stored, the request hears the first failure's error when every stored event has a
        message id (sent again whole, those are acknowledged as repeats: the usual retry on
        an error status, as Segment's libraries do); otherwise the failed shares' events
        are reported as errors by index (to be sent again) and the rest as stored, since
        the whole request sent again would store twice the events without message ids."""
        shares = self.shares(items)
        if len(shares) == 1:
            return await shares[0][0].ingest(items)
        results = await asyncio.gather(
            *(w.ingest([items[i] for i in share]) for w, share in shares),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if not failed:
            return _merged(shares, cast(list[list[ItemOutcome]], results))
        for error in failed:
            if not isinstance(error, Exception):  # cancelled, or the process is to end
                raise error
        log.warning(
            "ingest: %d of %d shares of a request failed: %s", len(failed), len(shares), failed[0]
        )
        stored = [
            share
            for (_, share), r in zip(shares, results, strict=True)
            if not isinstance(r, BaseException)
        ]
        if all(items[i].message_id for share in stored for i in share):
            raise failed[0]
        return _merged(
            shares,
            [
                [ItemOutcome(i, "error", error=_unstored(r)) for i in range(len(share))]
                if isinstance(r, BaseException)
                else r
                for (_, share), r in zip(shares, results, strict=True)
            ],
        )

    def problem(self) -> ApiError | None:
        """What a request would hear now when no ingest process can take it (see
        :meth:`ProcessWriter.problem`): the first one's; None while one can."""
        problems = [w.problem() for w in self.writers]
        return problems[0] if all(problems) else None

    def cache_stats(self) -> dict[str, int]:
        """The event caches of all the ingest processes, added up."""
        total: dict[str, int] = {}
        for w in self.writers:
            for key, value in w.cache_stats().items():
                total[key] = total.get(key, 0) + value
        return total

    def close(self) -> None:
        for w in self.writers:  # all asked first: they finish their transactions together
            w.begin_close()
        for w in self.writers:
            w.end_close()
