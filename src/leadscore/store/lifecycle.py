"""Lifecycle stages, sales' dispositions and outcomes.

Stages follow the funnel (subscriber, lead, mql, sql, opportunity, customer) plus disqualified
and recycled; every change is recorded with its time, reason and who made it. A disposition is
sales' verdict on a lead: it sets the stage and, where it is one, records an outcome for the
validation reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from leadscore.errors import UsageError
from leadscore.store.db import journal_of
from leadscore.store.leads import STAGES, lock_identities, lock_leads, merged_into, no_lead
from leadscore.store.schema import (
    aliases,
    deliveries,
    events,
    lead_merges,
    leads,
    outbox,
    outcomes,
    score_history,
    scores,
    stage_changes,
    trigger_firings,
)

__all__ = [
    "DISPOSITIONS",
    "OutcomeInput",
    "add_outcomes",
    "check_stage",
    "erase_lead",
    "outcomes_for_unknown_leads",
    "record_disposition",
    "set_stage",
]

# disposition -> (stage it sets, outcome it records or None)
DISPOSITIONS: dict[str, tuple[str, str | None]] = {
    "accept": ("sql", "sql"),
    "reject": ("disqualified", "rejected"),
    "recycle": ("recycled", None),
    "won": ("customer", "won"),
    "lost": ("disqualified", "lost"),
}


def check_stage(stage: str) -> str:
    value = stage.strip().lower()
    if value not in STAGES:
        raise UsageError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return value


def set_stage(
    conn: Connection,
    lead_id: str,
    stage: str,
    now_us: int,
    *,
    reason: str | None = None,
    actor: str | None = None,
) -> bool:
    """Move a lead to ``stage``; False (and nothing recorded) when it is already there."""
    stage = check_stage(stage)
    q = sa.select(leads.c.stage).where(leads.c.lead_id == lead_id)
    if conn.dialect.name != "sqlite":
        # Locked: a merge of this lead that is under way finishes first (and the lead is then
        # gone: the error names the lead it became), or waits and moves the change along.
        q = q.with_for_update()
    row = conn.execute(q).first()
    if row is None:
        raise no_lead(conn, lead_id)
    if row[0] == stage:
        return False
    conn.execute(
        leads.update()
        .where(leads.c.lead_id == lead_id)
        .values(stage=stage, stage_us=now_us, updated_us=now_us)
    )
    conn.execute(
        stage_changes.insert().values(
            lead_id=lead_id,
            from_stage=row[0],
            to_stage=stage,
            at_us=now_us,
            reason=reason,
            actor=actor,
        )
    )
    return True


def record_disposition(
    conn: Connection,
    lead_id: str,
    disposition: str,
    now_us: int,
    *,
    reason: str | None = None,
    amount: float | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Apply sales' verdict: the stage it implies and, for accept/reject/won/lost, an outcome."""
    if disposition not in DISPOSITIONS:
        raise UsageError(
            f"unknown disposition {disposition!r}; use one of {', '.join(DISPOSITIONS)}"
        )
    if disposition == "reject" and not (reason and reason.strip()):
        raise UsageError("a rejection needs a reason")
    stage, outcome = DISPOSITIONS[disposition]
    text = f"{disposition}: {reason}" if reason else disposition
    lock_identities(conn, shared_emails=[lead_id])  # add_outcomes' lock, before the row's
    changed = set_stage(conn, lead_id, stage, now_us, reason=text, actor=actor)
    if outcome is not None:
        add_outcomes(conn, [OutcomeInput(lead_id, outcome, now_us, amount)], "disposition")
    return {"lead_id": lead_id, "stage": stage, "stage_changed": changed, "outcome": outcome}


@dataclass
class OutcomeInput:
    lead_id: str
    outcome: str
    ts_us: int
    amount: float | None = None


def add_outcomes(conn: Connection, items: Sequence[OutcomeInput], source: str) -> int:
    """Store outcomes; a repeat of (lead, outcome, time) is ignored. Returns how many were new."""
    if not items:
        return 0
    # An outcome for an email-keyed lead since merged goes to the lead it became. Against a
    # merge under way (which then waits, and moves the outcomes along): the ids' email locks,
    # which a merge takes first (an outcome may name an email-keyed lead not stored yet, which
    # an event could create and an upsert merge meanwhile), then the rows of the leads that
    # exist. A lead missing then was never stored, or a merge took it away: followed.
    lock_identities(conn, shared_emails={i.lead_id for i in items})
    present = lock_leads(conn, (i.lead_id for i in items), share=True)
    moved = merged_into(conn, {i.lead_id for i in items} - present)
    if moved:
        items = [replace(i, lead_id=moved.get(i.lead_id, i.lead_id)) for i in items]
    keys = {(i.lead_id, i.outcome, i.ts_us) for i in items}
    ids = list({i.lead_id for i in items})
    existing: set[tuple[str, str, int]] = set()
    for start in range(0, len(ids), 500):
        q = sa.select(outcomes.c.lead_id, outcomes.c.outcome, outcomes.c.ts_us).where(
            outcomes.c.lead_id.in_(ids[start : start + 500])
        )
        existing.update((str(a), str(b), int(c)) for a, b, c in conn.execute(q))
    rows = []
    for i in items:
        key = (i.lead_id, i.outcome, i.ts_us)
        if key in existing or key not in keys:
            continue
        keys.discard(key)
        rows.append(
            {
                "lead_id": i.lead_id,
                "outcome": i.outcome,
                "ts_us": i.ts_us,
                "amount": i.amount,
                "source": source,
            }
        )
    if rows:
        conn.execute(outcomes.insert(), rows)
    return len(rows)


def outcomes_for_unknown_leads(conn: Connection, items: Sequence[OutcomeInput]) -> int:
    """How many of ``items`` name a lead the store does not hold (nor merged into another):
    kept all the same (the lead may arrive later), but worth telling whoever sent them, since
    a lead id spelt otherwise than the store's matches nothing."""
    wanted = sorted({i.lead_id for i in items})
    known: set[str] = set()
    for start in range(0, len(wanted), 500):
        q = sa.select(leads.c.lead_id).where(leads.c.lead_id.in_(wanted[start : start + 500]))
        known.update(str(r) for (r,) in conn.execute(q))
    known.update(merged_into(conn, set(wanted) - known))
    return sum(i.lead_id not in known for i in items)


def erase_lead(conn: Connection, lead_id: str) -> dict[str, int]:
    """Delete a lead and everything recorded about it (a person's request to be forgotten):
    its events (those it sent before it was known by its id too), scores and their history,
    outcomes, stage changes, trigger firings and their webhook calls (whose bodies hold its
    data, sent or not), anonymous ids and the ids merged into it. How many rows of each went.

    NotFound when there is no such lead (naming the lead it was merged into, if so). Sent
    webhooks and backups are beyond reach; an event or upsert naming the lead later makes a
    new one."""
    if not lock_leads(conn, [lead_id]):
        raise no_lead(conn, lead_id)
    anonymous = sa.select(aliases.c.anonymous_id).where(aliases.c.lead_id == lead_id)
    firings = sa.select(trigger_firings.c.id).where(trigger_firings.c.lead_id == lead_id)
    calls = sa.select(outbox.c.id).where(outbox.c.firing_id.in_(firings))
    steps: list[tuple[str, sa.Delete]] = [
        ("webhook attempts", deliveries.delete().where(deliveries.c.outbox_id.in_(calls))),
        ("webhook calls", outbox.delete().where(outbox.c.firing_id.in_(firings))),
        ("trigger firings", trigger_firings.delete().where(trigger_firings.c.lead_id == lead_id)),
        (
            "events",
            events.delete().where(
                sa.or_(events.c.lead_id == lead_id, events.c.anonymous_id.in_(anonymous))
            ),
        ),
        ("anonymous ids", aliases.delete().where(aliases.c.lead_id == lead_id)),
        ("merged ids", lead_merges.delete().where(lead_merges.c.into_id == lead_id)),
        ("scores", scores.delete().where(scores.c.lead_id == lead_id)),
        ("score changes", score_history.delete().where(score_history.c.lead_id == lead_id)),
        ("outcomes", outcomes.delete().where(outcomes.c.lead_id == lead_id)),
        ("stage changes", stage_changes.delete().where(stage_changes.c.lead_id == lead_id)),
        ("leads", leads.delete().where(leads.c.lead_id == lead_id)),
    ]
    counts = {what: conn.execute(statement).rowcount for what, statement in steps}
    journal = journal_of(conn)
    if journal is not None:  # its events are gone: the caches read it again
        journal.changed(lead_id)
    return counts
