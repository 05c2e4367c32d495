"""The store: leads, events, current scores, history, models, outcomes, triggers and keys in
SQLite (the embedded default) or PostgreSQL, through SQLAlchemy Core with Alembic migrations.

>>> from leadscore.store import open_store
>>> store = open_store("sqlite:///:memory:")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from leadscore.store.db import DEFAULT_DB, Database, database_url, open_database
from leadscore.store.eventcache import DEFAULT_CACHED_EVENTS
from leadscore.store.keeper import RescoreReport, Sheet, Store
from leadscore.store.leads import STAGES, EventInput, ItemOutcome, LeadInput
from leadscore.store.lifecycle import DISPOSITIONS, OutcomeInput
from leadscore.store.queries import LeadPage, LeadQuery
from leadscore.store.scores import REASONS, ScoreChange

__all__ = [
    "DEFAULT_DB",
    "DISPOSITIONS",
    "REASONS",
    "STAGES",
    "Database",
    "EventInput",
    "ItemOutcome",
    "LeadInput",
    "LeadPage",
    "LeadQuery",
    "OutcomeInput",
    "RescoreReport",
    "ScoreChange",
    "Sheet",
    "Store",
    "database_url",
    "open_database",
    "open_store",
]


def open_store(
    db: str | Path | None = None,
    *,
    durable: bool = True,
    cached_events: int = DEFAULT_CACHED_EVENTS,
    create: bool = True,
) -> Store:
    """Open (creating or upgrading) the store at ``db``: a SQLite path or a database URL.
    ``cached_events``: how many decoded events real-time rescoring keeps in memory (0: none);
    without ``create``, only a store that is there (:func:`open_database`)."""
    return Store(open_database(db, durable=durable, create=create), cached_events=cached_events)
