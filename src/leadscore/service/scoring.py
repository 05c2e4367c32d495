"""The scoring process: rescoring after ingest on a core of its own (SQLite stores).

In batches, the ingest process used one core while the HTTP process stayed mostly idle: about
half of its time went to reading leads' events and evaluating them, the other half to the
database (storing events, writing scores and history, committing). With a scoring process
beside it, the ingest process works in two transactions per batch
(:mod:`leadscore.store.deferred`): it stores a batch's events and commits, hands the batch's
leads to the scoring process, stores the next batch meanwhile, then writes the first batch's
scores and answers its requests. The scoring process keeps the event cache (and reads it
ahead after a start, as the ingest process does without it).

Should the scoring process fail or end, the ingest process rescores on its own, as without
it; a batch whose scores it cannot trust (something else wrote in between) is rescored by the
ingest process too.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
from multiprocessing.connection import Connection as Pipe
from typing import Any

from leadscore.errors import LeadscoreError
from leadscore.service.survivors import collect_rarely, freeze_survivors
from leadscore.store import Store, open_store
from leadscore.store.deferred import Scored, ScoreJob, score_job
from leadscore.store.eventcache import Preloader

__all__ = ["ScorerLink", "preload", "scoring_process"]

log = logging.getLogger("leadscore.service")

START_SECONDS = 30.0  # for the scoring process to open the store (the server waits 60 s)
# for it to score a batch; after that the ingest process stops using it and scores on its own
ANSWER_SECONDS = 60.0


def preload(store: Store, preloader: Preloader, epoch: int | None = None) -> None:
    """One step of warming the event cache (of the writer's cache ``epoch``, see
    :meth:`leadscore.store.eventcache.EventCache.load`); should it fail, the cache fills as
    leads are rescored, as without it."""
    try:
        more = store.preload_step(preloader, epoch)
    except Exception:
        log.exception("reading events ahead into the cache failed; it goes on without")
        more = False
    if not more:
        preloader.done = True


def scoring_process(pipe: Pipe, db: str | None, durable: bool, cached: int) -> None:
    """The scoring process: once the ingest process has opened the store (and brought it up
    to date), open it too, then score the jobs the ingest process sends until it sends
    ``None`` or goes away. Between jobs, the events of the most recently active leads are
    read into the cache.

    What it reads ahead is stamped with the writer's cache epoch as last heard (with "open",
    then each job's), so that a lead's first rescoring uses it without asking the database
    again while the epoch lasts. That holds because each read-ahead snapshot comes after the
    commit this epoch was heard with, and the journal of every commit of the writer after
    that one reaches this process with a job (:attr:`ScoreJob.earlier`, the job's own) unless
    the epoch ends first: the lists then grow by what they do not hold yet
    (:meth:`EventCache.take`), or a new epoch leaves them to be checked. A job that fails may
    not have taken its journal in: the process then drops every list it kept."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's to handle (see the writer)
    collect_rarely()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: scoring process: %(message)s")
    try:
        opening = pipe.recv()
    except (EOFError, OSError):  # the ingest process did not get that far
        return
    if not (isinstance(opening, tuple) and opening[0] == "open"):
        return
    epoch: int | None = opening[1]
    try:
        store = open_store(db, durable=durable, cached_events=cached, create=False)
    except LeadscoreError as e:
        pipe.send(("failed", str(e), {}))
        return
    # Answers go out from a thread of their own, so that this process always reads the next
    # job: were both processes sending a message larger than the pipe's buffer at once (a
    # job, an answer), each would wait for the other to read.
    answers: queue.SimpleQueue[tuple[str, Any, dict[str, int]] | None] = queue.SimpleQueue()
    sender = threading.Thread(target=_send_answers, args=(pipe, answers), daemon=True)
    sender.start()
    try:
        answers.put(("ready", None, store.event_cache.stats()))
        preloader = Preloader(store.event_cache)
        frozen = False
        while True:
            while not preloader.done and not pipe.poll():
                preload(store, preloader, epoch)
            if preloader.done and not frozen:  # the modules, the store, the events read ahead
                freeze_survivors()
                frozen = True
            try:
                job = pipe.recv()
            except (EOFError, OSError):  # the ingest process is gone
                break
            if job is None:
                break
            try:
                answers.put(("ok", score_job(store, job), store.event_cache.stats()))
                epoch = job.epoch
            except Exception:
                log.exception("scoring failed; the ingest process rescores these leads itself")
                # The job's journal may not have been taken in, and the next job (already
                # sent, of the same epoch: the ingest process ends the epoch only when it
                # hears of this failure) would trust lists that lack its events. Its scores
                # would not be written, but nothing kept is to be trusted any more.
                store.event_cache.clear()
                store.profile_cache.clear()
                epoch = None
                answers.put(("error", job.seq, store.event_cache.stats()))
    finally:
        answers.put(None)
        sender.join(timeout=5)
        store.db.dispose()


def _send_answers(
    pipe: Pipe, answers: queue.SimpleQueue[tuple[str, Any, dict[str, int]] | None]
) -> None:
    while (answer := answers.get()) is not None:
        try:
            pipe.send(answer)
        except OSError:  # the ingest process is gone
            return


class ScorerLink:
    """The ingest process's end of the pipe to the scoring process."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.alive = False
        self.stats: dict[str, int] = {}

    def start(self, epoch: int | None) -> bool:
        """Let the scoring process open the store (this process has opened it: any migration
        is done) and wait for it; whether it did. ``epoch``: this process's cache epoch after
        its last commit (None: unknown), for what the scoring process reads ahead."""
        try:
            self.pipe.send(("open", epoch))
            if not self.pipe.poll(START_SECONDS):
                log.error("the scoring process did not start within %.0f s", START_SECONDS)
                return False
            kind, detail, stats = self.pipe.recv()
        except (EOFError, OSError):
            log.error("the scoring process stopped while starting")
            return False
        if kind != "ready":
            log.error("the scoring process could not open the store: %s", detail)
            return False
        self.stats = stats
        self.alive = True
        return True

    def send(self, job: ScoreJob) -> None:
        try:
            self.pipe.send(job)
        except OSError:
            self._lost()

    def receive(self, seq: int) -> Scored | None:
        """The answer to job ``seq`` (the next one due); None if the scoring process failed
        to score it or is gone."""
        if not self.alive:
            return None
        try:
            if not self.pipe.poll(ANSWER_SECONDS):
                log.error("the scoring process did not answer within %.0f s", ANSWER_SECONDS)
                self.stop()
                return None
            kind, payload, stats = self.pipe.recv()
        except (EOFError, OSError):
            self._lost()
            return None
        self.stats = stats
        if kind == "ok" and isinstance(payload, Scored) and payload.seq == seq:
            return payload
        if kind == "ok" or payload != seq:  # out of step: trust nothing more from it
            log.error("the scoring process answered out of turn: no longer used")
            self.stop()
        return None

    def stop(self) -> None:
        """Ask the scoring process to end (it exits when the pipe closes, too)."""
        if self.alive:
            with contextlib.suppress(OSError):
                self.pipe.send(None)
        self.alive = False
        self.pipe.close()

    def _lost(self) -> None:
        if self.alive:
            log.error("the scoring process ended: the ingest process rescores on its own")
        self.alive = False
