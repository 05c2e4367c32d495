"""The store as the service and the command line use it: ingest, rescoring, models, time.

:class:`Store` keeps every lead's current scores equal to what the per-lead evaluator gives for
the active model versions, the lead's profile and its events, and records every change:

- an accepted event or profile update rescores its lead on every active sheet in the same
  transaction that stores it, so the score is readable as soon as the request is acknowledged;
- :meth:`Store.rescore_all` (the batch evaluator) brings every lead current after time has
  passed (decay, windows, inactivity), and after a model is published;
- each change goes to the score history and to the triggers, in that same transaction.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib.resources import files
from typing import Any, Protocol, TypeVar

import ibis
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from leadscore.engine.batch import plan_for
from leadscore.engine.lead import ProfileMemo, profile_fields, score_lead
from leadscore.engine.result import ScoreResult
from leadscore.engine.timeutil import from_micros, now_micros
from leadscore.errors import NotFound
from leadscore.scoring import PreparedInputs, register_inputs
from leadscore.spec import Model, parse_model
from leadscore.spec.conditions import to_text
from leadscore.spec.model import InactivityRule
from leadscore.store.db import (
    TRIGGER_ROWS,
    Database,
    Statement,
    driver_rows,
    forget_prefetched,
    journaled_epoch,
    keep_for_transaction,
    prefetched,
    start_journal,
)
from leadscore.store.eventcache import DEFAULT_CACHED_EVENTS, EventCache, Preloader
from leadscore.store.leads import (
    EventInput,
    ItemOutcome,
    LeadInput,
    ProfileCache,
    alias_lead,
    email_key,
    event_fields,
    insert_events,
    lead_events,
    lead_records,
    lead_records_statements,
    link_alias,
    lock_identities,
    lock_leads,
    upsert_leads,
)
from leadscore.store.schema import events, leads, model_versions, scores
from leadscore.store.scores import (
    NewScore,
    ScoreChange,
    current_scores,
    current_scores_statements,
    leads_on_replaced_versions,
    write_scores,
)
from leadscore.store.versions import (
    ModelVersion,
    active_versions,
    add_version,
    get_version,
    mark_published,
)

__all__ = ["DEFAULT_MODEL", "ChangeListener", "RescoreReport", "Sheet", "Store"]

DEFAULT_MODEL = "b2b-default.yaml"  # shipped in leadscore/models
# How long the active sheets are trusted without asking the store, for reads: a model published
# by another process is shown within this time (one published here, at once). Rescoring asks
# in its own transaction, so that it never writes a score with a model already replaced.
SHEETS_TTL = 1.0
# events its event cache keeps per lead whose profile fields a store keeps (1,000,000 events:
# 50,000 leads, about 17 MB)
PROFILES_PER_EVENTS = 20
# Leads read and scored at a time by a full rescoring (Store.rescore_all): with 20 events a
# lead, about a million events in memory at once.
RESCORE_PART = 50_000

Progress = Callable[[str, int, int], None]  # (what, done, total)


class ChangeListener(Protocol):
    """Told about score changes inside the transaction that makes them (the triggers)."""

    def __call__(
        self, conn: Connection, changes: Sequence[ScoreChange], now_us: int, fire: bool
    ) -> None: ...


@dataclass(frozen=True)
class Sheet:
    """An active score sheet: the published version of a model, compiled."""

    version: ModelVersion
    model: Model

    @property
    def name(self) -> str:
        return self.version.name


@dataclass
class RescoreReport:
    reason: str
    as_of_us: int  # when the run began (its parts are scored as of when each is read)
    leads: int = 0
    changed: int = 0  # score changes that went to the history
    skipped: int = 0  # leads rescored in real time while the batch ran (kept as they are)
    per_sheet: dict[str, int] = field(default_factory=dict)


# PostgreSQL: the ids of the published model versions (kind 0, by sheet name) and the enabled
# triggers (kind 1, by id), in the orders of the two reads it stands for (the database's
# collation); see Store._published
_PUBLISHED_AND_TRIGGERS: Statement = (
    "SELECT kind, key, value FROM ("
    "SELECT 0 AS kind, CAST(id AS TEXT) AS key, name AS value FROM model_versions "
    "WHERE status = 'published' UNION ALL "
    "SELECT 1, id, CAST(definition AS TEXT) FROM triggers WHERE enabled) AS both_ "
    "ORDER BY kind, CASE WHEN kind = 0 THEN value END, key",
    (),
)


class Store:
    """Leads, events, scores and models in one database (see :func:`open_store`)."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], int] = now_micros,
        listener: ChangeListener | None = None,
        cached_events: int = DEFAULT_CACHED_EVENTS,
    ) -> None:
        self.db = db
        self.clock = clock
        self.listener = listener
        # decoded events of recently rescored leads (see leadscore.store.eventcache)
        self.event_cache = EventCache(cached_events)
        # the profile fields the sheets read, of recently rescored leads (inside a SQLite
        # writer's cache epoch: see ProfileCache)
        self.profile_cache = ProfileCache(cached_events // PROFILES_PER_EVENTS)
        # per active model version: the profile rules' results that rescoring a lead again
        # reuses (see score_lead's ``profiles``)
        self._profiles: dict[int, ProfileMemo] = {}
        self._sheets: tuple[tuple[int, ...], list[Sheet]] = ((), [])
        # (monotonic time until which the sheets need no check, the sheets)
        self._sheets_checked: tuple[float, list[Sheet]] = (0.0, [])
        # the journaled cache epoch in which the sheets were last read (see journaled_epoch)
        self._sheets_epoch: int | None = None
        self._models: dict[int, Model] = {}
        self._lock = threading.Lock()

    def keep_events(self, cached_events: int) -> None:
        """Keep up to this many events in the event cache from now on (and the profiles of a
        twentieth as many leads): 0 keeps none."""
        self.event_cache.max_events = cached_events
        self.profile_cache.max_leads = cached_events // PROFILES_PER_EVENTS

    # --- models -------------------------------------------------------------------------------

    def sheets(self, conn: Connection | None = None, *, check: bool = False) -> list[Sheet]:
        """The active sheets (reloaded when another process published a model: within
        :data:`SHEETS_TTL`, or at once with ``check``; a journaled transaction of the cache
        epoch in which they were last read needs no check)."""
        if conn is None:
            with self.db.read() as c:
                return self.sheets(c, check=check)
        epoch = journaled_epoch(conn)
        with self._lock:
            fresh_until, cached = self._sheets_checked
            if epoch is not None and epoch == self._sheets_epoch:
                return self._sheets[1]
        if not check and time.monotonic() < fresh_until:
            return cached
        ids = self._published(conn)
        with self._lock:
            if ids == self._sheets[0]:
                self._sheets_checked = (time.monotonic() + SHEETS_TTL, self._sheets[1])
                self._sheets_epoch = epoch
                return self._sheets[1]
        versions = active_versions(conn)
        sheets = [Sheet(v, self.model_of(v)) for v in versions]
        with self._lock:
            self._sheets = (tuple(v.id for v in versions), sheets)
            self._sheets_checked = (time.monotonic() + SHEETS_TTL, sheets)
            self._sheets_epoch = epoch
        return sheets

    def _published(self, conn: Connection) -> tuple[int, ...]:
        """The ids of the published model versions, by sheet name. On PostgreSQL, where every
        rescoring transaction asks (no cache epochs there), the enabled triggers come in the
        same statement, kept for the trigger engine's read later in this transaction (a round
        trip fewer: see TRIGGER_ROWS)."""
        if conn.dialect.name != "postgresql":
            return tuple(
                int(i)
                for (i,) in conn.execute(
                    sa.select(model_versions.c.id)
                    .where(model_versions.c.status == "published")
                    .order_by(model_versions.c.name)
                )
            )
        rows = driver_rows(conn, *_PUBLISHED_AND_TRIGGERS)
        keep_for_transaction(
            conn, TRIGGER_ROWS, [(str(k), json.loads(v)) for kind, k, v in rows if kind == 1]
        )
        return tuple(int(k) for kind, k, _ in rows if kind == 0)

    def _ingest_reads(self, conn: Connection, lead_ids: Sequence[str]) -> list[Statement]:
        """PostgreSQL: the reads of the rescoring that follows an ingest's insert of events
        for these leads (sorted, existing), for insert_events to send with their locks: the
        sheets' check and, for the sheets read last (those the check will most likely find),
        the reads of :meth:`_rescoring_reads`. Sheets found changed: those of theirs that
        differ are read again (in the rescoring's own round trip)."""
        with self._lock:
            sheets = self._sheets[1]
        reads = [_PUBLISHED_AND_TRIGGERS]
        if sheets:
            reads += self._rescoring_reads(conn, sheets, lead_ids, lead_ids)
        return reads

    def forget_sheets(self) -> None:
        """Read the active sheets from the store at the next call (after a publish)."""
        with self._lock:
            self._sheets_checked = (0.0, [])
            self._sheets_epoch = None

    def model_of(self, version: ModelVersion) -> Model:
        with self._lock:
            model = self._models.get(version.id)
        if model is None:
            model = version.model()
            with self._lock:
                self._models[version.id] = model
        return model

    def model_by_id(self, conn: Connection, version_id: int) -> Model:
        row = conn.execute(
            sa.select(model_versions.c.name, model_versions.c.version).where(
                model_versions.c.id == version_id
            )
        ).one()
        return self.model_of(get_version(conn, row[0], row[1]))

    def add_model(self, yaml_text: str, source: str = "<request>") -> ModelVersion:
        """Validate a model file and store it as a draft (:class:`ModelError` if invalid)."""
        model = parse_model(yaml_text, source=source)
        with self.db.write() as conn:
            return add_version(conn, model, yaml_text, self.clock())

    def publish(
        self,
        name: str,
        version: int | None = None,
        *,
        fire_triggers: bool = False,
        progress: Progress | None = None,
    ) -> RescoreReport:
        """Make a version active (default: the newest) and rescore every lead with it.

        The version is active from the start of the rescoring. Should the rescoring stop part
        way (an error, an interrupt), the error raised carries a note saying so: the leads it
        did not reach keep their scores of the version before until the next rescoring, which
        records their changes as ``model change`` (:func:`~leadscore.store.scores.write_scores`;
        see :meth:`replaced_scores`)."""
        with self.db.write() as conn:
            if version is None:
                newest = conn.execute(
                    sa.select(sa.func.max(model_versions.c.version)).where(
                        model_versions.c.name == name
                    )
                ).scalar()
                if newest is None:
                    raise NotFound(f"no model {name!r} in the store")
                version = int(newest)
            mark_published(conn, get_version(conn, name, version), self.clock())
        self.forget_sheets()
        try:
            return self.rescore_all(
                "model change", sheets=[name], fire_triggers=fire_triggers, progress=progress
            )
        except BaseException as exc:
            exc.add_note(
                f"{name} version {version} is active, but its rescoring stopped part way: the "
                "leads it did not reach keep their scores of the version before until the next "
                "rescoring of every lead (`leadscore rescore`, POST /api/v1/rescore, the "
                "server's schedule, or its start with the schedule on) brings them over, "
                "recorded as model change"
            )
            raise

    def replaced_scores(self, sheet: str | None = None) -> int:
        """How many leads have a score (on ``sheet``, or on any sheet that has an active
        version) that a version no longer active made: what a publish whose rescoring stopped
        part way leaves."""
        with self.db.read() as conn:
            return leads_on_replaced_versions(conn, sheet)

    def ensure_published(self, yaml_text: str, source: str) -> ModelVersion | None:
        """Publish ``yaml_text`` unless it is already the active version of its sheet.

        Returns the version published, or None when nothing changed.
        """
        draft = self.add_model(yaml_text, source)
        if draft.status == "published":
            return None
        self.publish(draft.name, draft.version)
        with self.db.read() as conn:
            return get_version(conn, draft.name, draft.version)

    def ensure_a_model(self) -> ModelVersion | None:
        """Publish the shipped b2b-default model when the store has no model at all, so that
        a new store scores leads out of the box. Returns what was published, if anything."""
        with self.db.read() as conn:
            if conn.execute(sa.select(model_versions.c.id).limit(1)).first() is not None:
                return None
        text = files("leadscore").joinpath("models", DEFAULT_MODEL).read_text(encoding="utf-8")
        return self.ensure_published(text, DEFAULT_MODEL)

    # --- ingest -------------------------------------------------------------------------------

    def upsert_leads(
        self, items: Sequence[LeadInput], *, rescore: bool = True
    ) -> list[ItemOutcome]:
        """Create or update leads and rescore them (``rescore=False``: a bulk import that runs
        :meth:`rescore_all` once at the end instead)."""
        with self.db.write() as conn:
            now = self.clock()
            outcomes = upsert_leads(conn, items, now)
            if rescore:
                touched = {o.lead_id for o in outcomes if o.status != "error" and o.lead_id}
                self.rescore_leads(conn, touched, "profile", now, current=True)
        return outcomes

    def ingest_events(
        self, items: Sequence[EventInput], *, rescore: bool = True
    ) -> list[ItemOutcome]:
        """Store events (repeats of a ``message_id`` are acknowledged, not counted twice) and
        rescore the leads they belong to (``rescore=False``: see :meth:`upsert_leads`)."""
        with self.db.write() as conn:
            # Every change of events here is recorded (leadscore.store.db.Journal), so that
            # the event cache of this process stays current without asking the database.
            start_journal(conn)
            now = self.clock()
            after = None if self.db.is_sqlite or not rescore else partial(self._ingest_reads, conn)
            try:
                outcomes, touched = insert_events(conn, items, now, after)
                if rescore:
                    self.rescore_leads(conn, touched, "event", now, current=True)
            finally:  # rows read ahead for a rescoring that did not ask for them
                forget_prefetched(conn)
        return outcomes

    def identify(
        self, lead: LeadInput, anonymous_id: str | None = None
    ) -> tuple[ItemOutcome, bool]:
        """Upsert a lead and link an anonymous id to it; whether anonymous events joined it."""
        with self.db.write() as conn:
            now = self.clock()
            # before the lead's row lock, as ingest does
            email = email_key(lead.email)
            lock_identities(conn, [email] if email else [], [anonymous_id] if anonymous_id else [])
            (outcome,) = upsert_leads(conn, [lead], now)
            joined = False
            if outcome.status != "error" and outcome.lead_id and anonymous_id:
                joined = link_alias(conn, anonymous_id, outcome.lead_id, now)
            if outcome.lead_id and outcome.status != "error":
                reason = "event" if joined else "profile"
                self.rescore_leads(conn, [outcome.lead_id], reason, now, current=True)
        return outcome, joined

    def alias(self, user_id: str, previous_id: str) -> ItemOutcome:
        """Segment's ``alias``: ``previous_id`` is another id of the lead ``user_id``. A lead
        stored under ``previous_id`` is merged into it (see
        :func:`~leadscore.store.leads.alias_lead`), an anonymous id of that name linked to it,
        and the lead rescored."""
        with self.db.write() as conn:
            now = self.clock()
            outcome, joined = alias_lead(conn, user_id, previous_id, now)
            assert outcome.lead_id is not None
            reason = "event" if joined else "profile"
            self.rescore_leads(conn, [outcome.lead_id], reason, now, current=True)
        return outcome

    # --- scoring ------------------------------------------------------------------------------

    def rescore_leads(
        self,
        conn: Connection,
        lead_ids: Iterable[str],
        reason: str,
        now_us: int,
        detail: str | None = None,
        *,
        fire_triggers: bool = True,
        current: bool = False,
    ) -> list[ScoreChange]:
        """Rescore leads with the per-lead evaluator as of ``now_us``, inside ``conn``.
        ``current``: ``now_us`` is the clock's time read when the transaction began, and on
        PostgreSQL the as-of becomes the clock's time once the leads are locked (see below)."""
        ids = sorted(set(lead_ids))
        if not ids:
            return []
        # checked in this transaction: a score written with a model another process has just
        # replaced would stay until the lead's next event
        sheets = self.sheets(conn, check=True)
        if not sheets:
            return []
        if not self.db.is_sqlite:  # serialise concurrent rescoring of the same lead
            present = lock_leads(conn, ids)
            if current:
                # Another process may have committed, while this one waited for a lead's
                # lock, an event stamped after this transaction read the clock: scored as of
                # then, the lead's score would leave that event out (and replace a newer
                # one). As of now it counts every event committed before the lock was ours.
                now_us = max(now_us, self.clock())
            # the reads of the rescoring in one round trip (see prefetched)
            reads = self._rescoring_reads(conn, sheets, ids, [i for i in ids if i in present])
        else:
            reads = []
        with prefetched(conn, reads):
            new = self.new_scores(conn, sheets, ids, now_us)
            changes = write_scores(conn, new, reason, now_us, detail)
        if self.listener is not None and changes:
            self.listener(conn, changes, now_us, fire_triggers)
        return changes

    def _rescoring_reads(
        self,
        conn: Connection,
        sheets: Sequence[Sheet],
        lead_ids: Sequence[str],
        present: Sequence[str],
    ) -> list[Statement]:
        """The statements that :meth:`new_scores` (outside a cache epoch: the profiles, then
        the events of the leads found) and then :func:`write_scores` (their current scores)
        will run for ``lead_ids`` (sorted), of which ``present`` exist."""
        return [
            *lead_records_statements(conn, lead_ids),
            *self.event_cache.statements(conn, present, event_types(sheets)),
            *current_scores_statements(conn, present),
        ]

    def new_scores(
        self, conn: Connection, sheets: Sequence[Sheet], lead_ids: Sequence[str], now_us: int
    ) -> list[NewScore]:
        """The scores of ``lead_ids`` (sorted; those not stored are left out) on ``sheets`` as
        of ``now_us``, from their profiles and events as ``conn`` sees them (the events through
        the event cache)."""
        fields = tuple(dict.fromkeys(f for s in sheets for f in profile_fields(s.model)))
        records = self.profile_cache.records(conn, lead_ids, fields)
        by_lead = self.event_cache.events_of_leads(conn, list(records), now_us, event_types(sheets))
        as_of = from_micros(now_us)
        memos = [self._profiles.setdefault(s.version.id, {}) for s in sheets]
        if len(self._profiles) > len(sheets):  # versions no longer active
            self._profiles = {s.version.id: m for s, m in zip(sheets, memos, strict=True)}
        new: list[NewScore] = []
        for lead_id in lead_ids:
            record = records.get(lead_id)
            if record is None:
                continue
            evs = by_lead[lead_id]
            for sheet, memo in zip(sheets, memos, strict=True):
                result = score_lead(sheet.model, record, evs, as_of, explain=False, profiles=memo)
                new.append(NewScore.from_result(lead_id, sheet.version.id, now_us, result))
        return new

    def preload_step(self, preloader: Preloader, epoch: int | None = None) -> bool:
        """One step of reading the events of recently active leads into the event cache
        ahead of their rescoring (see :class:`~leadscore.store.eventcache.Preloader`), in a
        read transaction of its own (of the writer's cache ``epoch``: see
        :meth:`~leadscore.store.eventcache.EventCache.load`); whether there is more to do."""
        sheets = self.sheets()
        if not sheets:
            return False
        with self.db.read() as conn:
            return preloader.step(conn, event_types(sheets), epoch)

    def explain(self, conn: Connection, lead_id: str, sheet: str) -> ScoreResult:
        """The full explanation of a lead's current score on a sheet (at its stored as-of)."""
        row = conn.execute(
            sa.select(scores.c.model_version_id, scores.c.as_of_us).where(
                scores.c.lead_id == lead_id, scores.c.sheet == sheet
            )
        ).first()
        if row is None:
            raise NotFound(f"lead {lead_id!r} has no score on sheet {sheet!r}")
        model = self.model_by_id(conn, int(row[0]))
        record = lead_records(conn, [lead_id])[lead_id]
        evs = lead_events(conn, lead_id, int(row[1]))
        return score_lead(model, record, evs, from_micros(int(row[1])))

    def rescore_all(
        self,
        reason: str = "decay",
        *,
        sheets: Sequence[str] | None = None,
        as_of_us: int | None = None,
        fire_triggers: bool = True,
        progress: Progress | None = None,
        chunk: int = 1000,
        part: int = RESCORE_PART,
    ) -> RescoreReport:
        """Rescore every lead with the batch evaluator and record what changed.

        The leads are taken ``part`` at a time in lead id order: each part's leads and
        events are read in one transaction and scored as of then (or as of ``as_of_us``), so
        that memory stays bounded whatever the store's size. Leads rescored in real time while
        this ran keep their newer score; a sheet whose model is published anew meanwhile is
        left to that publish's rescoring from the next part on.
        Results are written ``chunk`` leads per transaction, with a pause after each for a
        writer that waits for SQLite's write lock (:meth:`Database.let_others_write`), so that
        real-time ingest is held up for a fraction of a second at a time.
        """
        if part < 1:
            raise ValueError(f"part: at least 1 lead, not {part}")
        t_us = self.clock() if as_of_us is None else as_of_us
        report = RescoreReport(reason, t_us)
        with self.db.read() as conn:
            active = [
                s for s in self.sheets(conn, check=True) if sheets is None or s.name in sheets
            ]
            if not active:
                return report
            total = int(conn.execute(sa.select(sa.func.count()).select_from(leads)).scalar_one())
        version_of = {s.name: s.version.id for s in active}
        after: str | None = None  # the last lead id of the parts done
        scored = written = 0

        def tell(what: str, done: int) -> None:
            if progress:
                progress(what, done, max(total, done))

        tell("reading leads and events", 0)
        while True:
            # Each part as of when it is read (unless a time was asked for): an event stored
            # while the parts before it ran, with its time then, counts as it did when its
            # lead was rescored in real time (scored as of the start, it would be left out).
            part_us = self.clock() if as_of_us is None else as_of_us
            with self.db.read() as conn:
                # A sheet whose model was published anew since this run began is left to the
                # publish's own rescoring: its new scores, written before this snapshot, would
                # look like the run's own here (the check of `seen` below sees only what
                # changes after it) and be overwritten with the replaced model's.
                published = {s.name: s.version.id for s in self.sheets(conn, check=True)}
                active = [s for s in active if published.get(s.name) == version_of[s.name]]
                if not active:
                    break
                names = [s.name for s in active]
                found = _next_part(conn, after, part)
                if found is None:
                    break
                ids, more, span = found
                # What each score row was in the snapshot the leads and events are read from
                # (Database.read): a row that differs when the batch writes was rescored in real
                # time meanwhile (from its events then, which may be newer than those read
                # here) and is kept. (A clock reading would not do: a request that read the
                # clock before this run and committed after the read would be overwritten.)
                seen = {
                    (lid, sheet): updated
                    for lid, sheet, updated in conn.execute(
                        _in_span(
                            sa.select(scores.c.lead_id, scores.c.sheet, scores.c.updated_us),
                            scores.c.lead_id,
                            span,
                        ).where(scores.c.sheet.in_(names))
                    )
                }
                # A change of a lead with events its score does not count yet (stored without
                # a rescoring: an import stopped part way) is the events' doing, not decay's:
                # events stored after the oldest of the part's scores was written are looked
                # at (all of them when a lead has no score yet).
                unscored = None
                if reason == "decay":
                    whole = len(seen) == len(ids) * len(active)
                    unscored = Unscored(min(seen.values()) if whole and seen else None, part_us)
                # Not `prepare`: it trims lead ids (and event types) as for files, which would
                # score ' L1' as 'L1'; the exported tables are already the evaluators' text.
                prepared = PreparedInputs(*_export(conn, active, span, unscored))
            report.leads += prepared.leads.num_rows
            tell("reading leads and events", report.leads)
            tell("scoring", scored)
            rows = _batch_rows(active, prepared, part_us)
            del prepared
            scored += len(rows)
            tell("scoring", scored)
            # The rows and the snapshot are a great many objects that live until the part is
            # written: left to the garbage collector, each of its full passes would walk them
            # all (0.1 s for 10,000 leads) inside a chunk's transaction, holding SQLite's write
            # lock.
            prefixed = len(active) > 1  # the rows' columns (_batch_rows)
            with _out_of_gc_passes():
                for begin in range(0, len(rows), chunk):
                    piece = rows[begin : begin + chunk]
                    with self.db.write() as conn:
                        # A sheet published anew since the part was read is the publish's to
                        # write from now on (see _still_published)
                        active = _still_published(conn, active, version_of)
                        if active:
                            self._write_chunk(
                                conn,
                                piece,
                                active,
                                version_of,
                                seen,
                                part_us,
                                report,
                                fire_triggers,
                                prefixed,
                                unscored,
                            )
                    if not active:
                        break
                    self.db.let_others_write()
                    written += len(piece)
                    tell("writing scores", written)
            del rows, seen, unscored  # before the next part is read
            after = ids[-1]
            if not more or not active:
                break
        if progress:  # fewer leads than counted at the start (merged away meanwhile): all done
            for what, done in (
                ("reading leads and events", report.leads),
                ("scoring", scored),
                ("writing scores", written),
            ):
                if 0 < done < total:
                    progress(what, done, done)
        return report

    def _write_chunk(
        self,
        conn: Connection,
        part: Sequence[dict[str, Any]],
        active: Sequence[Sheet],
        version_of: dict[str, int],
        seen: dict[tuple[str, str], int],
        t_us: int,
        report: RescoreReport,
        fire_triggers: bool,
        prefixed: bool,
        unscored: Unscored | None = None,
    ) -> None:
        """:meth:`rescore_all`: write the scores of a chunk of its rows (whose columns are
        prefixed with the sheet's name when ``prefixed``: scored on several sheets).
        ``unscored`` (see :func:`_export`) tells a rescoring for decay which changes came of
        events its scores did not count."""
        now = self.clock()
        # Real-time rescoring of these leads waits until this chunk commits, so it is
        # never overwritten by the batch's older value; a lead merged away since the
        # snapshot is not scored again.
        present = lock_leads(conn, [r["lead_id"] for r in part])
        ids = [r["lead_id"] for r in part if r["lead_id"] in present]
        current = current_scores(conn, ids)
        fresh = {k for k, row in current.items() if seen.get(k) != row["updated_us"]}
        # Rescored meanwhile, but with a model this run replaces: a process that read
        # the active versions just before a publish committed (PostgreSQL's read
        # committed lets it). Rescored again below, from its events, with the active one.
        replaced = sorted(
            {
                lead
                for (lead, sheet) in fresh
                if sheet in version_of
                and current[lead, sheet]["model_version_id"] != version_of[sheet]
            }
        )
        new: list[NewScore] = []
        for r in part:
            if r["lead_id"] not in present:
                continue
            for s in active:
                if (r["lead_id"], s.name) in fresh:
                    if r["lead_id"] not in replaced:  # (those are rescored below)
                        report.skipped += 1
                    continue
                new.append(_new_score(r, s, t_us, f"{s.name}." if prefixed else ""))
        reasons = None if unscored is None else _from_events(new, current, unscored.newest)
        changes = write_scores(
            conn,
            new,
            report.reason,
            now,
            current=current,
            finishing_publish=True,
            reasons=reasons,
        )
        if self.listener is not None and changes:
            self.listener(conn, changes, now, fire_triggers)
        if replaced:
            changes += self.rescore_leads(
                conn, replaced, report.reason, now, fire_triggers=fire_triggers
            )
        for c in changes:  # those of the run's sheets (a replaced lead's others are its own)
            if c.recorded and c.sheet in version_of:
                report.per_sheet[c.sheet] = report.per_sheet.get(c.sheet, 0) + 1
                report.changed += 1


def _still_published(
    conn: Connection, active: Sequence[Sheet], version_of: dict[str, int]
) -> list[Sheet]:
    """The sheets of ``active`` whose version (``version_of``) is still the published one, in
    a write transaction of a whole-store rescoring: a sheet published anew since is left to
    that publish's own rescoring, whose snapshot may have been read already (its scores,
    written over with the replaced model's now, would be found rescored meanwhile and redone
    one by one, uncounted). On PostgreSQL the published versions' rows are locked in share
    mode until the chunk commits: a publish retires a version only after the chunks that
    read it as published, so its snapshot comes after them."""
    q = sa.select(model_versions.c.id).where(
        model_versions.c.status == "published",
        model_versions.c.id.in_(sorted({version_of[s.name] for s in active})),
    )
    if conn.dialect.name == "postgresql":
        q = q.order_by(model_versions.c.id).with_for_update(read=True)
    published = {int(i) for i in conn.execute(q).scalars()}
    return [s for s in active if version_of[s.name] in published]


@dataclass
class Unscored:
    """When the newest event of each lead (of the types the sheets read, timed up to
    ``until``, stored after ``since``: None, whenever) was stored, filled by :func:`_export`
    for a rescoring for decay."""

    since: int | None
    until: int
    newest: dict[str, int] = field(default_factory=dict)


def _from_events(
    new: Sequence[NewScore],
    current: dict[tuple[str, str], dict[str, Any]],
    unscored: dict[str, int],
) -> dict[tuple[str, str], str]:
    """The changes of a rescoring for decay that are not decay's: a lead with events stored
    after its score was written (by when its newest event was stored, in ``unscored``)
    changed for them (``event``); a lead without a score gets its first for its events or,
    without any, for its profile (``profile``). Both were stored without a rescoring (an
    import stopped part way). (An event stamped ahead of its storing, counted once its time
    comes, is time's doing: ``decay``.)"""
    reasons: dict[tuple[str, str], str] = {}
    for n in new:
        key = (n.lead_id, n.sheet)
        old = current.get(key)
        stored_us = unscored.get(n.lead_id)
        if old is None:
            reasons[key] = "profile" if stored_us is None else "event"
        elif stored_us is not None and stored_us > old["updated_us"]:
            reasons[key] = "event"
    return reasons


_frozen_lock = threading.Lock()
_frozen_by = 0  # rescorings under way with gc.freeze in effect (threads of one process)


@contextmanager
def _out_of_gc_passes() -> Iterator[None]:
    """Keep the objects alive now out of the garbage collector's passes (``gc.freeze``) for
    the block, counting the rescorings that run at once in one process: the last to end gives
    them back. Nothing is done when something else froze objects before (not ours to undo)."""
    global _frozen_by
    with _frozen_lock:
        if _frozen_by == 0 and gc.get_freeze_count():
            mine = False
        else:
            mine = True
            if _frozen_by == 0:
                gc.freeze()
            _frozen_by += 1
    try:
        yield
    finally:
        if mine:
            with _frozen_lock:
                _frozen_by -= 1
                if _frozen_by == 0:
                    gc.unfreeze()


def _batch_rows(
    sheets: Sequence[Sheet], prepared: PreparedInputs, t_us: int
) -> list[dict[str, Any]]:
    """The batch evaluator's row of every lead, columns named as by
    :func:`leadscore.scoring.score_run` (prefixed with the sheet's name when there are several)."""
    plans = [plan_for(s.model) for s in sheets]
    con = ibis.duckdb.connect()
    try:
        register_inputs(con, prepared, plans)
        tables = [p.execute(con, t_us) for p in plans]
    finally:
        con.disconnect()
    if len(tables) == 1:
        rows: list[dict[str, Any]] = tables[0].to_pylist()
        return rows
    by_sheet = [{r["lead_id"]: r for r in t.to_pylist()} for t in tables]
    rows = []
    for lead_id in prepared.leads.column("lead_id").to_pylist():
        row: dict[str, Any] = {"lead_id": lead_id}
        for sheet, results in zip(sheets, by_sheet, strict=True):
            row.update(
                {f"{sheet.name}.{k}": v for k, v in results[lead_id].items() if k != "lead_id"}
            )
        rows.append(row)
    return rows


def event_types(sheets: Sequence[Sheet]) -> list[str] | None:
    """The event types the sheets read; None when one needs every event (an inactivity rule
    on any event type)."""
    types: set[str] = set()
    for s in sheets:
        if any(isinstance(r, InactivityRule) and r.events is None for r in s.model.rules):
            return None
        types.update(s.model.event_types)
    return sorted(types)


def _new_score(row: dict[str, Any], sheet: Sheet, t_us: int, prefix: str) -> NewScore:
    groups = {g.id: float(row[f"{prefix}group:{g.id}"]) for g in sheet.model.groups}
    return NewScore(
        row["lead_id"],
        sheet.name,
        sheet.version.id,
        t_us,
        float(row[f"{prefix}score"]),
        float(row[f"{prefix}fit"]),
        float(row[f"{prefix}engagement"]),
        row[f"{prefix}grade"],
        row[f"{prefix}band"],
        bool(row[f"{prefix}mql"]),
        row[f"{prefix}priority"],
        groups,
    )


# A range of lead ids: above the first (None: from the lowest), up to and including the last.
Span = tuple[str | None, str]
_Select = TypeVar("_Select", bound=sa.Select[Any])


def _next_part(
    conn: Connection, after: str | None, part: int
) -> tuple[list[str], bool, Span | None] | None:
    """The next ``part`` lead ids above ``after`` (None: from the lowest), whether more
    follow, and the span to read them by (:func:`_export`); None when no lead is left. A
    store that fits in one part is read whole (span None: a scan in the tables' order,
    which SQLite reads faster than the leads' events found through the index)."""
    ids = _lead_ids_after(conn, after, part + 1)
    more = len(ids) > part
    del ids[part:]
    if not ids:
        return None
    return ids, more, None if after is None and not more else (after, ids[-1])


def _lead_ids_after(conn: Connection, after: str | None, limit: int) -> list[str]:
    """Up to ``limit`` lead ids above ``after`` (None: from the lowest), in order."""
    q = sa.select(leads.c.lead_id).order_by(leads.c.lead_id).limit(limit)
    if after is not None:
        q = q.where(leads.c.lead_id > after)
    return [str(i) for i in conn.execute(q).scalars()]


def _in_span(q: _Select, column: sa.ColumnElement[Any], span: Span | None) -> _Select:
    """``q`` for the rows whose ``column`` (a lead id) is in ``span`` (all of them: None)."""
    if span is None:
        return q
    after, last = span
    q = q.where(column <= last)
    return q if after is None else q.where(column > after)


def _newest_stored(events_read: pa.Table, stored: array[int], unscored: Unscored) -> None:
    """Fill ``unscored.newest`` from the events read and when each was stored (``stored``),
    in Arrow: a dict updated per event cost 2-3 times as much. Usually few events were
    stored after the oldest score was written: only those are grouped."""
    received = pa.Array.from_buffers(pa.int64(), len(stored), [None, pa.py_buffer(stored)])
    ts = events_read.column("ts").cast(pa.int64())
    keep = pc.less_equal(ts, unscored.until)
    if unscored.since is not None:
        keep = pc.and_(keep, pc.greater(received, unscored.since))
    if not pc.any(keep).as_py():
        return
    found = pa.table({"lead_id": events_read.column("lead_id"), "received": received})
    by_lead = found.filter(keep).group_by("lead_id").aggregate([("received", "max")])
    unscored.newest.update(
        zip(
            by_lead.column("lead_id").to_pylist(),
            by_lead.column("received_max").to_pylist(),
            strict=True,
        )
    )


def _export(
    conn: Connection,
    sheets: Sequence[Sheet],
    span: Span | None = None,
    unscored: Unscored | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Leads and the events the sheets read, as the tables the batch evaluator takes: every
    lead's, or those of the leads whose ids are in ``span`` (see :func:`_in_span`).

    Values become text exactly as the per-lead path makes them (``to_text``), so both
    evaluators see the same strings. ``unscored`` is filled in (:class:`Unscored`).
    """
    profiles: dict[str, list[str | None]] = {"lead_id": []}
    n = 0
    q_leads = _in_span(sa.select(leads.c.lead_id, leads.c.profile), leads.c.lead_id, span)
    for lead_id, profile in conn.execute(q_leads):
        profiles["lead_id"].append(lead_id)
        for k, v in profile.items():
            if k == "lead_id":
                continue
            column = profiles.get(k)
            if column is None:
                column = profiles[k] = [None] * n
            column.append(v if type(v) is str else to_text(v))
        n += 1
        for column in profiles.values():
            if len(column) < n:
                column.append(None)
    types = event_types(sheets)
    q = sa.select(
        events.c.lead_id,
        events.c.type,
        events.c.ts_us,
        events.c.item,
        events.c.properties,
        events.c.received_us,
    ).where(events.c.lead_id.is_not(None))
    if span is not None and conn.dialect.name == "sqlite":
        # the part's event ids from the (lead, time) index, then the rows in id order: SQLite
        # reads the table's pages in order rather than one lead's scattered rows after
        # another (300,000 leads in parts: 26.3-26.7 s against 28.2-29.2; PostgreSQL's
        # bitmap scan of the range already reads its pages in order)
        ids = _in_span(sa.select(events.c.id), events.c.lead_id, span)
        q = q.where(events.c.id.in_(ids))
    else:
        q = _in_span(q, events.c.lead_id, span)
    if types is not None:
        q = q.where(events.c.type.in_(types))
    cols: dict[str, list[Any]] = {"lead_id": [], "type": [], "ts": [], "item": []}
    m = 0
    # each event's received_us, as C integers (1,000,000 of them: 8 MB, not 36 as a list)
    stored = array("q") if unscored is not None else None
    for lead_id, etype, ts_us, item, props, received in conn.execute(q):
        if stored is not None:
            stored.append(received)
        cols["lead_id"].append(lead_id)
        cols["type"].append(etype)
        cols["ts"].append(ts_us)
        cols["item"].append(item)
        for k, v in event_fields(etype, item, props).items():
            if k in ("type", "item", "lead_id", "ts"):
                continue
            column = cols.get(k)
            if column is None:
                column = cols[k] = [None] * m
            column.append(v)
        m += 1
        for column in cols.values():
            if len(column) < m:
                column.append(None)
    lead_table = pa.table({k: pa.array(v, pa.string()) for k, v in profiles.items()})
    event_table = pa.table(
        {
            k: pa.array(v, pa.timestamp("us", tz="UTC") if k == "ts" else pa.string())
            for k, v in cols.items()
        }
    )
    if unscored is not None and stored:
        _newest_stored(event_table, stored, unscored)
    return lead_table, event_table
