"""Reading leads' events back for real-time rescoring, with decoded events kept between requests.

Every accepted event rescores its lead from all the lead's events, so the service reads the
same events back again and again; decoding them (a row, its JSON properties, an
:class:`~leadscore.engine.lead.Event`) cost more than scoring them. :class:`EventCache` keeps
the decoded events of recently rescored leads in memory and reads only what is new.

Why a cached list can be trusted: the store never deletes an event or changes what it says. A
lead's events only grow: new events, anonymous events joined to it, a merged lead's events
moved to it. So a lead whose events number as many as the cached list holds, with the same
newest id, has exactly the cached events; a lead with more has the cached ones plus those
with a higher id, unless older ones joined it (then the count does not add up and the lead is
read again in full). Each rescoring checks the count and the newest id of its leads' events in
one query in the same transaction, whichever process wrote them. A list read inside a
transaction enters the cache only when that transaction commits, so events that were rolled
back are never kept.

One exception to the check: a SQLite writer that knows no one else has written since its last
commit, which recorded all it changed (a cache epoch, see :class:`leadscore.store.db.Journal`),
serves a list kept in this epoch plus the events its transaction inserted, without a query
(``unchecked`` in :meth:`EventCache.stats`).

Property texts repeat (the same pages, the same campaigns): each distinct (type, item,
properties) is decoded once and its fields shared, read-only, by every event that has it.
"""

from __future__ import annotations

import json
import threading
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from leadscore.engine.lead import Event
from leadscore.store.db import (
    Statement,
    any_of,
    arrays_for,
    cache_epoch,
    driver_rows,
    driver_sql,
    in_list,
    journal_of,
    on_commit,
)
from leadscore.store.leads import event_fields

__all__ = ["DEFAULT_CACHED_EVENTS", "EventCache", "Preloader", "decoded_fields"]

# About 220 bytes per kept event, the shared decoded properties included (measured with
# tracemalloc over 137,332 events of the sample data: 30 MB).
DEFAULT_CACHED_EVENTS = 1_000_000
_CHUNK = 500
_FIELDS_MAX = 100_000
_MEMO_TEXT_MAX = 2_000  # longer properties are decoded for each event
# An event counts against the cache's size as one, plus one per this many bytes of its
# properties' JSON, so that events with large properties cannot fill the memory.
_BYTES_PER_UNIT = 200

_fields_memo: dict[tuple[str, str | None, str], Mapping[str, str | None]] = {}


def decoded_fields(etype: str, item: str | None, text: str) -> Mapping[str, str | None]:
    """The fields a ``where`` condition sees for an event with these stored properties (JSON
    text), decoded once per distinct value and shared: do not change the mapping returned."""
    key = (etype, item, text)
    found = _fields_memo.get(key)
    if found is None:
        found = event_fields(etype, item, json.loads(text))
        if len(text) > _MEMO_TEXT_MAX:  # rare and large: not worth keeping
            return found
        if len(_fields_memo) >= _FIELDS_MAX:
            _fields_memo.clear()
        _fields_memo[key] = found
    return found


def _event(etype: str, ts_us: int, item: str | None, text: str, message_id: str | None) -> Event:
    fields = decoded_fields(etype, item, text)
    etype = fields["type"] or etype  # the shared copy of the text
    return Event(etype, ts_us, item, message_id, fields)


@dataclass(frozen=True, slots=True)
class _Entry:
    count: int  # the lead's events of every type
    max_id: int
    last_key: tuple[int, int]  # (ts_us, id) of the newest event of every type
    events: tuple[Event, ...]  # those of the kept types, oldest first
    weight: int = 0  # what it counts against the cache's size (see _BYTES_PER_UNIT)
    epoch: int | None = None  # the cache epoch it was current in (None: read outside one)


def _stamped(entry: _Entry, epoch: int | None) -> _Entry:
    """``entry`` of cache epoch ``epoch`` (dataclasses.replace, at a fraction of its cost)."""
    return _Entry(entry.count, entry.max_id, entry.last_key, entry.events, entry.weight, epoch)


class EventCache:
    """The decoded events of up to ``max_events`` events' worth of recently rescored leads,
    least recently used first out. ``max_events=0`` keeps none (every read goes to the
    database)."""

    def __init__(self, max_events: int = DEFAULT_CACHED_EVENTS) -> None:
        self.max_events = max_events
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._size = 0
        self._types: frozenset[str] | None = None
        self._lock = threading.Lock()
        self.hits = 0  # leads served from the cache as they were
        self.extended = 0  # leads served from the cache plus their new events
        self.misses = 0  # leads read in full
        self.unchecked = 0  # leads served without asking the database (see Journal)
        self.preloaded = 0  # leads read ahead of their first rescoring (see Preloader)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def cached_events(self) -> int:
        """What the kept events count against ``max_events``: one each, plus one per 200
        bytes of an event's properties."""
        return self._size

    def stats(self) -> dict[str, int]:
        """What the cache holds and how rescorings used it since the process started."""
        return {
            "leads": len(self._entries),
            "size": self._size,
            "limit": self.max_events,
            "hits": self.hits,
            "extended": self.extended,
            "misses": self.misses,
            "unchecked": self.unchecked,
            "preloaded": self.preloaded,
        }

    def _reading(self, kept: frozenset[str] | None) -> None:
        """About to read events of the ``kept`` types (None: all), holding the lock: lists of
        other types (other sheets were active) are dropped."""
        if kept != self._types:
            self._entries.clear()
            self._size = 0
            self._types = kept

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._size = 0

    def events_of_leads(
        self,
        conn: Connection,
        lead_ids: Sequence[str],
        until_us: int,
        types: Sequence[str] | None = None,
    ) -> dict[str, tuple[Event, ...]]:
        """The events of several leads at or before ``until_us`` (only ``types`` if given),
        each lead's oldest first (as :func:`leadscore.store.leads.lead_events` reads one
        lead's), from the cache where the database says it is current. The tuples are the
        cache's own (not copied)."""
        kept = None if types is None else frozenset(types)
        ids = sorted(set(lead_ids))
        with self._lock:
            self._reading(kept)
            cached = {lid: e for lid in ids if (e := self._entries.get(lid)) is not None}
            for lid in cached:
                self._entries.move_to_end(lid)  # used last: out last
        epoch = cache_epoch(conn)
        journal = journal_of(conn)
        found: dict[str, _Entry] = {}
        again: list[str] = []
        if epoch is not None and journal is not None and not journal.broken:
            # current as of this writer's last commit: add what this transaction added
            for lid, mine in cached.items():
                if mine.epoch != epoch or lid in journal.dirty:
                    continue
                grown = _with(mine, journal.events.get(lid), kept, epoch)
                if grown is None:  # a late event: read the lead in full
                    again.append(lid)
                else:
                    found[lid] = grown
                    self.unchecked += 1
        if journal is not None:
            journal.reading(ids)
        asked = [lid for lid in ids if lid not in found and lid not in again]
        stats: dict[str, tuple[int, int]] = {}
        rows: dict[str, list[_Row]] = {lid: [] for lid in asked}
        for start in range(0, len(asked), _CHUNK):
            part = asked[start : start + _CHUNK]
            q, params = _query(conn, part, cached)
            for kind, lid, a, b, etype, item, text, message_id in driver_rows(conn, q, params):
                if kind == 0:
                    stats[lid] = (int(a), int(b))
                else:
                    rows[lid].append((b, a, etype, item, text, message_id))
        for lid in asked:
            entry = cached.get(lid)
            if entry is None:  # every event of the lead came back (if it has any)
                found[lid] = _entry(rows[lid], kept, epoch)
                self.misses += 1
                continue
            count, max_id = stats.get(lid, (0, 0))
            if count == 0:  # its events moved on with a merge
                found[lid] = _EMPTY
            elif entry.count == count and entry.max_id == max_id:
                found[lid] = entry
                self.hits += 1
            else:
                grown = _grown(entry, rows[lid], count, kept, epoch)
                if grown is None:
                    again.append(lid)
                else:
                    found[lid] = grown
                    self.extended += 1
        if again:  # older events joined these leads, or a late one arrived: read them in full
            self.misses += len(again)
            found.update(self._read(conn, again, kept))
        if self.max_events > 0:
            # what this transaction saw, stamped with its epoch; kept once it commits
            fresh = {
                lid: e if e.epoch == epoch else _stamped(e, epoch)
                for lid, e in found.items()
                if cached.get(lid) is not e or e.epoch != epoch
            }
            if fresh:
                on_commit(conn, lambda: self._keep(fresh, kept))
        out: dict[str, tuple[Event, ...]] = {}
        for lid in lead_ids:
            entry = found[lid]
            evs = entry.events
            if entry.last_key[0] > until_us:  # events dated after the as-of do not exist yet
                evs = evs[: bisect_right(evs, until_us, key=_ts)]
            out[lid] = evs
        return out

    def statements(
        self, conn: Connection, lead_ids: Sequence[str], types: Sequence[str] | None = None
    ) -> list[Statement]:
        """The statements :meth:`events_of_leads` will run for these leads and types (for
        :func:`~leadscore.store.db.prefetched`) when ``conn`` is outside a cache epoch
        (PostgreSQL), where it asks the database about every lead; none inside one."""
        if cache_epoch(conn) is not None:
            return []
        kept = None if types is None else frozenset(types)
        ids = sorted(set(lead_ids))
        with self._lock:  # as events_of_leads will find them (_reading)
            entries = self._entries if kept == self._types else {}
            cached = {lid: e for lid in ids if (e := entries.get(lid)) is not None}
        return [_query(conn, ids[s : s + _CHUNK], cached) for s in range(0, len(ids), _CHUNK)]

    def take(self, epoch: int, added: Mapping[str, Sequence[_Row]], dirty: Iterable[str]) -> None:
        """A transaction of the writer's cache epoch ``epoch`` (see
        :func:`leadscore.store.db.writers_epoch`) that this cache did not read through added
        these events to leads, and changed the events of ``dirty`` otherwise: the lists kept
        in that epoch grow by the events added (a list they do not simply extend, and one of
        ``dirty``, is dropped: the next rescoring reads it). Lists of other epochs are checked
        against the database before use anyway."""
        gone = set(dirty)
        with self._lock:
            entries = self._entries
            for lid in gone.union(added):
                entry = entries.get(lid)
                if entry is None or entry.epoch != epoch:
                    continue
                del entries[lid]
                self._size -= entry.weight
                if lid in gone:
                    continue
                grown = _with(entry, added.get(lid), self._types, epoch)
                if grown is None or grown.weight > self.max_events:
                    continue
                entries[lid] = grown
                self._size += grown.weight
            while self._size > self.max_events and entries:
                _, out = entries.popitem(last=False)
                self._size -= out.weight

    def load(
        self,
        conn: Connection,
        lead_ids: Sequence[str],
        types: Sequence[str] | None,
        epoch: int | None = None,
    ) -> int:
        """Read the events of ``lead_ids`` (of ``types``, if given) ahead of their rescoring, in
        the order given, while they fit in the cache; the leads it holds already are left as
        they are. How many events it kept. ``conn`` must see only committed data (a read
        transaction): what it keeps is checked against the database at the leads' first
        rescoring, as any list kept outside the writer's epoch, unless ``epoch`` is given: the
        writer's cache epoch, for a snapshot taken after a commit of that epoch whose journal
        (and those of all the epoch's later commits) this cache takes in (see
        :func:`leadscore.service.scoring.scoring_process`)."""
        kept = None if types is None else frozenset(types)
        with self._lock:
            self._reading(kept)
            wanted = [lid for lid in lead_ids if lid not in self._entries]
        added = 0
        for lid, entry in self._read(conn, wanted, kept, epoch).items():
            with self._lock:
                if kept != self._types or lid in self._entries or entry.count == 0:
                    continue
                if self._size + entry.weight > self.max_events:
                    continue
                self._entries[lid] = entry
                self._entries.move_to_end(lid, last=False)  # read ahead: out first
                self._size += entry.weight
                self.preloaded += 1
                added += len(entry.events)
        return added

    def _read(
        self,
        conn: Connection,
        lead_ids: Sequence[str],
        kept: frozenset[str] | None,
        epoch: int | None = None,
    ) -> dict[str, _Entry]:
        """Leads read in full (their entries of cache epoch ``epoch``)."""
        rows: dict[str, list[_Row]] = {lid: [] for lid in lead_ids}
        for start in range(0, len(lead_ids), _CHUNK):
            part = sorted(lead_ids[start : start + _CHUNK])
            q, params = _query(conn, part, {})
            for kind, lid, a, b, etype, item, text, message_id in driver_rows(conn, q, params):
                if kind == 1:
                    rows[lid].append((b, a, etype, item, text, message_id))
        return {lid: _entry(rows[lid], kept, epoch) for lid in lead_ids}

    def _keep(self, fresh: Mapping[str, _Entry], kept: frozenset[str] | None) -> None:
        """Committed: remember these lists (unless a larger one came first), oldest out;
        none if the cache started over for other types meanwhile (a list that the transaction
        changed after reading it is kept too: the epoch then ends, and the next rescoring
        checks it against the database)."""
        with self._lock:
            if kept != self._types:
                return
            entries = self._entries
            for lid, entry in fresh.items():
                old = entries.pop(lid, None)
                if old is not None:
                    self._size -= old.weight
                    # committed meanwhile with more events (unless the lead's events moved
                    # on with a merge: it has none now)
                    if old.count > entry.count and entry.count > 0:
                        entry = old
                if entry.count == 0 or entry.weight > self.max_events:  # none, or too many
                    continue
                entries[lid] = entry
                self._size += entry.weight
            while self._size > self.max_events and entries:
                _, gone = entries.popitem(last=False)
                self._size -= gone.weight


# (ts_us, id, type, item, properties as text, message_id) of one stored event
_Row = tuple[int, int, str, str | None, str, str | None]
_EMPTY = _Entry(0, 0, (-1, -1), ())


def _query(
    conn: Connection, lead_ids: Sequence[str], cached: Mapping[str, _Entry]
) -> tuple[str, tuple[Any, ...]]:
    """One statement (for the driver, and its parameters) for a chunk of leads: (1, lead, id,
    ts_us, type, item, properties, message_id) rows of every event of the leads not in
    ``cached``; for the cached ones, a (0, lead, count, newest id) row each (when it has
    events) and the rows of their events with an id above the lowest of their newest ids. One
    statement sees one snapshot, so counts and rows agree. The first column tells the kinds of
    rows apart."""
    known = [lid for lid in lead_ids if lid in cached]
    unknown = [lid for lid in lead_ids if lid not in cached]
    parts: list[str] = []
    params: list[Any] = []
    if known:
        test, more = any_of(conn, "lead_id", known)
        parts.append(_STATS.format(test=test))
        params += more
    if unknown:
        test, more = any_of(conn, "lead_id", unknown)
        parts.append(_ROWS.format(test=test))
        params += more
    if known and conn.dialect.name == "postgresql":
        # Each lead's events newer than its own newest cached id: their ids from the
        # (lead_id, ts_us) index, which includes the id there (migration 0006), then only those
        # rows. A floor shared by all the leads (below) would fetch nearly every event of a
        # batch's leads, one heap page each, for a few new ones. The pairs as a VALUES list,
        # or as two arrays when there are many (see arrays_for).
        if arrays_for(conn, len(known)):
            pairs = "unnest(CAST(? AS TEXT[]), CAST(? AS BIGINT[]))"
            params += (tuple(known), tuple(cached[lid].max_id for lid in known))
        else:
            pairs = "(VALUES " + ", ".join(["(?, CAST(? AS BIGINT))"] * len(known)) + ")"
            for lid in known:
                params += (lid, cached[lid].max_id)
        parts.append(_NEWER.format(pairs=pairs))
    elif known:
        # `id + 0`: a test the id index cannot answer, so that the planner reads the few rows
        # of these leads rather than every event newer than the floor (which its statistics,
        # taken before the newest events came in, put at almost none). Separate parts rather
        # than one OR, so that each reads the (lead_id, ts_us) index on its own. (SQLite's
        # index holds the id, its rowid, but on SQLite the writer's cache is mostly used without
        # asking: see EventCache.events_of_leads.)
        parts.append(_ROWS.format(test=f"lead_id IN {in_list(len(known))}") + " AND id + 0 > ?")
        params += known
        params.append(min(cached[lid].max_id for lid in known))
    return driver_sql(conn, " UNION ALL ".join(parts)), tuple(params)


# The statements of _query, handed to the driver as they are (SQLAlchemy's processing of
# each row costs more than SQLite's reading it): see leadscore.store.db.driver_sql.
_STATS = (
    "SELECT 0, lead_id, count(*), max(id), CAST(NULL AS TEXT), CAST(NULL AS TEXT),"
    " CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM events WHERE {test} GROUP BY lead_id"
)
_ROWS = (
    "SELECT 1, lead_id, id, ts_us, type, item, CAST(properties AS TEXT), message_id"
    " FROM events WHERE {test}"
)
_NEWER = (
    "SELECT 1, lead_id, id, ts_us, type, item, CAST(properties AS TEXT), message_id"
    " FROM events WHERE id IN (SELECT e.id FROM {pairs} AS k (lead_id, floor)"
    " JOIN events AS e ON e.lead_id = k.lead_id AND e.id > k.floor)"
)


def _entry(rows: list[_Row], kept: frozenset[str] | None, epoch: int | None = None) -> _Entry:
    """A lead's entry from all its events' rows (any order), of cache epoch ``epoch``."""
    if not rows:
        return _EMPTY
    rows.sort()
    last = rows[-1]
    events_, weight = _decoded(rows, kept)
    return _Entry(len(rows), max(r[1] for r in rows), (last[0], last[1]), events_, weight, epoch)


def _decoded(rows: list[_Row], kept: frozenset[str] | None) -> tuple[tuple[Event, ...], int]:
    """The events of ``rows`` of the ``kept`` types, and what they count against the size."""
    mine = [r for r in rows if kept is None or r[2] in kept]
    weight = len(mine) + sum(len(r[4]) for r in mine) // _BYTES_PER_UNIT
    return tuple(
        _event(etype, ts_us, item, text, message_id)
        for ts_us, _id, etype, item, text, message_id in mine
    ), weight


def _grown(
    entry: _Entry,
    rows: list[_Row],
    count: int,
    kept: frozenset[str] | None,
    epoch: int | None = None,
) -> _Entry | None:
    """``entry`` with the rows newer than its newest id added (of cache epoch ``epoch``),
    when they account for all the events the lead gained and come after the cached ones in
    time; else None."""
    new = sorted(r for r in rows if r[1] > entry.max_id)
    if not new or entry.count + len(new) != count or (new[0][0], new[0][1]) < entry.last_key:
        return None
    last = new[-1]
    added, weight = _decoded(new, kept)
    return _Entry(
        count,
        max(r[1] for r in new),  # all above the cached newest id
        (last[0], last[1]),
        entry.events + added,
        entry.weight + weight,
        epoch,
    )


def _with(
    entry: _Entry, rows: Sequence[_Row] | None, kept: frozenset[str] | None, epoch: int
) -> _Entry | None:
    """``entry``, kept in cache epoch ``epoch``, after a transaction of that epoch added
    ``rows`` to its lead (None if they do not come after its events in time: the lead is to be
    read again). The entry may have been read after that commit (the scoring process reads
    ahead between jobs, and a job's snapshot may hold the next batch): a transaction's rows
    are then all in it already, with ids up to its newest id, since SQLite gives each new row
    an id above every id committed before (see leadscore.store.leads._journal_events); else
    all of them are newer than its newest id. That holds while no event is ever deleted: a
    purge of events would have to end the writer's epoch (a transaction without a journal
    does)."""
    new = [r for r in rows if r[1] > entry.max_id] if rows else None
    if not new:
        return entry
    return _grown(entry, new, entry.count + len(new), kept, epoch)


def _ts(e: Event) -> int:
    return e.ts_us


PRELOAD_SCAN = 2_000  # events scanned back at a time
PRELOAD_LEADS = 50  # leads read in full by the first step (then adjusted)
PRELOAD_STEP_SECONDS = 0.01  # what a step aims to take


class Preloader:
    """Fills an :class:`EventCache` with the events of the leads most recently active, newest
    first, one small step at a time, so that an idle writer (the ingest process between
    requests) can warm its cache after a start without keeping any request waiting long.

    Each :meth:`step` reads ``leads`` leads in full (a number adjusted after each step so
    that a step takes about :data:`PRELOAD_STEP_SECONDS`), the next ones not kept yet in
    order of their newest event (found by scanning the events back by id, ``scan`` at a
    time); the preloader stops for good once the cache is filled to ``fill`` of its size or
    every event has been scanned."""

    def __init__(
        self,
        cache: EventCache,
        fill: float = 0.9,
        *,
        scan: int = PRELOAD_SCAN,
        leads: int = PRELOAD_LEADS,
    ) -> None:
        self.cache = cache
        self.fill = fill
        self.scan = scan
        self.leads = leads
        self.done = cache.max_events <= 0
        self.events = 0  # kept so far
        self._below: int | None = None  # the scan's lowest event id so far
        self._seen: set[str] = set()
        self._pending: list[str] = []  # found by the scan, not read yet (newest first)

    def step(self, conn: Connection, types: Sequence[str] | None, epoch: int | None = None) -> bool:
        """One step in the read transaction ``conn`` (what it reads is of cache epoch
        ``epoch``: see :meth:`EventCache.load`); whether there is more to do."""
        cache = self.cache
        if self.done or cache.cached_events >= cache.max_events * self.fill:
            return self._finish()
        if not self._pending:
            q, params = (
                (_SCAN, (self.scan,))
                if self._below is None
                else (_SCAN_BELOW, (self._below, self.scan))
            )
            rows = conn.exec_driver_sql(driver_sql(conn, q), params).all()
            if not rows:
                return self._finish()
            self._below = int(rows[-1][0])
            for _, lid in rows:
                if lid not in self._seen:
                    self._seen.add(lid)
                    self._pending.append(lid)
        leads = self._pending[: self.leads]
        del self._pending[: self.leads]
        started = time.perf_counter()
        self.events += cache.load(conn, leads, types, epoch)
        # steps of about PRELOAD_STEP_SECONDS, whatever the leads' numbers of events
        took = time.perf_counter() - started
        if took > 2 * PRELOAD_STEP_SECONDS:
            self.leads = max(1, self.leads // 2)
        elif took < PRELOAD_STEP_SECONDS / 2:
            self.leads = min(4 * PRELOAD_LEADS, self.leads * 2)
        return True

    def _finish(self) -> bool:
        self.done = True
        self._seen.clear()
        self._pending.clear()
        return False


_SCAN = "SELECT id, lead_id FROM events WHERE lead_id IS NOT NULL ORDER BY id DESC LIMIT ?"
_SCAN_BELOW = (
    "SELECT id, lead_id FROM events WHERE lead_id IS NOT NULL AND id < ? ORDER BY id DESC LIMIT ?"
)
