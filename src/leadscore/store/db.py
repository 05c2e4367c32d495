"""Opening a store: the database URL, SQLite's settings, migrations, read and write transactions.

A store is a SQLite file (the embedded default, in WAL mode) or a PostgreSQL database. Writes go
through :meth:`Database.write`: on SQLite they are serialised inside the process and take the
database's write lock at ``BEGIN`` (``BEGIN IMMEDIATE``), so two writers never deadlock on a lock
upgrade; on PostgreSQL they run concurrently and lock the rows they change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import pathname2url

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from leadscore.errors import StoreError, StoreUnavailable, UsageError

__all__ = [
    "ARRAYS_ABOVE",
    "DEFAULT_DB",
    "TRIGGER_ROWS",
    "Database",
    "Journal",
    "Statement",
    "Write",
    "any_of",
    "arrays_for",
    "cache_epoch",
    "connection_lost",
    "database_url",
    "driver_json",
    "driver_rows",
    "driver_sql",
    "forget_prefetched",
    "from_driver_json",
    "in_list",
    "journal_of",
    "journaled_epoch",
    "keep_for_transaction",
    "keep_prefetched",
    "kept_for_transaction",
    "on_commit",
    "open_database",
    "prefetched",
    "send_together",
    "sqlite_file",
    "start_journal",
    "write_together",
    "writers_epoch",
]

DEFAULT_DB = "leadscore.db"
# SQLite: the write-ahead log is copied into the database file (a checkpoint) by a thread of
# its own, every this many seconds after writes, instead of by whichever commit happens to
# fill the log: a writer then only appends to the log, and the copying runs beside it with the
# GIL released. A checkpoint also waits for the disk (with synchronous NORMAL, --fast-commits,
# the only waits there are): for the log before copying, for the file once all is copied.
CHECKPOINT_SECONDS = 0.2
# A writer still checkpoints itself (as SQLite does by default at 1,000 pages), its commit
# waiting for the copying and both syncs, when the log has this many pages since it last
# started over: 100 MB at 4 KiB. The log starts over only at a write transaction that finds
# it copied entirely, which under sustained writes (a checkpoint racing the writer, readers
# holding older pages) seldom happens: then this checkpoint starts it over, and finds little
# left to copy after the thread's. At 10,000 pages it came every few batches, and the copying
# and syncs it waited for cost about a tenth of the throughput of batches; with none at all
# the log grew to gigabytes and batches slowed by a quarter (docs/benchmarks.md).
WAL_AUTOCHECKPOINT = 25_000
# The log file is cut back to this size when it starts over (else it keeps the size of its
# largest burst, say a bulk import, for good); above the size the log reaches under sustained
# writes, so that it is written over rather than grown again each time (which measured
# slower).
JOURNAL_SIZE_LIMIT = 128 * 1024 * 1024
# SQLite: the page cache of the writer's connection, in KiB (SQLite's default is 2 MiB). The
# writer's transactions touch a few index pages per event all over the tables; kept in its
# own memory between transactions (no other connection writes in between, as a rule), they
# need not be read again. Readers' connections keep the default (on a file database).
WRITER_CACHE_KIB = 65_536
# SQLite: how long a writer waits for another process's write lock before giving up, and how
# often it tries for it meanwhile. SQLite's own wait (busy_timeout) sleeps up to 100 ms between
# tries: a process that wrote in chunks back to back (a whole-store rescoring, an import) kept
# the lock from the ingest process until it was done (0.4 s for 10,000 leads, minutes for a
# million). Tried every millisecond, the lock goes to the waiter in the pause such a writer
# makes between its chunks (Database.let_others_write).
BUSY_SECONDS = 30.0
LOCK_TRY_SECONDS = 0.001
LET_OTHERS_SECONDS = 0.003
CHECK_SECONDS = 5.0  # Database.check's SQLite read waits for a lock at most this long
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_WRITE = "leadscore_write"
_AFTER_COMMIT = "leadscore_after_commit"
_EPOCH = "leadscore_epoch"  # this write transaction's cache epoch
_JOURNAL = "leadscore_journal"  # its Journal
_SEEN = "leadscore_seen"  # (data_version, epoch) at this connection's last commit
_BORROWED = "leadscore_borrowed"  # a read under another process's epoch (writers_epoch)

log = logging.getLogger("leadscore.store")


def database_url(db: str | Path | None) -> str:
    """A SQLAlchemy URL from what a user typed: a URL, or a path to a SQLite file.

    >>> database_url("scores.db")
    'sqlite:///scores.db'
    >>> database_url("postgresql://postgres@127.0.0.1/test")
    'postgresql+psycopg://postgres@127.0.0.1/test'
    """
    text = str(db) if db is not None else DEFAULT_DB
    if not text.strip():  # `--db "$UNSET"`: SQLAlchemy would take a store kept in memory
        raise UsageError(
            "no store given (--db or LEADSCORE_DB is empty): give a SQLite file path or a "
            "database URL such as postgresql://user@host/db"
        )
    if "://" not in text:
        return f"sqlite:///{text}"
    scheme, rest = text.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return text


def sqlite_file(db: str | Path | None) -> Path | None:
    """The file of a SQLite store (None for another database, or SQLite kept in memory)."""
    url = database_url(db)
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return None
    return Path(url.removeprefix("sqlite:///"))


# keep_for_transaction's key for the enabled triggers (id, definition) by id, read on
# PostgreSQL with the published model versions (Store.sheets) for the trigger engine
TRIGGER_ROWS = "leadscore.trigger_rows"


def keep_for_transaction(conn: Connection, key: str, value: Any) -> None:
    """Keep ``value`` under ``key`` for the rest of the transaction under way on ``conn``
    (what one statement read for a later step of the same transaction)."""
    conn.info[key] = (conn.get_transaction(), value)


def kept_for_transaction(conn: Connection, key: str) -> Any:
    """What :func:`keep_for_transaction` kept under ``key`` in the transaction under way on
    ``conn`` (taken away), or None (none kept, or kept by an earlier transaction)."""
    kept = conn.info.pop(key, None)
    if kept is None or kept[0] is None or kept[0] is not conn.get_transaction():
        return None
    return kept[1]


def on_commit(conn: Connection, action: Callable[[], None]) -> None:
    """Run ``action`` once the :meth:`Database.write` transaction of ``conn`` has committed;
    never if it rolls back, nor for a connection outside one."""
    after = conn.info.get(_AFTER_COMMIT)
    if after is not None:
        after.append(action)


# --- statements handed to the driver as they are -------------------------------------------
# The hottest statements of ingest (a few per event) skip SQLAlchemy's compiled-statement
# machinery (parameter and result processing per row, which cost about as much as SQLite's own
# work on them) and go to the driver through ``Connection.exec_driver_sql``, which still wraps
# the driver's errors as SQLAlchemy's. They are written once with ``?`` placeholders.


def driver_sql(conn: Connection, sql: str) -> str:
    """``sql``, written with ``?`` placeholders, in the placeholder style of ``conn``'s driver
    (``?`` for sqlite3, ``%s`` for psycopg). ``sql`` holds no other ``?`` or ``%``."""
    return sql if conn.dialect.paramstyle == "qmark" else sql.replace("?", "%s")


def driver_rows(conn: Connection, sql: str, params: Any = ()) -> list[Any]:
    """The rows of a statement for the driver (see :func:`driver_sql`), as the driver gives
    them, fetched from its cursor at once: SQLAlchemy's result fetches and wraps them one by
    one (about 1.7 us a row more, on SQLite). Errors come as SQLAlchemy's, as from
    ``exec_driver_sql``, also one that SQLite meets while stepping to a later row. A
    statement read ahead in this transaction (:func:`prefetched`, :func:`keep_prefetched`)
    returns the rows read then."""
    if _PREFETCHED in conn.info:
        rows = _prefetched(conn, sql, params)
        if rows is not None:
            return rows
    result = conn.exec_driver_sql(sql, _arrays(params))
    base = conn.dialect.loaded_dbapi.Error
    try:
        return list(result.cursor.fetchall())
    except base as e:
        raise sa.exc.DBAPIError.instance(sql, params, e, base, dialect=conn.dialect) from e
    finally:
        result.close()


_PREFETCHED = "leadscore.prefetched"

Statement = tuple[str, tuple[Any, ...]]  # for the driver (driver_sql), and its parameters
Write = tuple[str, Sequence[tuple[Any, ...]]]  # a statement run for each row of parameters


@contextmanager
def prefetched(conn: Connection, statements: Iterable[Statement]) -> Iterator[None]:
    """PostgreSQL: run these reads now, all in one round trip (psycopg's pipeline mode), and
    keep their rows for :func:`driver_rows` to return, inside the block, when it is given
    the same statement and parameters (once each; what was not asked for, and what
    :func:`keep_prefetched` kept before, is forgotten at the block's end). Worth it where a
    transaction's next reads do not depend on each other's rows but each would wait for the
    database in turn (an ingest transaction after its locks: the profiles, the events, the
    current scores). The block must not write the rows read before it reads them. Elsewhere
    (SQLite, where a read is no round trip) the statements run when asked for, as without
    it. Statements kept already are not run again."""
    kept = _kept(conn)
    todo = [st for st in dict.fromkeys(statements) if kept is None or st not in kept]
    if conn.dialect.name == "postgresql" and len(todo) >= 2:
        keep_prefetched(conn, todo, send_together(conn, then=todo)[1])
    try:
        yield
    finally:
        forget_prefetched(conn)


def forget_prefetched(conn: Connection) -> None:
    """Drop what :func:`prefetched` or :func:`keep_prefetched` kept on ``conn`` (nothing on a
    connection lost meanwhile, whose info went with it: asking would raise SQLAlchemy's
    PendingRollbackError in place of the error that broke it)."""
    if not conn.invalidated:
        conn.info.pop(_PREFETCHED, None)


def keep_prefetched(
    conn: Connection, statements: Sequence[Statement], rows: Sequence[list[Any]]
) -> None:
    """Keep the ``rows`` that ``statements`` read (in this transaction, just now) for
    :func:`driver_rows`, as :func:`prefetched` does: until the end of the next
    :func:`prefetched` block of this transaction, which should follow soon, before anything
    writes what they read."""
    kept = _kept(conn)
    if kept is None:
        kept = {}
        conn.info[_PREFETCHED] = (conn.get_transaction(), kept)
    kept.update(zip(statements, rows, strict=True))


def _kept(conn: Connection) -> dict[Statement, list[Any]] | None:
    """The rows kept for this transaction (see :func:`prefetched`), if any."""
    found = conn.info.get(_PREFETCHED)
    if found is None:
        return None
    txn, kept = found
    if txn is not conn.get_transaction():  # kept by an earlier transaction
        del conn.info[_PREFETCHED]
        return None
    return kept  # type: ignore[no-any-return]


def write_together(conn: Connection, writes: Sequence[Write]) -> None:
    """Run each statement (for the driver, see :func:`driver_sql`) for each of its rows of
    parameters, as ``exec_driver_sql`` would: on PostgreSQL all in one round trip (psycopg's
    pipeline mode), where one executemany each would wait for the database in turn."""
    send_together(conn, writes=writes)


def send_together(
    conn: Connection,
    reads: Sequence[Statement] = (),
    writes: Sequence[Write] = (),
    then: Sequence[Statement] = (),
) -> tuple[list[list[Any]], list[list[Any]]]:
    """Run ``reads``, then ``writes`` (each statement for each of its rows of parameters;
    none for an empty list), then the reads of ``then``, in that order, each seeing what
    those before it did; the rows of ``reads`` and of ``then`` (an empty list for a
    statement that returns none, such as a SAVEPOINT). On PostgreSQL all in one round trip
    (psycopg's pipeline mode); elsewhere one by one, as :func:`driver_rows` and
    ``exec_driver_sql`` would."""
    todo: list[tuple[str, Any, bool]] = [(sql, params, False) for sql, params in reads]
    todo += [(sql, rows, True) for sql, rows in writes if rows]
    todo += [(sql, params, False) for sql, params in then]
    if conn.dialect.name != "postgresql" or len(todo) < 2:
        out: list[list[Any]] = []
        for sql, params, many in todo:
            if many:
                conn.exec_driver_sql(sql, list(params))
            else:
                out.append(driver_rows(conn, sql, params))
        return out[: len(reads)], out[len(reads) :]
    rows = _together(conn, todo)
    return rows[: len(reads)], rows[len(todo) - len(then) :]


def _together(conn: Connection, todo: Sequence[tuple[str, Any, bool]]) -> list[list[Any]]:
    """Statements sent in one round trip (psycopg's pipeline mode): each run once with its
    parameters and its rows returned, or (``many``) once for each row of parameters given.
    Errors come as SQLAlchemy's (naming the statements sent, their parameters hidden
    anyway). A lost connection is invalidated, and the pool replaced so that its older
    connections, which the database closed too, are not handed out again untried (what
    SQLAlchemy does for its own statements: see :func:`connection_lost`)."""
    raw: Any = conn.connection.driver_connection
    error = conn.dialect.loaded_dbapi.Error
    cursors = [raw.cursor() for _ in todo]
    try:
        with raw.pipeline():
            for cur, (sql, params, many) in zip(cursors, todo, strict=True):
                if many:
                    cur.executemany(sql, params)
                else:
                    cur.execute(sql, _arrays(params))
        return [
            list(cur.fetchall()) if not many and cur.description else []
            for cur, (_, _, many) in zip(cursors, todo, strict=True)
        ]
    except error as e:
        lost = bool(conn.dialect.is_disconnect(e, raw, None))
        if lost:
            conn.invalidate(e)
            conn.engine.dispose(close=False)
        statements = " ; ".join(dict.fromkeys(sql for sql, _, _ in todo))
        raise sa.exc.DBAPIError.instance(
            statements, (), e, error, connection_invalidated=lost, dialect=conn.dialect
        ) from e
    finally:
        for cur in cursors:
            cur.close()


def _prefetched(conn: Connection, sql: str, params: Any) -> list[Any] | None:
    kept = _kept(conn)
    if kept is None:
        return None
    try:
        return kept.pop((sql, params), None)
    except TypeError:  # parameters that are no tuple of plain values: never prefetched
        return None


def in_list(n: int) -> str:
    """``(?, ?, ...)`` with ``n`` placeholders, for ``IN``."""
    return "(" + ", ".join("?" * n) + ")"


def any_of(
    conn: Connection, column: str, values: Sequence[Any], sql_type: str = "TEXT"
) -> tuple[str, tuple[Any, ...]]:
    """A test that ``column`` holds one of ``values`` (for :func:`driver_sql`), and its
    parameters: ``column IN (?, ?, ...)`` with a parameter each, except for long lists on
    PostgreSQL (see :func:`arrays_for`): ``column = ANY(CAST(? AS TEXT[]))`` with the values
    as one array (a tuple, so that the parameters stay hashable for :func:`prefetched`; made
    a list, which psycopg sends as an array, by :func:`driver_rows` and
    :func:`send_together`)."""
    if arrays_for(conn, len(values)):
        return f"{column} = ANY(CAST(? AS {sql_type}[]))", (tuple(values),)
    return f"{column} IN {in_list(len(values))}", tuple(values)


def arrays_for(conn: Connection, n: int) -> bool:
    """Whether a statement about ``n`` values sends them as arrays, one parameter each
    (:func:`any_of`): on PostgreSQL, for more than :data:`ARRAYS_ABOVE` values. One statement
    text whatever the number, which psycopg converts once and PostgreSQL prepares after a
    few runs, where a list of 500 placeholders cost about 3 ms to convert and several to plan
    every time (a batch's mix of leads makes a new text each time). Short lists keep their
    placeholders: a few texts, prepared like any other, and planned for the values at hand;
    arrays there cost single events about a fifth of their rate (measured 2026-12-07)."""
    return n > ARRAYS_ABOVE and conn.dialect.name == "postgresql"


ARRAYS_ABOVE = 16
"""See :func:`arrays_for`."""


def _arrays(params: Any) -> Any:
    """Parameters for the driver: an array given as a tuple (see :func:`any_of`) as a list."""
    if type(params) is tuple and any(type(p) is tuple for p in params):
        return tuple(list(p) if type(p) is tuple else p for p in params)
    return params


def driver_json(value: Any) -> str:
    """A JSON column's value as the driver takes it: text, as the engine's serializer writes
    it (non-ASCII kept as is)."""
    return _ENCODE(value)


# json.dumps(value, ensure_ascii=False), without making an encoder on every call
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


def from_driver_json(value: Any) -> Any:
    """A JSON column's value as the driver returns it: text from sqlite3, decoded already
    from psycopg."""
    return json.loads(value) if isinstance(value, str | bytes) else value


# --- what a writer may keep in memory between its transactions ------------------------------
# Caches of the store's rows (the event cache) check them against the database in every
# transaction, since another process may have written. On SQLite one writer can know that no
# one else has: transactions hold the database's write lock, and ``PRAGMA data_version``
# tells whether another connection has committed since. Each Database counts *epochs*: a new
# one starts whenever a write transaction finds that another connection committed since its
# connection's last commit, and after any commit that did not keep a :class:`Journal` of its
# changes. What a cache stored during epoch N (from a write transaction) is the database's
# content for as long as the epoch is N, except what the current transaction changed, which
# its journal says.


@dataclass
class Journal:
    """The events a write transaction added to leads, and the leads whose events changed
    otherwise, for the caches to bring themselves up to date without reading the database.

    Only a transaction that starts one (:func:`start_journal`) and records in it every change
    of events it makes keeps the cache epoch when it commits."""

    # lead -> (ts_us, id, type, item, properties as text, message_id) of each event added
    events: dict[str, list[tuple[int, int, str, str | None, str, str | None]]] = field(
        default_factory=dict
    )
    dirty: set[str] = field(default_factory=set)  # events changed otherwise: read them
    # Leads whose events changed since the event cache last read them in this transaction
    # (it keeps what it reads): any left at commit end the epoch, the cache may not know.
    unseen: set[str] = field(default_factory=set)
    broken: bool = False  # an event's id is not known: trust nothing after this

    def changed(self, lead_id: str) -> None:
        """The lead's events changed other than by an added event (joined, moved)."""
        self.dirty.add(lead_id)
        self.unseen.add(lead_id)

    def added(self, lead_id: str, row: tuple[int, int, str, str | None, str, str | None]) -> None:
        self.events.setdefault(lead_id, []).append(row)
        self.unseen.add(lead_id)

    def reading(self, lead_ids: Iterable[str]) -> None:
        """The event cache reads these leads' events now (and keeps what it reads)."""
        self.unseen.difference_update(lead_ids)


def start_journal(conn: Connection) -> Journal | None:
    """Keep a journal of this write transaction (SQLite; None elsewhere, or outside one)."""
    if _EPOCH not in conn.info:
        return None
    journal = conn.info.get(_JOURNAL)
    if not isinstance(journal, Journal):
        journal = conn.info[_JOURNAL] = Journal()
    return journal


def journal_of(conn: Connection) -> Journal | None:
    """The journal of this transaction, if it keeps one."""
    journal = conn.info.get(_JOURNAL)
    return journal if isinstance(journal, Journal) else None


@contextmanager
def writers_epoch(conn: Connection, epoch: int, journal: Journal) -> Iterator[None]:
    """Inside a read transaction of another process than the writer's (the scoring process,
    leadscore.service.scoring): let the caches use ``conn`` as if it were the writer's
    transaction of cache epoch ``epoch`` whose changes ``journal`` says. Valid only when the
    writer committed that transaction before this one began (its snapshot holds the journal's
    events), and when the caches involved take epochs only from that writer. Actions given to
    :func:`on_commit` run when the block ends without an exception: what was read is
    committed already."""
    after: list[Callable[[], None]] = []
    conn.info[_EPOCH] = epoch
    conn.info[_JOURNAL] = journal
    conn.info[_AFTER_COMMIT] = after
    conn.info[_BORROWED] = True
    try:
        yield
    finally:
        for key in (_AFTER_COMMIT, _EPOCH, _JOURNAL, _BORROWED):
            conn.info.pop(key, None)
    for action in after:
        action()


def cache_epoch(conn: Connection) -> int | None:
    """The cache epoch of this write transaction (SQLite), or None: what a cache stored in
    this epoch is current, and what it stores now is stamped with it."""
    epoch = conn.info.get(_EPOCH)
    return epoch if isinstance(epoch, int) else None


def journaled_epoch(conn: Connection) -> int | None:
    """The cache epoch of a write transaction that keeps a journal (the writer's ingest
    transactions), else None. Such transactions change events, leads, scores and what follows
    from them, never a model version or a trigger: what one of epoch N read of those is current
    for every other of epoch N, with no need to ask the database again. Not for a read under
    :func:`writers_epoch`: its snapshot may hold another process's commit that the writer has
    not met yet (the writer's next transaction starts a new epoch for it)."""
    if conn.info.get(_BORROWED) or journal_of(conn) is None:
        return None
    return cache_epoch(conn)


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


class Database:
    """An engine plus the transaction helpers every store module uses."""

    def __init__(self, engine: Engine, *, durable: bool = True) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._lock = threading.Lock() if self.is_sqlite else None
        self._checkpointer: _Checkpointer | None = None
        self.epoch = 0  # see Journal
        self._writer: Connection | None = None  # SQLite: see _writer_connection
        # an in-memory database has no log to copy (and is one connection per thread)
        self._checkpoints = self.is_sqlite and not self.in_memory
        # SQLite: (device, inode) of the file the first connection opened (see check)
        self._file_id: tuple[int, int] | None = None
        if self.is_sqlite:
            _configure_sqlite(engine, durable=durable)
            _sqlite_databases.add(self)
            if not self.in_memory:  # (through a weak reference: the engine outlives no one)
                sa.event.listen(engine, "connect", _noting_file(weakref.ref(self)), once=True)

    @property
    def in_memory(self) -> bool:
        """An in-memory SQLite database: it exists only in this process."""
        return self.is_sqlite and self.engine.url.database in (None, "", ":memory:")

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that may write; committed when the block ends without an exception.
        Actions given to :func:`on_commit` inside it run after the commit (on SQLite still
        holding the process's write lock: they must not write)."""
        after: list[Callable[[], None]] = []
        if self._lock is None:
            with self.engine.begin() as conn:
                conn.info[_AFTER_COMMIT] = after
                try:
                    yield conn
                finally:
                    if not conn.invalidated:  # (a broken connection's info is gone with it)
                        conn.info.pop(_AFTER_COMMIT, None)
            self._after_commit(after)
            return
        with self._lock:
            # started before the transaction: nothing after its commit may fail the write
            if self._checkpoints and self._checkpointer is None:
                self._checkpointer = _Checkpointer(self)
            conn = self._writer_connection()
            conn.info[_AFTER_COMMIT] = after
            try:
                with conn.begin():
                    version = self._open_epoch(conn)
                    yield conn
                journal = journal_of(conn)
            except BaseException:
                # a broken connection: a new one next; in memory: one connection per thread
                if conn.invalidated or conn.closed or self.in_memory:
                    self._drop_writer()
                raise
            finally:
                for key in (_AFTER_COMMIT, _EPOCH, _JOURNAL):
                    conn.info.pop(key, None)
            if self._checkpointer is not None:
                self._checkpointer.wrote()
            try:
                # the caches brought up to date before the next writer of this process starts
                if self._after_commit(after) and version is not None:
                    self._close_epoch(conn, version, journal)
            finally:
                if self.in_memory:  # one connection per thread: not kept
                    self._drop_writer()
                elif conn.in_transaction():  # an action that ran a statement
                    try:
                        conn.rollback()
                    except Exception:  # committed all the same: a new connection next time
                        log.exception("ending a transaction after its commit failed")
                        self._drop_writer()

    def _after_commit(self, actions: list[Callable[[], None]]) -> bool:
        """Run a committed transaction's after-commit actions (cache updates). One that fails
        does not fail the write, which stands committed (its caller would take it for not
        written, and write it again): it is logged, and the caches of this process are
        trusted no more (a new epoch). Whether all ran."""
        try:
            for action in actions:
                action()
        except Exception:
            self.epoch += 1
            log.exception("updating the caches after a commit failed: they are read again")
            return False
        except BaseException:
            self.epoch += 1
            raise
        return True

    def _writer_connection(self) -> Connection:
        """SQLite: the connection every write of this Database goes through (under the write
        lock), kept open between transactions: its page cache stays warm, and its
        ``data_version`` can tell whether anyone else has written since (see Journal)."""
        if self._writer is None:
            writer = self.engine.connect().execution_options(**{_WRITE: True})
            raw = writer.connection.dbapi_connection
            assert raw is not None
            raw.cursor().execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
            # its BEGIN IMMEDIATE waits in _begin_immediate, not in SQLite's busy handler
            raw.cursor().execute("PRAGMA busy_timeout=0")
            self._writer = writer
        return self._writer

    def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError, sqlite3.Error):
                if not self.in_memory:  # set up for writing (busy_timeout 0, a larger cache):
                    writer.invalidate()  # closed, not handed to readers by the pool
                writer.close()  # in memory, its connection is the database: kept in the pool

    def _open_epoch(self, conn: Connection) -> int | None:
        """SQLite, in a write transaction (holding the write lock): start a new cache epoch
        unless this connection committed last, in a transaction whose journal says all it
        changed (see :class:`Journal`); the epoch's number, or None for an in-memory database
        (no epochs). ``PRAGMA data_version`` changes exactly when another connection (another
        process, or another connection of this one) has committed since this one last did."""
        if self.in_memory:
            return None
        version = int(conn.exec_driver_sql("PRAGMA data_version").scalar_one())
        # taken away: only a transaction that gets to _close_epoch gives it back
        if conn.info.pop(_SEEN, None) != (version, self.epoch):
            self.epoch += 1
        conn.info[_EPOCH] = self.epoch
        return version

    def end_epoch(self) -> None:
        """Start a new cache epoch at the next write transaction: for a cache that takes this
        writer's epochs elsewhere (the scoring process) and missed a journal, whatever it
        kept is to be checked against the database again."""
        self.epoch += 1

    def _close_epoch(self, conn: Connection, version: int, journal: Journal | None) -> None:
        """Committed, and the caches told: what they hold may be used in this epoch still only
        if the journal says all the transaction changed and the caches took it in."""
        if journal is None or journal.broken or journal.unseen:
            self.epoch += 1
        conn.info[_SEEN] = (version, self.epoch)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction: one consistent snapshot. (On PostgreSQL a transaction of
        repeatable read: in read committed, its default, each statement would see what had
        been committed when it started, so that a lead's profile, events and scores read by
        two statements could disagree.)"""
        with self.engine.connect() as conn:
            if not self.is_sqlite:
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def _note_file(self) -> None:
        with contextlib.suppress(OSError):
            st = os.stat(str(self.engine.url.database))
            self._file_id = (st.st_dev, st.st_ino)

    def check(self) -> None:
        """Raise if the store cannot be read now (the driver's error, or StoreUnavailable for
        a SQLite file that is not there, or not the one opened): a statement on a connection
        that works now, not one kept from before. SQLite: a connection of its own to the file
        at the store's path, since the pool's keep reading a file deleted, moved or replaced
        since they opened it (and a new one would make an empty store there); PostgreSQL: a
        pooled connection, and a new one should that one turn out closed (the server
        restarted)."""
        if self.is_sqlite:
            path = None if self.in_memory else Path(str(self.engine.url.database))
            if path is None:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar_one()
                return
            try:
                st = path.stat()
            except FileNotFoundError:
                raise StoreUnavailable(
                    f"the store's file {path} is not there (deleted or moved?)"
                ) from None
            if self._file_id not in (None, (st.st_dev, st.st_ino)):
                raise StoreUnavailable(
                    f"the store's file {path} is not the file opened at the start (moved or "
                    "deleted, and another put in its place): restart to use it"
                )
            uri = f"file:{pathname2url(str(path.resolve()))}?mode=ro"
            probe = sqlite3.connect(uri, uri=True, timeout=CHECK_SECONDS)
            try:
                probe.execute("PRAGMA schema_version").fetchone()  # reads the header
            finally:
                probe.close()
            return
        for attempt in range(2):
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1").scalar_one()
                return
            except sa.exc.DBAPIError as e:
                if attempt or not connection_lost(e):
                    raise

    def migrate(self) -> None:
        """Bring the tables up to the newest migration (creating them in an empty database)."""
        cfg = _alembic_config()
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def revision(self) -> str | None:
        """The migration the database is at (``None``: no tables yet)."""
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head(self) -> str | None:
        return ScriptDirectory.from_config(_alembic_config()).get_current_head()

    def checkpoint(self) -> bool:
        """SQLite: copy what the write-ahead log holds into the database file, as far as no
        reader still needs it (a passive checkpoint: writers are not held up). Whether all of
        it was copied."""
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            row = cursor.fetchone()
            cursor.close()
        finally:
            raw.close()
        if row is None:  # not in WAL mode: nothing to copy
            return True
        busy, pages, copied = row
        return not busy and copied >= pages

    def let_others_write(self) -> None:
        """Between the chunks of a long run of write transactions: a pause in which a writer
        of another process that waits for SQLite's write lock gets it (see
        :data:`LOCK_TRY_SECONDS`). Nothing to do on PostgreSQL, whose locks are queued."""
        if self.is_sqlite and not self.in_memory:
            time.sleep(LET_OTHERS_SECONDS)

    def dispose(self) -> None:
        """Close the connections and stop the checkpoint thread (a later write, if any, opens
        and starts them again)."""
        if self._lock is not None:
            with self._lock:  # after the write under way, if any
                checkpointer, self._checkpointer = self._checkpointer, None
                self._drop_writer()
            if checkpointer is not None:
                checkpointer.stop()
        self.engine.dispose()


def _noting_file(ref: weakref.ReferenceType[Database]) -> Callable[[Any, Any], None]:
    """The engine's first connection: its Database notes which file it opened (see
    Database.check). A listener that held the Database itself would keep it alive (and its
    checkpoint thread) for as long as SQLAlchemy keeps the engine's listeners."""

    def connected(_dbapi_conn: Any, _record: Any) -> None:
        db = ref()
        if db is not None:
            db._note_file()

    return connected


class _Checkpointer:
    """A thread that checkpoints a SQLite database every :data:`CHECKPOINT_SECONDS` after
    writes; it ends with :meth:`stop` or once the database is no longer used. (It never opens
    the database's files itself: closing any descriptor of a file drops every POSIX lock this
    process holds on it, SQLite's connections' included.)"""

    def __init__(self, db: Database) -> None:
        self._db = weakref.ref(db)
        self._stopped = threading.Event()
        self._dirty = False
        self._thread = threading.Thread(target=self._run, name="leadscore-checkpoint", daemon=True)
        self._thread.start()

    def wrote(self) -> None:
        self._dirty = True

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopped.wait(CHECKPOINT_SECONDS):
            db = self._db()
            if db is None:  # dropped without dispose
                return
            if self._dirty:
                self._dirty = False
                try:
                    if not db.checkpoint():  # written to meanwhile, or a reader held pages back
                        self._dirty = True  # again next time
                except (sa.exc.SQLAlchemyError, sqlite3.Error) as e:
                    # nothing is lost: the writers' own checkpoints (WAL_AUTOCHECKPOINT) take over
                    log.warning("checkpoint of %s failed: %s", db.url, e)
            del db


# A forked child has none of its parent's threads: its databases start checkpointers anew.
_sqlite_databases: weakref.WeakSet[Database] = weakref.WeakSet()


# The parent's writer connections in a forked child: neither used nor closed there (closing
# an inherited SQLite handle can disturb the parent's locks), so kept from the collector.
_inherited: list[Connection] = []


def _after_fork_in_child() -> None:
    for db in list(_sqlite_databases):
        db._checkpointer = None
        if db._writer is not None:
            _inherited.append(db._writer)
            db._writer = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _configure_sqlite(engine: Engine, *, durable: bool) -> None:
    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own handling
        # would start transactions late and as DEFERRED).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the API acknowledges. NORMAL survives a killed
        # process but not a power cut.
        cur.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        cur.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
        cur.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
        # the lead search's lower() for every letter, not only ASCII ones (SQLite's)
        dbapi_conn.create_function("leadscore_lower", 1, _lower, deterministic=True)

    @sa.event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE, False):
            _begin_immediate(conn)
        else:
            conn.exec_driver_sql("BEGIN")


def _begin_immediate(conn: Connection) -> None:
    """Take the write lock (the writer's connection, whose ``busy_timeout`` is 0), trying
    every :data:`LOCK_TRY_SECONDS` while another process holds it, for :data:`BUSY_SECONDS`
    at most (then the error is SQLite's "database is locked")."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    deadline = time.monotonic() + BUSY_SECONDS
    while time.monotonic() < deadline:
        try:
            raw.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.Error as e:
            if getattr(e, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:
                break  # raised below, as SQLAlchemy raises (and handles) errors
        time.sleep(LOCK_TRY_SECONDS)
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _commit_without_waiting(dbapi_connection: Any, _record: Any) -> None:
    """PostgreSQL, ``durable=False``: a commit returns before the server has flushed its log
    to disk (which it does within a few hundred milliseconds). As with SQLite's synchronous
    NORMAL, what a crash of the machine (here also of the database server) may lose is the
    last moments' commits. Set on each new connection, leaving the URL's and the
    environment's own options (PGOPTIONS) as they are."""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")
    dbapi_connection.autocommit = autocommit


# PostgreSQL: a pooled connection idle for this long is tried (a round trip) before it is
# handed out, so that one the server closed meanwhile (a restart, an idle timeout) is replaced
# instead of failing its next transaction. One in use more recently is not: under load every
# transaction would otherwise pay a round trip for it (one in 17 of a single event's).
PING_AFTER_IDLE_SECONDS = 1.0
_RETURNED = "leadscore.returned"


def _returned(_dbapi_connection: Any, record: Any) -> None:
    record.info[_RETURNED] = time.monotonic()


def _ping_if_idle(engine: Engine) -> Callable[[Any, Any, Any], None]:
    dialect = engine.dialect

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get(_RETURNED)
        if returned is not None and time.monotonic() - returned < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as e:
            if not dialect.is_disconnect(e, dbapi_connection, None):
                raise
            # as pool_pre_ping does: this connection and every older one in the pool are
            # replaced (a server restart closed them all), and the pool tries a new one
            raise sa.exc.InvalidatePoolError(f"a pooled connection is gone: {e}") from e

    return checkout


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` is a statement's failure because the database closed the connection
    (PostgreSQL restarted, say): the pool has replaced it; the transaction did not commit,
    unless the connection broke during the commit itself (its outcome is then unknown)."""
    return isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated


def open_database(
    db: str | Path | None = None,
    *,
    migrate: bool = True,
    durable: bool = True,
    create: bool = True,
) -> Database:
    """Open (and by default create or upgrade) the store at ``db`` (a URL or a SQLite path).
    Without ``create``, a SQLite file that is not there is StoreUnavailable: a server's
    processes open the store its start made, and one deleted meanwhile is not made anew."""
    url = database_url(db)
    path = None if create else sqlite_file(db)
    if path is not None and not path.exists():
        raise StoreUnavailable(f"the store's file {path} is not there (deleted or moved?)")
    try:
        engine = sa.create_engine(
            url,
            # PostgreSQL: tried only after an idle spell (_ping_if_idle); SQLite: no server
            pool_pre_ping=not url.startswith(("sqlite", "postgresql")),
            # An error's text (logged, recorded with a trigger firing) never carries the
            # statement's values: profiles, webhook URLs and secrets.
            hide_parameters=True,
            # Non-ASCII text kept as is (not \u-escaped), so that filters and search on
            # SQLite see "München" as PostgreSQL does.
            json_serializer=driver_json,
        )
    except (sa.exc.ArgumentError, ImportError) as e:
        raise StoreError(f"cannot open the store {db!s}: {e}") from None
    if engine.dialect.name == "postgresql":
        sa.event.listen(engine, "connect", _returned)  # just opened: no need to try it
        sa.event.listen(engine, "checkin", _returned)
        sa.event.listen(engine, "checkout", _ping_if_idle(engine))
        if not durable:
            sa.event.listen(engine, "connect", _commit_without_waiting)
    database = Database(engine, durable=durable)
    if migrate:
        try:
            database.migrate()
        except sa.exc.OperationalError as e:
            raise StoreError(f"cannot open the store {database.url}: {e.orig}") from None
    return database
