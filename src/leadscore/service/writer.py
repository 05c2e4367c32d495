"""Group commit for ingest: events from concurrent requests share one store transaction.

Each request hands its events to :class:`IngestWriter` and waits; a writer thread takes
everything waiting, stores and rescores it in one transaction (each lead rescored once, one
commit, one disk flush), and answers every request with its own items' outcomes. A request is
still answered only after its events are committed. Under load this turns hundreds of small
transactions into a few large ones; with a single request waiting it costs nothing extra.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from leadscore.errors import LeadscoreError
from leadscore.store import EventInput, ItemOutcome, Store

__all__ = ["IngestWriter"]

log = logging.getLogger("leadscore.service")


@dataclass
class _Job:
    items: list[EventInput]
    done: Future[list[ItemOutcome]] = field(default_factory=Future)


class IngestWriter:
    """One thread writing the events of every request, in batches of up to ``max_items``."""

    def __init__(self, store: Store, max_items: int = 2000) -> None:
        self.store = store
        self.max_items = max_items
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="leadscore-ingest", daemon=True)
        self._thread.start()

    async def ingest(self, items: list[EventInput]) -> list[ItemOutcome]:
        """Store and rescore ``items``; their outcomes once they are committed."""
        job = _Job(items)
        self._jobs.put(job)
        return await asyncio.wrap_future(job.done)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

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
                self._write(jobs)

    def _write(self, jobs: list[_Job]) -> None:
        merged = [item for job in jobs for item in job.items]
        try:
            outcomes = self.store.ingest_events(merged)
        except Exception as e:
            if len(jobs) == 1:
                if isinstance(e, LeadscoreError):  # the request's to hear (a 409: send again)
                    jobs[0].done.set_exception(e)
                    return
                log.exception("ingest failed")
                jobs[0].done.set_exception(RuntimeError("the events could not be stored"))
                return
            # one request's events broke the shared transaction: write each on its own, so
            # the others are not refused for it
            for job in jobs:
                self._write([job])
            return
        start = 0
        for job in jobs:
            mine = outcomes[start : start + len(job.items)]
            for o in mine:
                o.index -= start
            start += len(job.items)
            job.done.set_result(mine)
