"""Rescorings of the whole store, in a process of their own.

Rescoring every lead (the scheduled rescoring, ``POST /api/v1/rescore``, publishing a model) is
seconds to minutes of work in Python. In a thread of the HTTP process it held the interpreter
lock against the requests being served meanwhile (a 10,000-lead store rescored every 4 s took
single-event POSTs from a p99 of 7 ms to 25 ms; docs/operations.md). A server that opened its
store itself (a SQLite file or a PostgreSQL database) runs them in a child process instead, as
``leadscore rescore`` run beside it would; the child sends the report back, or the error to
answer with. A store handed to :func:`leadscore.service.create_app` (tests, the demo, a store in
memory) is rescored in the calling thread, as before.

When the service stops, a child under way is ended (what it committed, chunk by chunk, stays;
the next rescoring does the rest), as soon as the server begins to stop (Ctrl-C: see
:mod:`leadscore.service.serving`); a rescoring in the calling thread ends at its next step;
a child whose server is gone (killed) ends itself.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection as Pipe
from typing import Any, TypeVar

from leadscore.errors import LeadscoreError, StoreError
from leadscore.service.writer import with_triggers
from leadscore.store import RescoreReport, Store, open_store

__all__ = ["Rescorer", "Stopped"]

log = logging.getLogger("leadscore.service")

POLL_SECONDS = 0.5  # how often a wait for the child looks at whether it is still there
EXIT_SECONDS = 10.0  # for the child to exit once it has answered
ORPHAN_SECONDS = 1.0  # how often the child looks at whether its server is still there


class Stopped(Exception):
    """The service stopped while a rescoring ran: the child was ended (what it committed,
    chunk by chunk, stays; the next rescoring does the rest)."""


class Rescorer:
    """Whole-store rescorings of a service's store: in a child process that opens ``db``
    itself when ``apart``, else in the calling thread with ``store``. Setting ``stop`` (the
    service's) ends a child under way: its caller hears :class:`Stopped`."""

    def __init__(
        self,
        store: Store,
        db: str | None,
        *,
        durable: bool,
        apart: bool,
        stop: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.db = db
        self.durable = durable
        self.apart = apart
        self.stop = stop
        # what each rescoring running now does, and what ending it leaves
        self._under_way: dict[int, tuple[str, str]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def under_way(self) -> list[tuple[str, str]]:
        """What the rescorings running now do, and what ending one would leave, as a person
        would say them."""
        with self._lock:
            return list(self._under_way.values())

    @contextlib.contextmanager
    def _doing(self, what: str, left: str) -> Iterator[None]:
        key = next(self._ids)
        with self._lock:
            self._under_way[key] = (what, left)
        try:
            yield
        finally:
            with self._lock:
                del self._under_way[key]

    def _stopping(self, _what: str, _done: int, _total: int) -> None:
        """In the calling thread: a rescoring's progress, ended (:class:`Stopped`) between two
        of its steps once the service stops."""
        if self.stop is not None and self.stop.is_set():
            raise Stopped

    def rescore(self, reason: str = "decay", *, fire_triggers: bool = True) -> RescoreReport:
        """Bring every lead's score up to now (:meth:`Store.rescore_all`)."""
        left = "what it wrote stays, and the next rescoring brings the rest up to date"
        with self._doing(f"a rescoring of every lead ({reason})", left):
            if not self.apart:
                return self.store.rescore_all(
                    reason, fire_triggers=fire_triggers, progress=self._stopping
                )
            return self._in_child("rescore", {"reason": reason, "fire_triggers": fire_triggers})

    def publish(
        self, name: str, version: int | None = None, *, fire_triggers: bool = False
    ) -> RescoreReport:
        """Make a version active and rescore every lead with it (:meth:`Store.publish`)."""
        what = f"{name} version {version}" if version is not None else f"{name}'s newest version"
        left = (
            "the version is active, and the leads it did not reach keep their scores of the "
            "version before until the next rescoring of every lead (at the server's next "
            "start with its schedule on, or `leadscore rescore`)"
        )
        with self._doing(f"the publish of {what}", left):
            if not self.apart:
                return self.store.publish(
                    name, version, fire_triggers=fire_triggers, progress=self._stopping
                )
            try:
                return self._in_child(
                    "publish", {"name": name, "version": version, "fire_triggers": fire_triggers}
                )
            finally:
                self.store.forget_sheets()  # this process shows the version at once

    def _in_child(self, action: str, kwargs: dict[str, Any]) -> RescoreReport:
        ctx = multiprocessing.get_context("spawn")
        receiver, sender = ctx.Pipe(duplex=False)
        child = ctx.Process(
            target=child_main,
            args=(sender, self.db, self.durable, action, kwargs, os.getpid()),
            name=f"leadscore-{action}",
            daemon=True,
        )
        try:
            child.start()
            sender.close()  # the child's end: EOF here once the child is gone
            answer = _wait(receiver, child, self.stop)
        finally:
            sender.close()
            receiver.close()
            if child.pid is not None:  # started
                child.join(EXIT_SECONDS)
                if child.is_alive():
                    child.kill()
                    child.join()
        kind, payload = answer
        if kind == "ok" and isinstance(payload, RescoreReport):
            return payload
        if isinstance(payload, BaseException):
            raise payload
        raise RuntimeError(f"the rescoring process answered {answer!r}")


def _wait(
    receiver: Pipe, child: multiprocessing.process.BaseProcess, stop: threading.Event | None
) -> tuple[str, Any]:
    while True:
        if stop is not None and stop.is_set():
            child.terminate()
            raise Stopped
        try:
            if receiver.poll(POLL_SECONDS):
                answer = receiver.recv()
                if isinstance(answer, tuple) and len(answer) == 2:
                    return answer
                raise RuntimeError(f"the rescoring process answered {answer!r}")
        except EOFError:  # it ended without an answer
            child.join(EXIT_SECONDS)
            raise StoreError(  # a LeadscoreError: the API's 500 says this, not its type
                f"the rescoring process ended without finishing (exit code {child.exitcode}); "
                "what it committed stays, and the next rescoring does the rest"
            ) from None


def child_main(
    out: Pipe, db: str | None, durable: bool, action: str, kwargs: dict[str, Any], server: int
) -> None:
    """The child: open the store, rescore (score changes go to the triggers, as in the
    server), send back the report or the error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's to handle: it ends this one
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: rescoring: %(message)s")
    threading.Thread(target=_end_with, args=(server,), name="leadscore-orphan", daemon=True).start()
    answer: tuple[str, Any]
    try:
        store = open_store(db, durable=durable, cached_events=0, create=False)
        try:
            with_triggers(store)
            publish = action == "publish"
            report = store.publish(**kwargs) if publish else store.rescore_all(**kwargs)
        finally:
            store.db.dispose()
        answer = ("ok", report)
    except LeadscoreError as e:
        answer = ("error", _portable(e))
    except Exception as e:
        log.exception("%s failed", action)
        answer = ("error", _noted(RuntimeError(f"{action} failed: {type(e).__name__}: {e}"), e))
    try:
        out.send(answer)
    except OSError:  # the server is gone
        pass
    except Exception as e:  # the answer does not pickle: say so rather than nothing
        log.exception("sending the %s answer failed", action)
        with contextlib.suppress(Exception):
            out.send(("error", RuntimeError(f"{action}: its answer could not be sent: {e}")))
    out.close()


def _end_with(server: int) -> None:
    """In the child: exit at once when the server process is gone (killed: nothing asked
    this one to stop), rather than go on writing beside a server started anew."""
    while os.getppid() == server:
        time.sleep(ORPHAN_SECONDS)
    os._exit(1)


E = TypeVar("E", bound=BaseException)


def _noted(error: E, source: BaseException) -> E:
    """``error`` with the notes of ``source`` (what a publish that stopped part way left:
    Store.publish)."""
    for note in getattr(source, "__notes__", ()):
        error.add_note(note)
    return error


def _portable(e: LeadscoreError) -> LeadscoreError:
    """``e``, or a StoreError with its message (and notes) when ``e`` does not survive
    pickling as it is (an error with fields of its own)."""
    try:
        copy = pickle.loads(pickle.dumps(e))
    except Exception:
        return _noted(StoreError(str(e)), e)
    if type(copy) is not type(e) or str(copy) != str(e) or copy.__dict__ != e.__dict__:
        return _noted(StoreError(str(e)), e)
    return copy
