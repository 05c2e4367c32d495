"""Leads and their events in the store: upserts, identity resolution, reads for scoring.

A lead is found by its ``lead_id``, by its email (lowercased; the oldest lead with that
email when there are several), or through an ``anonymous_id``
that an identify call (or an event carrying both ids) linked to it. Events of an anonymous
visitor are kept with no lead and joined to the lead when the link appears.

A lead first known by its email alone (an event or an upsert with an email and no
``lead_id``) gets the email as its id. When a ``lead_id`` later arrives with that email (the
CRM's upsert, Segment's identify), that email-keyed lead is merged into it: its events,
aliases, outcomes, stage changes, firings and score history move over, profile fields the
lead lacks are filled from it, and it is gone (:func:`upsert_leads`). A Segment ``alias``
whose ``previousId`` is a lead's id merges that lead into its ``userId``'s the same way
(:func:`alias_lead`). The merge is kept (``lead_merges``): an event, upsert or outcome sent
later for the old id goes to the lead it became.
"""

from __future__ import annotations

import hashlib
import json
import sys
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from leadscore.engine.lead import Event
from leadscore.errors import Conflict, NotFound
from leadscore.spec.conditions import to_text
from leadscore.store.db import (
    Journal,
    Statement,
    Write,
    any_of,
    cache_epoch,
    driver_json,
    driver_rows,
    driver_sql,
    from_driver_json,
    journal_of,
    keep_prefetched,
    send_together,
)
from leadscore.store.schema import (
    ID,
    aliases,
    events,
    lead_merges,
    leads,
    outcomes,
    score_history,
    scores,
    stage_changes,
    trigger_firings,
)

__all__ = [
    "STAGES",
    "EventInput",
    "ItemOutcome",
    "LeadInput",
    "ProfileCache",
    "alias_lead",
    "email_key",
    "event_fields",
    "insert_events",
    "lead_events",
    "lead_records",
    "lead_records_statements",
    "link_alias",
    "lock_anonymous",
    "lock_identities",
    "lock_leads",
    "merged_into",
    "newest_event_id",
    "no_lead",
    "upsert_leads",
]

STAGES = (
    "subscriber",
    "lead",
    "mql",
    "sql",
    "opportunity",
    "customer",
    "disqualified",
    "recycled",
)


@dataclass
class LeadInput:
    """A lead to create or update: profile ``fields`` are merged (a ``None`` value removes one)."""

    lead_id: str | None = None
    email: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    stage: str | None = None
    owner: str | None = None


@dataclass
class EventInput:
    type: str
    ts_us: int
    lead_id: str | None = None
    email: str | None = None
    anonymous_id: str | None = None
    item: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None


@dataclass
class ItemOutcome:
    """What became of one item of a request, by its index in the request."""

    index: int
    status: str  # created, updated, accepted, duplicate, anonymous, error
    lead_id: str | None = None
    error: str | None = None
    merged: str | None = None  # the email-keyed lead that this item's email merged into it


# How often a request that met concurrent merges of the leads it names starts again (each time
# needs a new merge to commit within milliseconds: in practice once at most).
RESOLVE_ATTEMPTS = 3


def email_key(value: str | None) -> str | None:
    """An email as leads are found by it (None when blank): trimmed, lower-cased and in
    Unicode's composed form (NFC), so that an ``é`` typed as one character or as ``e`` and a
    combining accent is one email, whichever way it came in (the API, Segment, an import).

    >>> email_key(" Jose\u0301@Example.com ") == "jos\u00e9@example.com"
    True
    """
    if value is None:
        return None
    value = unicodedata.normalize("NFC", value.strip().lower())
    return value or None


def _find_by_email(conn: Connection, emails: Iterable[str]) -> dict[str, str]:
    """The lead each email finds. Several leads may share an email (CRMs hold duplicates);
    an email then finds the oldest of them."""
    wanted = list(set(emails))
    found: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        q = (
            sa.select(leads.c.email, leads.c.lead_id)
            .where(leads.c.email.in_(wanted[start : start + 500]))
            .order_by(leads.c.created_us, leads.c.lead_id)
        )
        for e, i in conn.execute(q):
            found.setdefault(str(e), str(i))
    return found


def _in_byte_order(column: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """A lead id column ordered as Python sorts strings (by code point: the "C" collation of
    UTF-8), whatever the database's collation: lockers sort ids in Python, split them into
    chunks and lock each chunk in this order, which must be one global order."""
    return sa.collate(column, "C")


# Statements of the ingest path, built once (building a statement costs more than running
# it on a few rows); ``ids`` is a list expanded at execution.
_IDS: sa.BindParameter[list[str]] = sa.bindparam("ids", expanding=True)
_MERGED_INTO = sa.select(lead_merges.c.lead_id, lead_merges.c.into_id).where(
    lead_merges.c.lead_id.in_(_IDS)
)
_LEAD_IDS = sa.select(leads.c.lead_id).where(leads.c.lead_id.in_(_IDS))
_LEAD_IDS_FOR_UPDATE = _LEAD_IDS.order_by(_in_byte_order(leads.c.lead_id)).with_for_update()
_LEAD_IDS_KEY_SHARE = _LEAD_IDS.order_by(_in_byte_order(leads.c.lead_id)).with_for_update(
    key_share=True
)
_LEADS = sa.select(leads).where(leads.c.lead_id.in_(_IDS))
_LEADS_FOR_UPDATE = _LEADS.order_by(_in_byte_order(leads.c.lead_id)).with_for_update()
# to the driver as it is (see leadscore.store.db.driver_sql). A retry racing its original (the
# same message id in two requests at once): the second insert waits for the first and skips
# the row instead of failing the request.
_INSERT_EVENTS = (
    "INSERT INTO events (lead_id, anonymous_id, type, ts_us, item, properties, message_id,"
    " received_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING"
)


def merged_into(conn: Connection, lead_ids: Iterable[str]) -> dict[str, str]:
    """The leads among ``lead_ids`` that were merged away, each with the lead it became."""
    wanted = sorted(set(lead_ids))
    found: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        rows = conn.execute(_MERGED_INTO, {"ids": wanted[start : start + 500]})
        found.update({str(a): str(b) for a, b in rows})
    return found


def no_lead(conn: Connection, lead_id: str) -> NotFound:
    """The error for a lead id that finds no lead, naming the lead it was merged into."""
    into = merged_into(conn, [lead_id]).get(lead_id)
    if into is None:
        return NotFound(f"no lead {lead_id!r}")
    return NotFound(f"no lead {lead_id!r}: it was merged into {into!r}")


def lock_leads(conn: Connection, lead_ids: Iterable[str], *, share: bool = False) -> set[str]:
    """The ids among ``lead_ids`` whose leads exist, their rows locked until the transaction
    ends (PostgreSQL; SQLite writers are serialised anyway), in lead id order like every other
    locker. A row deleted by a merge that committed while this waited is not among them.
    ``share``: only against a merge deleting the row (others may update it meanwhile).
    Leads this transaction has locked already (for update) are not asked for again."""
    wanted = sorted(set(lead_ids))
    found: set[str] = set()
    if conn.dialect.name == "sqlite":
        q = _LEAD_IDS
        held: set[str] = set()
    else:
        q = _LEAD_IDS_KEY_SHARE if share else _LEAD_IDS_FOR_UPDATE
        held = _locked_here(conn)
        if held.issuperset(wanted):  # locked rows exist: no merge can have deleted them
            return set(wanted)
    for start in range(0, len(wanted), 500):
        found.update(str(i) for (i,) in conn.execute(q, {"ids": wanted[start : start + 500]}))
    if q is _LEAD_IDS_FOR_UPDATE and not conn.in_nested_transaction():
        held.update(found)  # (under a savepoint, a rollback to it may release them)
    return found


_LOCKED = "leadscore.locked_leads"


def _locked_here(conn: Connection) -> set[str]:
    """The leads the transaction under way on ``conn`` is known to hold locked for update
    (PostgreSQL): locked by :func:`lock_leads` outside any savepoint, or under one since
    released."""
    txn = conn.get_transaction()
    if txn is None:  # none begun yet (autobegin on the first statement): nothing known
        return set()
    record = conn.info.get(_LOCKED)
    if record is None or record[0] is not txn:
        record = (txn, set())
        conn.info[_LOCKED] = record
    locked: set[str] = record[1]
    return locked


def _existing(
    conn: Connection, lead_ids: Iterable[str], *, lock: bool = False
) -> dict[str, sa.RowMapping]:
    """The leads' rows; with ``lock``, locked until the transaction ends (PostgreSQL; SQLite
    writers are serialised anyway), in lead id order like every other locker."""
    wanted = sorted(set(lead_ids))
    found: dict[str, sa.RowMapping] = {}
    q = _LEADS_FOR_UPDATE if lock and conn.dialect.name != "sqlite" else _LEADS
    for start in range(0, len(wanted), 500):
        rows = conn.execute(q, {"ids": wanted[start : start + 500]}).mappings()
        found.update({r["lead_id"]: r for r in rows})
    return found


# A lead found by an email alone (none has it yet) takes the email as its id, which is
# shorter: a longer email cannot name a new lead.
_LONG_EMAIL = (
    f"an email longer than {ID} characters cannot be a new lead's id: send a lead_id with it"
)


def upsert_leads(conn: Connection, items: Sequence[LeadInput], now_us: int) -> list[ItemOutcome]:
    """Create or update leads; each item's outcome in order (``error`` items change nothing)."""
    emails = [e for i in items if (e := email_key(i.email))]
    lock_identities(conn, emails)  # see there: a concurrent event by email waits for a merge
    by_email = _find_by_email(conn, emails)
    # An email the store does not know yet that an item of this request claims for a lead id:
    # the request's items with that email alone are that lead's (rather than an email-keyed
    # lead made here and left beside the one that claims its email).
    claimed_here: dict[str, str] = {}
    for item in items:
        email = email_key(item.email)
        valid = len(item.lead_id or "") <= ID and (
            item.stage is None or item.stage.strip().lower() in STAGES
        )  # an item refused below claims nothing
        if item.lead_id and email and email not in by_email and valid:
            claimed_here.setdefault(email, item.lead_id)
    outcomes: list[ItemOutcome] = []
    resolved: list[tuple[int, str, LeadInput]] = []
    for index, item in enumerate(items):
        email = email_key(item.email)
        lead_id = (
            item.lead_id
            or (by_email.get(email) or claimed_here.get(email) if email else None)
            or email
        )
        if lead_id is None:
            outcomes.append(ItemOutcome(index, "error", error="a lead needs a lead_id or an email"))
            continue
        if len(lead_id) > ID:
            outcomes.append(ItemOutcome(index, "error", error=_LONG_EMAIL))
            continue
        if item.stage is not None and item.stage.strip().lower() not in STAGES:
            error = f"unknown stage {item.stage!r}; stages are {', '.join(STAGES)}"
            outcomes.append(ItemOutcome(index, "error", lead_id, error))
            continue
        if email:
            by_email.setdefault(email, lead_id)
        resolved.append((index, lead_id, item))
        outcomes.append(ItemOutcome(index, "updated", lead_id))
    resolved = _follow(merged_into(conn, (lid for _, lid, _ in resolved)), resolved, outcomes)
    for attempt in range(RESOLVE_ATTEMPTS):
        savepoint = conn.begin_nested() if conn.dialect.name != "sqlite" and resolved else None
        ids = sorted({lid for _, lid, _ in resolved})
        created = _placeholders(conn, ids, now_us)
        # Email-keyed leads that a lead id now claims (an email finds one lead: the first claim).
        claims: dict[str, str] = {}
        for _, lead_id, item in resolved:
            email = email_key(item.email)
            if item.lead_id and email and email != lead_id:
                claims.setdefault(email, lead_id)
        taken = set(ids)
        stubs = {
            stub: email
            for stub, email in _email_keyed(conn, [e for e in claims if e not in taken]).items()
            if stub not in taken
        }
        # Locked: a merge must read the profile that the previous merge wrote, not the one
        # before; all in one pass in lead id order, as every locker does.
        existing = _existing(conn, [*ids, *stubs], lock=True)
        if savepoint is None:
            break
        late = _merged_meanwhile(conn, savepoint, ids, existing.keys(), created, attempt)
        if not late:
            break
        resolved = _follow(late, resolved, outcomes)
    merged_targets: set[str] = set()
    for stub in sorted(stubs):
        if stub in existing:
            target = claims[stubs[stub]]
            # Only the first stub merged into a new lead gives it its stage and scores.
            fresh = target in created and target not in merged_targets
            _merge(conn, existing[stub], target, now_us, fresh=fresh)
            merged_targets.add(target)
            for index, lead_id, item in resolved:
                if lead_id == target and email_key(item.email) == stubs[stub]:
                    outcomes[index].merged = stub
    existing = _existing(conn, ids)
    state: dict[str, dict[str, Any]] = {
        lid: {
            "profile": dict(row["profile"]),
            "email": row["email"],
            "stage": row["stage"],
            "owner": row["owner"],
        }
        for lid, row in existing.items()
    }
    for index, lead_id, item in resolved:
        if lead_id in created:
            outcomes[index].status = "created"
        s = state[lead_id]
        for k, v in item.fields.items():
            if v is None:
                s["profile"].pop(k, None)
            else:
                s["profile"][k] = v
        email = email_key(item.email)
        if email:
            s["email"] = email
            s["profile"]["email"] = email
        if item.owner is not None:
            s["owner"] = item.owner or None
        if item.stage is not None:
            s["stage"] = item.stage.strip().lower()
    for lead_id, s in state.items():
        values = {
            "profile": s["profile"],
            "email": s["email"],
            "owner": s["owner"],
            "updated_us": now_us,
        }
        if s["stage"] != existing[lead_id]["stage"]:
            values.update(stage=s["stage"], stage_us=now_us)
            # Recorded like every stage change (lifecycle.set_stage); a new lead that took over
            # an email-keyed lead's stage changes it too.
            if lead_id not in created or lead_id in merged_targets:
                conn.execute(
                    stage_changes.insert().values(
                        lead_id=lead_id,
                        from_stage=existing[lead_id]["stage"],
                        to_stage=s["stage"],
                        at_us=now_us,
                        reason="lead update",
                        actor=None,
                    )
                )
        conn.execute(leads.update().where(leads.c.lead_id == lead_id).values(**values))
        _profile_changed(conn, lead_id)
    return outcomes


def _profile_changed(conn: Connection, lead_id: str) -> None:
    """A lead's profile changed: a journaled transaction says so in its journal, for the
    caches that keep profiles (:class:`ProfileCache`) to read it again."""
    journal = journal_of(conn)
    if journal is not None:
        journal.changed(lead_id)


_EXISTING = "leadscore_existing"  # the savepoint of _lock_existing
# insert_events sends the events' insert and the reads after it with the leads' locks for at
# most this many leads (single events grouped, small batches)
AHEAD_LEADS = 32


def _lock_existing(
    conn: Connection,
    ids: Sequence[str],
    writes: Sequence[Write] = (),
    reads: Sequence[Statement] = (),
) -> bool:
    """PostgreSQL: take a savepoint and lock the rows of the leads ``ids`` (sorted), then
    run ``writes`` and ``reads``, all in one round trip; whether every one of the leads
    exists: their locks are then the transaction's (the savepoint left as it is), the writes
    done and the rows of the reads kept for them (:func:`~leadscore.store.db.keep_prefetched`).
    Most events are for leads that exist. One missing is new, or was merged away meanwhile:
    back to the savepoint, which undoes the writes and lets go of the rows locked since, for
    the way that creates the new leads and locks every lead in lead id order."""
    # _LEAD_IDS_FOR_UPDATE (lock_leads' statement) as the driver takes it: a pipeline sends
    # what psycopg is given, not SQLAlchemy's statements (same order, same chunks of 500)
    lock = 'SELECT lead_id FROM leads WHERE {} ORDER BY lead_id COLLATE "C" FOR UPDATE'
    locks: list[Statement] = [(f"SAVEPOINT {_EXISTING}", ())]
    for start in range(0, len(ids), 500):
        test, params = any_of(conn, "lead_id", ids[start : start + 500])
        locks.append((driver_sql(conn, lock.format(test)), params))
    locked, read = send_together(conn, locks, writes, reads)
    found = {str(i) for rows in locked for (i,) in rows}
    if len(found) < len(ids):
        conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_EXISTING}")
        return False
    _locked_here(conn).update(found)
    keep_prefetched(conn, reads, read)
    return True


def _merged_meanwhile(
    conn: Connection,
    savepoint: sa.NestedTransaction,
    ids: Iterable[str],
    present: Collection[str],
    created: Collection[str],
    attempt: int,
) -> dict[str, str]:
    """PostgreSQL, once a request's leads are created and locked: those of ``ids`` that a
    merge committed since they were looked up took away (their rows are gone, or were just
    re-created), with the leads they became. None: the savepoint is released. Some: the
    request rolls back to it, to start again with the leads they became (locking those now,
    out of lead id order, could deadlock); a 409 after :data:`RESOLVE_ATTEMPTS` tries."""
    late = merged_into(conn, [lid for lid in ids if lid not in present or lid in created])
    if not late:
        savepoint.commit()
        return late
    savepoint.rollback()
    if attempt == RESOLVE_ATTEMPTS - 1:
        raise Conflict("leads were merged while this request ran; send it again")
    return late


def _placeholders(conn: Connection, ids: Sequence[str], now_us: int) -> set[str]:
    """Create the missing leads among ``ids`` (sorted) as placeholders; the ids created.

    Missing leads are created before anything is read or locked, in lead id order: two
    requests creating the same lead at once then meet on its row (the second waits for the
    first) instead of one failing on the primary key, and concurrent batches lock in the same
    order."""
    created: set[str] = set()
    for start in range(0, len(ids), 500):
        placeholders: list[dict[str, Any]] = [
            {
                "lead_id": lid,
                "email": None,
                "profile": {},
                "stage": "lead",
                "stage_us": now_us,
                "owner": None,
                "created_us": now_us,
                "updated_us": now_us,
            }
            for lid in ids[start : start + 500]
        ]
        inserted = conn.execute(
            _insert(conn, leads)
            .values(placeholders)
            .on_conflict_do_nothing(index_elements=[leads.c.lead_id])
            .returning(leads.c.lead_id)
        )
        created.update(str(lid) for (lid,) in inserted)
    return created


def _follow(
    moved: Mapping[str, str],
    resolved: list[tuple[int, str, LeadInput]],
    outcomes: list[ItemOutcome],
) -> list[tuple[int, str, LeadInput]]:
    """The items with the lead ids of merged-away leads replaced by the leads they became."""
    if not moved:
        return resolved
    for index, lead_id, _ in resolved:
        outcomes[index].lead_id = moved.get(lead_id, lead_id)
    return [(index, moved.get(lead_id, lead_id), item) for index, lead_id, item in resolved]


def _email_keyed(conn: Connection, emails: Sequence[str]) -> dict[str, str]:
    """The leads with one of ``emails`` whose id is their email (as emails are matched:
    :func:`email_key`), each with its email: leads first known by email alone. (By the
    email, not the id: a store from before emails were NFC-normalized keeps such a lead's id
    as it came, its email normalized by migration 0008.)"""
    found: dict[str, str] = {}
    for start in range(0, len(emails), 500):
        q = sa.select(leads.c.lead_id, leads.c.email).where(
            leads.c.email.in_(emails[start : start + 500])
        )
        found.update(
            {str(i): str(e) for i, e in conn.execute(q) if i == e or email_key(str(i)) == e}
        )
    return found


def _merge(conn: Connection, stub: sa.RowMapping, target: str, now_us: int, *, fresh: bool) -> None:
    """Merge the lead ``stub`` (an email-keyed lead, or one a Segment alias names by its old
    id: :func:`alias_lead`) into ``target`` (whose row exists and is locked, as is the stub's).

    Everything recorded for the stub moves to the target. A ``fresh`` target (created by this
    upsert) takes over the stub's stage, owner, creation time and current scores, so that its
    score history goes on where the stub's stopped and a band the stub had already entered is
    not entered (and announced) twice; an older target keeps its own and is rescored by the
    caller from all the events. The merge is recorded in ``lead_merges``.
    """
    old = stub["lead_id"]
    row = conn.execute(sa.select(leads).where(leads.c.lead_id == target)).mappings().one()
    profile = {**dict(stub["profile"]), **dict(row["profile"])}
    values: dict[str, Any] = {"profile": profile, "email": row["email"] or stub["email"]}
    if fresh:
        values.update(
            stage=stub["stage"],
            stage_us=stub["stage_us"],
            created_us=stub["created_us"],
            owner=row["owner"] or stub["owner"],
        )
        conn.execute(scores.update().where(scores.c.lead_id == old).values(lead_id=target))
    else:
        values["owner"] = row["owner"] or stub["owner"]
        conn.execute(scores.delete().where(scores.c.lead_id == old))
    conn.execute(leads.update().where(leads.c.lead_id == target).values(**values))
    # An outcome the target already has (same outcome at the same time) is not recorded twice.
    mine = outcomes.alias("mine")
    conn.execute(
        outcomes.delete().where(
            outcomes.c.lead_id == old,
            sa.exists().where(
                mine.c.lead_id == target,
                mine.c.outcome == outcomes.c.outcome,
                mine.c.ts_us == outcomes.c.ts_us,
            ),
        )
    )
    for table in (events, aliases, outcomes, stage_changes, trigger_firings, score_history):
        conn.execute(table.update().where(table.c.lead_id == old).values(lead_id=target))
    journal = journal_of(conn)
    if journal is not None:  # the events of both changed
        journal.changed(old)
        journal.changed(target)
    conn.execute(leads.delete().where(leads.c.lead_id == old))
    conn.execute(lead_merges.update().where(lead_merges.c.into_id == old).values(into_id=target))
    conn.execute(lead_merges.delete().where(lead_merges.c.lead_id == old))
    conn.execute(lead_merges.insert().values(lead_id=old, into_id=target, merged_us=now_us))


def alias_lead(
    conn: Connection, user_id: str, previous_id: str, now_us: int
) -> tuple[ItemOutcome, bool]:
    """Segment's ``alias``: ``previous_id`` is another id of the lead ``user_id`` (created if
    need be). A lead stored under ``previous_id`` (or the lead it was merged into) is merged
    into ``user_id``'s as an email-keyed lead is into the lead id that claims its email
    (:func:`_merge`): its events, anonymous ids, outcomes, stage changes, firings and score
    history move over, profile fields the lead lacks are filled from it, a lead created by
    this call takes over its stage, owner and scores, and what is sent later for the old id
    goes to the lead it became. ``previous_id`` is also linked as an anonymous id, and the
    events kept for it join the lead (:func:`link_alias`).

    The item's outcome (``merged``: the lead id merged away, if any), and whether events
    joined the lead (it is to be rescored)."""
    moved = merged_into(conn, [user_id, previous_id])
    target, old = moved.get(user_id, user_id), moved.get(previous_id, previous_id)
    # As a merge by upsert: the identities that find the old lead first (its email, and its
    # id as an outcome's lock names it: lifecycle.add_outcomes), then the leads' rows.
    found = _existing(conn, [old]).get(old) if old != target else None
    emails = {old, email_key(found["email"]) or old} if found is not None else set()
    lock_identities(conn, emails, [previous_id])
    for attempt in range(RESOLVE_ATTEMPTS):
        savepoint = conn.begin_nested() if conn.dialect.name != "sqlite" else None
        created = _placeholders(conn, [target], now_us)
        # in one pass in lead id order, as every locker does
        existing = _existing(conn, {target, old}, lock=True)
        if savepoint is None:
            break
        late = _merged_meanwhile(conn, savepoint, {target, old}, existing, created, attempt)
        if not late:
            break
        target, old = late.get(target, target), late.get(old, old)
    outcome = ItemOutcome(0, "created" if target in created else "updated", target)
    joined = False
    if old != target and old in existing:
        _merge(conn, existing[old], target, now_us, fresh=target in created)
        outcome.merged = old
        joined = True
    if link_alias(conn, previous_id, target, now_us):
        joined = True
    return outcome, joined


def _insert(conn: Connection, table: sa.Table) -> Any:
    """An INSERT with the dialect's ON CONFLICT clause available."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def _known(conn: Connection, lead_ids: Iterable[str]) -> set[str]:
    """The ids among ``lead_ids`` whose leads exist (a lead is never deleted but by a merge)."""
    wanted = sorted(set(lead_ids))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        test, params = any_of(conn, "lead_id", wanted[start : start + 500])
        sql = driver_sql(conn, f"SELECT lead_id FROM leads WHERE {test}")
        found.update(str(i) for (i,) in driver_rows(conn, sql, params))
    return found


def _ensure_leads(conn: Connection, wanted: Mapping[str, str | None], now_us: int) -> set[str]:
    """Create the leads among ``wanted`` (lead id -> email) that do not exist yet; their ids."""
    ids = sorted(wanted)
    existing = _known(conn, ids)  # ids only: the profiles are read later, once
    missing = [lid for lid in ids if lid not in existing]
    created: set[str] = set()
    for start in range(0, len(missing), 500):
        # Two requests may bring the first events of the same new lead at once: the second
        # insert finds the first one's row (after waiting for its commit) and does nothing.
        inserted = conn.execute(
            _insert(conn, leads)
            .values(
                [
                    {
                        "lead_id": lid,
                        "email": wanted[lid],
                        "profile": {"email": wanted[lid]} if wanted[lid] else {},
                        "stage": "lead",
                        "stage_us": now_us,
                        "owner": None,
                        "created_us": now_us,
                        "updated_us": now_us,
                    }
                    for lid in missing[start : start + 500]
                ]
            )
            .on_conflict_do_nothing(index_elements=[leads.c.lead_id])
            .returning(leads.c.lead_id)
        )
        created.update(str(lid) for (lid,) in inserted)
    return created


# lock_identities' keys map to this many advisory locks (in a namespace of their own): a
# transaction then holds at most that many, however many emails a bulk import's chunk has
# (PostgreSQL's lock table holds max_locks_per_transaction x max_connections, 6,400 by
# default, for every session at once).
IDENTITY_LOCK_SLOTS = 1024
IDENTITY_LOCK_SPACE = 0x4C53  # "LS"


def _slot(key: str) -> int:
    """The advisory lock of an identity key: the same in every process."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % IDENTITY_LOCK_SLOTS


def lock_identities(
    conn: Connection,
    emails: Iterable[str] = (),
    anonymous_ids: Iterable[str] = (),
    *,
    shared_emails: Iterable[str] = (),
    shared_anonymous_ids: Iterable[str] = (),
) -> None:
    """Serialise the writers that resolve these emails or anonymous ids (PostgreSQL; SQLite
    writers are serialised anyway). An event stored for an anonymous id and the identify that
    links it must not miss each other, or the event would stay without its lead; an event by
    email and the upsert that merges that email's lead into a lead id likewise, or the event
    would land on the lead being merged away.

    ``emails`` and ``anonymous_ids`` are locked exclusively: a writer that may merge or link
    them. ``shared_*`` are locked in share mode: a writer that only resolves them (ingest), so
    that two of those never wait for each other, however many emails they carry. Taken before
    any lead row lock, all at once in one global order (of the slots the keys hash to), so
    that lockers cannot deadlock; a transaction may take a lock it holds again (but not turn a
    shared one exclusive: a writer says up front which ids it may link).
    """
    if conn.dialect.name == "sqlite":
        return
    exclusive: dict[int, bool] = {}
    for e in shared_emails:
        exclusive.setdefault(_slot(f"email:{e}"), False)
    for a in shared_anonymous_ids:
        exclusive.setdefault(_slot(f"anon:{a}"), False)
    for e in emails:
        exclusive[_slot(f"email:{e}")] = True
    for a in anonymous_ids:
        exclusive[_slot(f"anon:{a}")] = True
    if exclusive:
        slots = sorted(exclusive)
        conn.execute(
            sa.text(
                "SELECT CASE WHEN x THEN pg_advisory_xact_lock(:space, s) "
                "ELSE pg_advisory_xact_lock_shared(:space, s) END "
                "FROM (SELECT s, x FROM unnest(CAST(:slots AS integer[]), "
                "CAST(:modes AS boolean[])) AS t(s, x) ORDER BY s) AS ordered"
            ),
            {"space": IDENTITY_LOCK_SPACE, "slots": slots, "modes": [exclusive[s] for s in slots]},
        )


def lock_anonymous(conn: Connection, anonymous_ids: Iterable[str]) -> None:
    """:func:`lock_identities` for anonymous ids alone."""
    lock_identities(conn, anonymous_ids=anonymous_ids)


def link_alias(conn: Connection, anonymous_id: str, lead_id: str, now_us: int) -> bool:
    """Link an anonymous id to a lead and give it the events kept for that id.

    Returns whether events moved to the lead. An id already linked stays with its first lead.
    """
    lock_anonymous(conn, [anonymous_id])
    row = conn.execute(
        sa.select(aliases.c.lead_id).where(aliases.c.anonymous_id == anonymous_id)
    ).first()
    if row is None:
        conn.execute(
            aliases.insert().values(anonymous_id=anonymous_id, lead_id=lead_id, created_us=now_us)
        )
    elif row[0] != lead_id:
        return False
    moved = conn.execute(
        events.update()
        .where(events.c.anonymous_id == anonymous_id, events.c.lead_id.is_(None))
        .values(lead_id=lead_id)
    )
    journal = journal_of(conn)
    if journal is not None and moved.rowcount:
        journal.changed(lead_id)
    return bool(moved.rowcount)


def insert_events(
    conn: Connection,
    items: Sequence[EventInput],
    now_us: int,
    reads_after: Callable[[Sequence[str]], Sequence[Statement]] | None = None,
) -> tuple[list[ItemOutcome], set[str]]:
    """Store events idempotently (by ``message_id``); outcomes, and the leads that got events.
    ``reads_after`` (PostgreSQL): the reads that will follow for these leads (sorted), sent
    with their locks and the events' insert when that is possible, their rows kept for them
    (:func:`~leadscore.store.db.keep_prefetched`)."""
    # The merges of leads named by id are looked up here, before the identity locks below (a
    # merge under way holds its email's): one committing in between is met when the leads
    # are locked, at the cost of a savepoint's rollback or a run again (both rare).
    named = sorted({i.lead_id for i in items if i.lead_id})
    seen, moved = _seen_and_moved(conn, [i.message_id for i in items if i.message_id], named)
    emails = [e for i in items if (e := email_key(i.email))]
    # Exclusive for what this may claim: the email of an event that creates its lead (by id,
    # with that email), an anonymous id that it links to a lead; shared for what it only
    # resolves (most events), so that ingest does not wait for ingest.
    with_email = {i.lead_id: e for i in items if i.lead_id and (e := email_key(i.email))}
    exist = _known(conn, with_email) if with_email and conn.dialect.name != "sqlite" else set()
    claiming = {e for lid, e in with_email.items() if lid not in exist}
    # an anonymous id named beside a lead id or an email is linked to that lead (below)
    linking = {i.anonymous_id for i in items if i.anonymous_id and (i.lead_id or i.email)}
    lock_identities(
        conn,
        claiming,
        linking,
        shared_emails=set(emails) - claiming,
        shared_anonymous_ids={i.anonymous_id for i in items if i.anonymous_id} - linking,
    )
    by_email = _find_by_email(conn, emails)
    anon = list({i.anonymous_id for i in items if i.anonymous_id and not i.lead_id})
    linked: dict[str, str] = {}
    for start in range(0, len(anon), 500):
        q = sa.select(aliases.c.anonymous_id, aliases.c.lead_id).where(
            aliases.c.anonymous_id.in_(anon[start : start + 500])
        )
        linked.update({a: lid for a, lid in conn.execute(q)})
    outcomes: list[ItemOutcome] = []
    rows: list[dict[str, Any]] = []
    wanted: dict[str, str | None] = {}
    links: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        if item.message_id and item.message_id in seen:
            outcomes.append(ItemOutcome(index, "duplicate"))
            continue
        if item.message_id:
            seen.add(item.message_id)
        email = email_key(item.email)
        lead_id = item.lead_id or (by_email.get(email) if email else None) or email
        if lead_id is not None and len(lead_id) > ID:
            outcomes.append(ItemOutcome(index, "error", error=_LONG_EMAIL))
            continue
        if lead_id is None and item.anonymous_id:
            lead_id = linked.get(item.anonymous_id)
        if lead_id is not None:
            wanted.setdefault(lead_id, email)
            if email:
                by_email.setdefault(email, lead_id)
            if (
                item.anonymous_id
                and (item.lead_id or email)  # named by both: linked, unless it is already
                and linked.get(item.anonymous_id) != lead_id
            ):
                links.append((item.anonymous_id, lead_id))
        elif not item.anonymous_id:
            outcomes.append(
                ItemOutcome(index, "error", error="an event needs a lead_id, email or anonymous_id")
            )
            continue
        rows.append(
            {
                "lead_id": lead_id,
                "anonymous_id": item.anonymous_id,
                "type": item.type,
                "ts_us": item.ts_us,
                "item": item.item,
                "properties": item.properties,
                "message_id": item.message_id,
                "received_us": now_us,
            }
        )
        outcomes.append(ItemOutcome(index, "accepted" if lead_id else "anonymous", lead_id))
    # Sent for a lead that was merged away: goes to the lead it became (the leads named by
    # id were looked up with the message ids, those found by email or alias are now).
    asked = set(named)
    moved.update(merged_into(conn, [lid for lid in wanted if lid not in asked]))
    wanted = _redirect(
        {lid: into for lid, into in moved.items() if lid in wanted}, wanted, rows, outcomes, links
    )
    stored = False  # the events inserted with the leads' locks
    for attempt in range(RESOLVE_ATTEMPTS):
        if conn.dialect.name == "sqlite" or not wanted:
            _ensure_leads(conn, wanted, now_us)
            break
        # PostgreSQL: lock the leads' rows (in lead id order, in one pass), so that a merge
        # that starts now waits for these events and then moves them along.
        if attempt == 0:
            # The events' insert and the reads after it too, unless a journal counts the
            # events (SQLite's writer: not here), or there are so many leads that one of them
            # being new (all of that to do again) costs more than the round trips saved.
            ids = sorted(wanted)
            ahead = len(ids) <= AHEAD_LEADS and journal_of(conn) is None
            insert: list[Write] = []
            if rows and ahead:
                insert.append((driver_sql(conn, _INSERT_EVENTS), _event_params(rows)))
            after = reads_after(ids) if reads_after is not None and ahead and not links else ()
            if _lock_existing(conn, ids, insert, after):
                stored = bool(insert)  # (all of them exist: the way below comes to that,
                break  # in four round trips)
        savepoint = conn.begin_nested()
        created = _ensure_leads(conn, wanted, now_us)
        present = lock_leads(conn, wanted)
        late = _merged_meanwhile(conn, savepoint, wanted, present, created, attempt)
        if not late:
            if not conn.in_nested_transaction():  # released: the locks are the transaction's
                _locked_here(conn).update(present)
            break
        wanted = _redirect(late, wanted, rows, outcomes, links)
    if rows and not stored:
        params = _event_params(rows)
        journal = journal_of(conn)
        before = newest_event_id(conn) if journal is not None else 0
        inserted = conn.exec_driver_sql(driver_sql(conn, _INSERT_EVENTS), params).rowcount
        if journal is not None:
            _journal_events(journal, params, before, inserted, newest_event_id(conn))
    touched = set(wanted)
    for anonymous_id, lead_id in links:
        if link_alias(conn, anonymous_id, lead_id, now_us):
            touched.add(lead_id)
    return outcomes, touched


def _event_params(rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """The rows of events to insert as _INSERT_EVENTS takes them."""
    return [
        (
            r["lead_id"],
            r["anonymous_id"],
            r["type"],
            r["ts_us"],
            r["item"],
            driver_json(r["properties"]),
            r["message_id"],
            r["received_us"],
        )
        for r in rows
    ]


def _seen_and_moved(
    conn: Connection, message_ids: Sequence[str], lead_ids: Sequence[str]
) -> tuple[set[str], dict[str, str]]:
    """The ``message_ids`` stored already, and the ``lead_ids`` merged away with the leads
    they became: one statement (per 500 of each) for both."""
    seen: set[str] = set()
    moved: dict[str, str] = {}
    for start in range(0, max(len(message_ids), len(lead_ids)), 500):
        messages = message_ids[start : start + 500]
        leads_ = lead_ids[start : start + 500]
        parts: list[str] = []
        params: tuple[Any, ...] = ()
        if messages:
            test, more = any_of(conn, "message_id", messages)
            parts.append(f"SELECT 0, message_id, CAST(NULL AS TEXT) FROM events WHERE {test}")
            params += more
        if leads_:
            test, more = any_of(conn, "lead_id", leads_)
            parts.append(f"SELECT 1, lead_id, into_id FROM lead_merges WHERE {test}")
            params += more
        sql = driver_sql(conn, " UNION ALL ".join(parts))
        for kind, key, into in driver_rows(conn, sql, params):
            if kind == 0:
                seen.add(str(key))
            else:
                moved[str(key)] = str(into)
    return seen, moved


def newest_event_id(conn: Connection) -> int:
    """The largest event id stored (0: none)."""
    return int(conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM events").scalar_one())


def _journal_events(
    journal: Journal, params: list[tuple[Any, ...]], before: int, inserted: int, after: int
) -> None:
    """Record the inserted events in the journal, with their ids. SQLite gives a new row the
    id after the largest (the write lock held, no one else inserts), so when every row went
    in and the largest id grew by their number, they took the ids after ``before`` in order.
    Otherwise the journal is broken and the caches read the database."""
    if inserted != len(params) or after - before != len(params):
        journal.broken = True
        return
    for i, (lead_id, _anon, etype, ts_us, item, text, message_id, _r) in enumerate(params):
        if lead_id is not None:
            journal.added(lead_id, (ts_us, before + 1 + i, etype, item, text, message_id))


def _redirect(
    moved: Mapping[str, str],
    wanted: dict[str, str | None],
    rows: list[dict[str, Any]],
    outcomes: list[ItemOutcome],
    links: list[tuple[str, str]],
) -> dict[str, str | None]:
    """Events meant for merged-away leads given to the leads they became (in place); the
    leads wanted then."""
    if not moved:
        return wanted
    for row in rows:
        row["lead_id"] = moved.get(row["lead_id"], row["lead_id"])
    for outcome in outcomes:
        if outcome.lead_id is not None:
            outcome.lead_id = moved.get(outcome.lead_id, outcome.lead_id)
    links[:] = [(anonymous_id, moved.get(lid, lid)) for anonymous_id, lid in links]
    after: dict[str, str | None] = {}
    for lead_id, email in wanted.items():
        after.setdefault(moved.get(lead_id, lead_id), email)
    return after


def _flatten(prefix: str, value: Any, out: dict[str, str | None]) -> None:
    if isinstance(value, dict):
        out[prefix] = json.dumps(value, separators=(",", ":"), sort_keys=True)
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, list):
        out[prefix] = json.dumps(value, separators=(",", ":"))
    else:
        out[prefix] = to_text(value)


def event_fields(
    etype: str, item: str | None, properties: Mapping[str, Any]
) -> dict[str, str | None]:
    """The fields a ``where`` condition sees: properties as text (nested ones also as
    ``a.b``), plus ``type`` and ``item``."""
    out: dict[str, str | None] = {}
    for k, v in properties.items():
        if type(v) is str:
            out[k] = v
        else:
            _flatten(k, v, out)
    out["type"] = etype
    out["item"] = item
    return out


def lead_records(conn: Connection, lead_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The profile of each lead as the evaluators see it (fields plus ``lead_id``)."""
    out: dict[str, dict[str, Any]] = {}
    for sql, params in lead_records_statements(conn, lead_ids):
        for lid, profile in driver_rows(conn, sql, params):
            out[lid] = {**from_driver_json(profile), "lead_id": lid}
    return out


def lead_records_statements(conn: Connection, lead_ids: Iterable[str]) -> list[Statement]:
    """The statements :func:`lead_records` runs (for :func:`~leadscore.store.db.prefetched`)."""
    wanted = sorted(set(lead_ids))
    out: list[Statement] = []
    for start in range(0, len(wanted), 500):
        test, params = any_of(conn, "lead_id", wanted[start : start + 500])
        out.append((driver_sql(conn, f"SELECT lead_id, profile FROM leads WHERE {test}"), params))
    return out


_INTERN_CHARS = 64


class ProfileCache:
    """The profile fields some active sheet reads, of up to ``max_leads`` recently rescored
    leads (about 330 bytes a lead with the default model and the sample data's profiles),
    for rescorings inside one SQLite writer's cache epoch (see
    :class:`leadscore.store.db.Journal`): its journaled transactions, or the scoring
    process's reads under :func:`leadscore.store.db.writers_epoch`.

    Why a kept profile is current: within an epoch, nothing but the writer's journaled
    transactions has committed, and those change no profile but a new lead's (not kept yet)
    or one they mark changed in the journal (:func:`_profile_changed`; a merge marks both
    leads, though no journaled transaction merges today), which is
    read again when the journal comes with a job (:meth:`records`) or before one
    (:meth:`take`); in the writer, a transaction that leaves a changed lead unread by its
    rescorings ends the epoch (see ``Journal.unseen``). A scoring process's read may see
    another process's commit that the writer has not met yet; the writer's next transaction
    then starts a new epoch, in which it does not use the scores computed meanwhile
    (leadscore.store.deferred), and this cache starts over. Elsewhere (PostgreSQL, reads, a
    transaction without a journal) every profile is read.

    Used under the writer's lock, or by the scoring process's one thread: not thread-safe."""

    def __init__(self, max_leads: int) -> None:
        self.max_leads = max_leads
        self._epoch: int | None = None
        self._fields: tuple[str, ...] = ()
        self._kept: dict[str, tuple[Any, ...]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        self._kept.clear()
        self._epoch = None

    def take(self, epoch: int, dirty: Iterable[str]) -> None:
        """A transaction of the writer's epoch ``epoch`` that no rescoring here read through
        changed the events (and perhaps the profiles) of ``dirty``: they are read again."""
        if epoch == self._epoch:
            for lid in dirty:
                self._kept.pop(lid, None)

    def records(
        self, conn: Connection, lead_ids: Sequence[str], fields: tuple[str, ...]
    ) -> dict[str, dict[str, Any]]:
        """As :func:`lead_records`, with only ``fields`` (and ``lead_id``) in each record."""
        epoch = cache_epoch(conn)
        journal = journal_of(conn)
        if self.max_leads <= 0 or epoch is None or journal is None:
            return {lid: _some(r, fields) for lid, r in lead_records(conn, lead_ids).items()}
        if epoch != self._epoch or fields != self._fields:
            self._kept.clear()
            self._epoch, self._fields = epoch, fields
        kept, dirty = self._kept, journal.dirty
        out: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        for lid in lead_ids:
            values = kept.get(lid)
            if values is None or lid in dirty:  # read after its change, and kept again
                kept.pop(lid, None)  # (unless it is gone: merged away)
                missing.append(lid)
            else:
                record = dict(zip(fields, values, strict=True))
                record["lead_id"] = lid
                out[lid] = record
        self.hits += len(out)
        self.misses += len(missing)
        if missing:
            if len(kept) + len(missing) > self.max_leads:
                kept.clear()
            for lid, full in lead_records(conn, missing).items():
                record = out[lid] = _some(full, fields)
                if len(kept) >= self.max_leads:
                    continue
                # values that repeat (a country, an industry, a title) kept once
                kept[lid] = tuple(
                    sys.intern(v) if type(v) is str and len(v) <= _INTERN_CHARS else v
                    for v in (record[f] for f in fields)
                )
        return out


def _some(record: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    out = {f: record.get(f) for f in fields}
    out["lead_id"] = record["lead_id"]
    return out


def lead_events(
    conn: Connection, lead_id: str, until_us: int | None = None, types: Sequence[str] | None = None
) -> list[Event]:
    """A lead's events, oldest first (only those at or before ``until_us`` if given)."""
    q = sa.select(
        events.c.type, events.c.ts_us, events.c.item, events.c.properties, events.c.message_id
    ).where(events.c.lead_id == lead_id)
    if until_us is not None:
        q = q.where(events.c.ts_us <= until_us)
    if types is not None:
        q = q.where(events.c.type.in_(types))
    out = []
    for etype, ts_us, item, props, message_id in conn.execute(
        q.order_by(events.c.ts_us, events.c.id)
    ):
        out.append(Event(etype, ts_us, item, message_id, event_fields(etype, item, props)))
    return out
