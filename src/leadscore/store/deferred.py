"""Ingest in two transactions, with the scoring in between done by another process.

:meth:`Store.ingest_events` stores events and rescores their leads in one transaction, on one
core. The ingest process of ``leadscore serve`` on SQLite splits that work (see
:mod:`leadscore.service.scoring`): :func:`store_events` stores a batch's events and commits;
a scoring process reads the leads' profiles and events (its own event cache, kept current by
the batch's journal) and evaluates them, while this process stores the next batch;
:func:`write_scored` then writes the scores, history rows and trigger firings in a second
transaction (:func:`write_scored_and_store`: the one that stores the next batch, when one is
waiting), and only after that commit are the requests answered. So a score is readable
when its request is acknowledged, as before, and the writer's core spends its time on the
database.

Scores computed by the scoring process are written only when nothing but this writer has
committed since the batch's events were (its cache epoch is the same: no profile update, model
publish, merge or other writer came in between) and with the sheets still active; otherwise
the batch's leads are rescored here, in the second transaction, as :meth:`Store.ingest_events`
would.

A large batch is scored and written in parts (:meth:`Stored.parts`): the scores of one part
are written, in a transaction of their own, while the scoring process scores the next; the
requests are answered once the last part is written.

Should the process end between the transactions, the events are stored and their leads'
scores not (all) rewritten: two counters record the newest event id stored for scoring and
the newest whose leads were scored (moved on by the last part only), and :func:`settle` (run
when the ingest process starts) rescores the leads of the events in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from leadscore.store.db import (
    Journal,
    cache_epoch,
    driver_sql,
    in_list,
    start_journal,
    writers_epoch,
)
from leadscore.store.keeper import Store
from leadscore.store.leads import EventInput, ItemOutcome, insert_events, newest_event_id
from leadscore.store.scores import NewScore, write_scores

__all__ = [
    "ALONE_EVENTS",
    "Earlier",
    "ScoreJob",
    "Scored",
    "Stored",
    "score_job",
    "settle",
    "store_and_score",
    "store_events",
    "write_scored",
    "write_scored_and_store",
]

# counters: the newest event id stored by store_events, the newest whose leads write_scored
# (or settle) rescored; any in between await their rescoring
STORED_TO = "deferred_stored_to"
SCORED_TO = "deferred_scored_to"

# (ts_us, id, type, item, properties as text, message_id): an event a batch added to a lead
Row = tuple[int, int, str, str | None, str, str | None]


@dataclass(frozen=True)
class Earlier:
    """The journal of a transaction the ingest process stored and scored on its own
    (:func:`store_and_score`), for the scoring process to take in before its next job."""

    epoch: int
    added: dict[str, list[Row]]
    dirty: frozenset[str]


@dataclass(frozen=True)
class ScoreJob:
    """What the scoring process needs to score a stored batch's leads: the leads, the as-of,
    and the writer's journal of the transaction that stored the events (and of those it
    wrote on its own since the last job, oldest first)."""

    seq: int
    leads: list[str]
    now_us: int
    epoch: int
    added: dict[str, list[Row]]
    dirty: frozenset[str]
    broken: bool
    earlier: tuple[Earlier, ...] = ()


@dataclass
class Stored:
    """A batch whose events are committed and whose leads await their scores."""

    outcomes: list[ItemOutcome]
    leads: list[str]  # sorted
    now_us: int
    epoch: int | None  # the writer's cache epoch when it stored them (None: no epochs)
    newest_id: int  # the newest event id at that commit
    added: dict[str, list[Row]] = field(default_factory=dict)
    dirty: frozenset[str] = frozenset()
    broken: bool = True
    scored: bool = False  # its leads rescored in the same transaction (store_and_score)
    # the last (or only) part of its batch (see parts): writing its scores records the
    # batch's events as scored (SCORED_TO)
    final: bool = True

    def parts(self, size: int) -> list[Stored]:
        """The batch in parts of about ``size`` leads (just itself when it has at most one
        and a half times as many), for the scoring process to score and the writer to write
        one after the other: the first parts' scores are written while the scoring process
        scores the next. Each part holds its leads' share of the journal (a lead's events
        are in no other part) and the batch's outcomes go with the last, which alone is
        ``final``."""
        n = -(-len(self.leads) // size)
        if n <= 1 or len(self.leads) * 2 <= size * 3:
            return [self]
        out: list[Stored] = []
        start = 0
        for i in range(n):
            end = len(self.leads) * (i + 1) // n
            leads = self.leads[start:end]
            start = end
            mine = set(leads)
            out.append(
                Stored(
                    self.outcomes if i == n - 1 else [],
                    leads,
                    self.now_us,
                    self.epoch,
                    self.newest_id,
                    {lid: rows for lid, rows in self.added.items() if lid in mine},
                    self.dirty & mine,
                    self.broken,
                    final=i == n - 1,
                )
            )
        # a journal's leads are all the batch's (else the epoch ends, see _store): any other
        # goes with the first part all the same
        placed = {lid for part in out for lid in part.leads}
        out[0].added.update((k, v) for k, v in self.added.items() if k not in placed)
        out[0].dirty = out[0].dirty | (self.dirty - placed)
        return out

    def job(self, seq: int, earlier: Sequence[Earlier] = ()) -> ScoreJob:
        """The scoring process's job; ``earlier``: the journals of transactions written
        without it since its last job (those of another epoch are of no use to it)."""
        assert self.epoch is not None
        return ScoreJob(
            seq,
            self.leads,
            self.now_us,
            self.epoch,
            self.added,
            self.dirty,
            self.broken,
            tuple(e for e in earlier if e.epoch == self.epoch),
        )

    def earlier(self) -> Earlier | None:
        """Its journal, for the scoring process to take in later (None: nothing to take, or
        a journal that does not say all the transaction changed, which ends the epoch)."""
        if self.epoch is None or self.broken or not (self.added or self.dirty):
            return None
        return Earlier(self.epoch, self.added, self.dirty)


@dataclass(frozen=True)
class Scored:
    """The scoring process's answer: the scores, and the model versions it used."""

    seq: int
    versions: tuple[int, ...]
    scores: list[NewScore]


def store_events(store: Store, items: Sequence[EventInput]) -> Stored:
    """Store events (as :meth:`Store.ingest_events`, repeats acknowledged) and commit, without
    rescoring; the leads to rescore and the journal the scoring process needs. Only for a
    writer whose event cache keeps nothing (``cached_events=0``): the scoring process keeps the
    leads' events, and this transaction does not tell this process's cache about them."""
    assert store.event_cache.max_events == 0
    with store.db.write() as conn:
        return _store(conn, store, items)


# store_and_score rescores here leads with at most this many events in all: it reads them
# from the database (about 3 us an event), where the scoring process keeps them in memory
ALONE_EVENTS = 500


def store_and_score(store: Store, items: Sequence[EventInput]) -> Stored:
    """Store events and rescore their leads here, in one transaction (as
    :meth:`Store.ingest_events`), for a batch too small to be worth a trip to the scoring
    process: unless its leads have more than :data:`ALONE_EVENTS` events in all, in which case
    only the events are stored (as :func:`store_events`; ``Stored.scored`` is False) and
    the scoring process is to score them. The journal of a transaction that scored
    (:meth:`Stored.earlier`) goes to the scoring process with its next job, so that the lists
    it keeps stay current through this writer's epoch."""
    assert store.event_cache.max_events == 0
    with store.db.write() as conn:
        stored = _store(conn, store, items)
        if stored.leads and _events_of(conn, stored.leads) <= ALONE_EVENTS:
            store.rescore_leads(conn, stored.leads, "event", stored.now_us)
            _set(conn, SCORED_TO, stored.newest_id)
            stored.scored = True
    return stored


def _events_of(conn: Connection, lead_ids: Sequence[str]) -> int:
    """How many events these leads have (from the index on lead and time)."""
    q = driver_sql(conn, f"SELECT count(*) FROM events WHERE lead_id IN {in_list(len(lead_ids))}")
    return int(conn.exec_driver_sql(q, tuple(lead_ids)).scalar_one())


def _store(conn: Connection, store: Store, items: Sequence[EventInput]) -> Stored:
    journal = start_journal(conn)
    epoch = cache_epoch(conn)
    now = store.clock()
    outcomes, touched = insert_events(conn, items, now)
    leads = sorted(touched)
    newest = newest_event_id(conn)
    if journal is not None:
        # the scoring process takes these in (this process keeps no lists to update), so
        # the epoch goes on after this commit
        journal.reading(leads)
    if leads:
        _set(conn, STORED_TO, newest)
    if journal is None or epoch is None:
        return Stored(outcomes, leads, now, None, newest)
    return Stored(
        outcomes,
        leads,
        now,
        epoch,
        newest,
        {lid: list(rows) for lid, rows in journal.events.items()},
        frozenset(journal.dirty),
        journal.broken,
    )


def score_job(store: Store, job: ScoreJob) -> Scored:
    """In the scoring process: the new scores of a stored batch's leads, from a snapshot taken
    after the batch's commit. Its event cache takes the writer's epochs and journals (see
    :func:`leadscore.store.db.writers_epoch`): a lead kept since the writer's epoch began is
    served from memory plus the events the batch added to it."""
    for e in job.earlier:
        store.event_cache.take(e.epoch, e.added, e.dirty)
        store.profile_cache.take(e.epoch, e.dirty)
    new: list[NewScore] = []
    with store.db.read() as conn:
        sheets = store.sheets(conn, check=True)
        if sheets and job.leads:
            journal = Journal(events=dict(job.added), dirty=set(job.dirty), broken=job.broken)
            with writers_epoch(conn, job.epoch, journal):
                new = store.new_scores(conn, sheets, job.leads, job.now_us)
    return Scored(job.seq, tuple(s.version.id for s in sheets), new)


def write_scored(store: Store, stored: Stored, scored: Scored | None) -> bool:
    """Write a stored batch's scores in a transaction of their own: ``scored``'s when they
    still hold (see the module's docstring), else rescored here (also when ``scored`` is
    None: the scoring process failed). Whether ``scored``'s were written."""
    with store.db.write() as conn:
        start_journal(conn)  # changes no events: this writer's epoch goes on
        return _write(conn, store, stored, scored)


def write_scored_and_store(
    store: Store, stored: Stored, scored: Scored | None, items: Sequence[EventInput]
) -> tuple[bool, Stored]:
    """:func:`write_scored` and :func:`store_events` of the next batch in one transaction (one
    commit instead of two)."""
    assert store.event_cache.max_events == 0
    with store.db.write() as conn:
        start_journal(conn)
        used = _write(conn, store, stored, scored)
        return used, _store(conn, store, items)


def _write(conn: Connection, store: Store, stored: Stored, scored: Scored | None) -> bool:
    if not stored.leads:
        return False
    sheets = store.sheets(conn, check=True)
    used = (
        scored is not None
        and stored.epoch is not None
        and cache_epoch(conn) == stored.epoch
        and scored.versions == tuple(s.version.id for s in sheets)
    )
    if used:
        assert scored is not None
        changes = write_scores(conn, scored.scores, "event", stored.now_us)
        if store.listener is not None and changes:
            store.listener(conn, changes, stored.now_us, True)
    else:
        store.rescore_leads(conn, stored.leads, "event", stored.now_us)
    if stored.final:
        _set(conn, SCORED_TO, stored.newest_id)
    return used


def settle(store: Store) -> int:
    """Rescore the leads of events stored for scoring whose scores were never written (the
    process ended in between); how many leads. Run before any other write of the process."""
    with store.db.write() as conn:
        stored_to, scored_to = _get(conn, STORED_TO), _get(conn, SCORED_TO)
        if stored_to is None or (scored_to is not None and scored_to >= stored_to):
            return 0
        lead_ids = [
            str(lid)
            for (lid,) in conn.exec_driver_sql(
                driver_sql(
                    conn,
                    "SELECT DISTINCT lead_id FROM events WHERE id > ? AND id <= ? "
                    "AND lead_id IS NOT NULL",
                ),
                (scored_to or 0, stored_to),
            )
        ]
        store.rescore_leads(conn, lead_ids, "event", store.clock())
        _set(conn, SCORED_TO, stored_to)
    return len(lead_ids)


def _get(conn: Connection, name: str) -> int | None:
    q = driver_sql(conn, "SELECT value FROM counters WHERE name = ?")
    row = conn.exec_driver_sql(q, (name,)).first()
    return None if row is None else int(row[0])


def _set(conn: Connection, name: str, value: int) -> None:
    q = driver_sql(
        conn,
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    conn.exec_driver_sql(q, (name, value))
