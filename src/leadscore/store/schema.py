"""The store's tables (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Every instant is an integer count of microseconds since the Unix epoch (UTC), as in the engine:
exact, sortable and the same on both databases. JSON columns hold profile fields and event
properties; they are JSONB on PostgreSQL. The migrations in ``migrations/versions`` create
exactly these tables; a test checks that the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "aliases",
    "api_keys",
    "counters",
    "deliveries",
    "events",
    "lead_merges",
    "leads",
    "metadata",
    "model_versions",
    "outbox",
    "outcomes",
    "score_history",
    "scores",
    "segments",
    "stage_changes",
    "trigger_firings",
    "triggers",
]

metadata = MetaData()

# An auto-incrementing 64-bit key: SQLite only auto-increments an INTEGER PRIMARY KEY.
Serial = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")
Micros = BigInteger

ID = 200  # longest lead id, event type, message id, ...
TEXT_FIELD = 2000  # longest item or URL kept in an indexed column

leads = Table(
    "leads",
    metadata,
    Column("lead_id", String(ID), primary_key=True),
    Column("email", String(320), nullable=True),  # lowercased; upserts may match on it
    Column("profile", Json, nullable=False),
    Column("stage", String(20), nullable=False),
    Column("stage_us", Micros, nullable=False),
    Column("owner", String(ID), nullable=True),
    Column("created_us", Micros, nullable=False),
    Column("updated_us", Micros, nullable=False),
    Index("ix_leads_email", "email"),
    Index("ix_leads_stage", "stage"),
    Index("ix_leads_owner", "owner"),
    Index("ix_leads_updated", "updated_us", "lead_id"),  # the lead list by last update
    Index("ix_leads_created", "created_us", "lead_id"),
)

# anonymousId -> lead, once an identify call (or a native event) linked them
aliases = Table(
    "aliases",
    metadata,
    Column("anonymous_id", String(ID), primary_key=True),
    Column("lead_id", String(ID), nullable=False),
    Column("created_us", Micros, nullable=False),
)

# A lead merged into another (an email-keyed lead into the lead id that claimed its email, a
# lead into the userId of a Segment alias naming it): what was sent for the old id (an event,
# an upsert) goes to the lead it became. One hop: merging a lead that others
# were merged into points them on as well.
lead_merges = Table(
    "lead_merges",
    metadata,
    Column("lead_id", String(ID), primary_key=True),
    Column("into_id", String(ID), nullable=False),
    Column("merged_us", Micros, nullable=False),
    Index("ix_lead_merges_into", "into_id"),
)

events = Table(
    "events",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("lead_id", String(ID), nullable=True),  # NULL while only anonymous_id is known
    Column("anonymous_id", String(ID), nullable=True),
    Column("type", String(ID), nullable=False),
    Column("ts_us", Micros, nullable=False),
    Column("item", String(TEXT_FIELD), nullable=True),
    Column("properties", Json, nullable=False),
    Column("message_id", String(ID), nullable=True),  # idempotency key of the sender
    Column("received_us", Micros, nullable=False),
    # On PostgreSQL the index also holds the id (SQLite's holds it anyway, as the rowid): the
    # event cache's checks (count and newest id of a lead's events) and its reads of a lead's
    # newest events need no visit to the table (migration 0006).
    Index("ix_events_lead_ts", "lead_id", "ts_us", postgresql_include=["id"]),
    Index("ix_events_anonymous", "anonymous_id"),
    Index("ix_events_message_id", "message_id", unique=True),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("name", String(ID), nullable=False),
    Column("version", Integer, nullable=False),
    Column("yaml", Text, nullable=False),
    Column("status", String(20), nullable=False),  # draft, published, retired
    Column("created_us", Micros, nullable=False),
    Column("published_us", Micros, nullable=True),
    UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
)

# The current score of each lead on each score sheet: a cache of the pure function
# (model version, lead, events, as-of); history below is the record.
scores = Table(
    "scores",
    metadata,
    Column("lead_id", String(ID), primary_key=True),
    Column("sheet", String(ID), primary_key=True),
    Column("model_version_id", BigInteger, nullable=False),
    Column("as_of_us", Micros, nullable=False),
    Column("score", Float, nullable=False),
    Column("fit", Float, nullable=False),
    Column("engagement", Float, nullable=False),
    Column("grade", String(ID), nullable=True),
    Column("band", String(ID), nullable=True),
    Column("mql", Boolean, nullable=False),
    Column("priority", String(ID), nullable=True),
    Column("groups", Json, nullable=False),  # group id -> points
    Column("updated_us", Micros, nullable=False),
    Index("ix_scores_sheet_score", "sheet", "score", "lead_id"),
    Index("ix_scores_sheet_fit", "sheet", "fit", "lead_id"),  # the lead list's other sorts
    Index("ix_scores_sheet_engagement", "sheet", "engagement", "lead_id"),
    Index("ix_scores_sheet_band", "sheet", "band", "grade", "mql"),  # also the overview
)

score_history = Table(
    "score_history",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("lead_id", String(ID), nullable=False),
    Column("sheet", String(ID), nullable=False),
    Column("model_version_id", BigInteger, nullable=False),
    Column("as_of_us", Micros, nullable=False),
    Column("old_score", Float, nullable=True),  # NULL: the lead's first score on this sheet
    Column("new_score", Float, nullable=False),
    Column("old_band", String(ID), nullable=True),
    Column("new_band", String(ID), nullable=True),
    Column("old_grade", String(ID), nullable=True),
    Column("new_grade", String(ID), nullable=True),
    Column("old_mql", Boolean, nullable=True),
    Column("new_mql", Boolean, nullable=False),
    Column("reason", String(20), nullable=False),  # event, decay, model change, manual
    Column("detail", String(TEXT_FIELD), nullable=True),
    Column("recorded_us", Micros, nullable=False),
    Index("ix_score_history_lead", "lead_id", "sheet", "id"),
    Index("ix_score_history_recorded", "recorded_us"),
)

outcomes = Table(
    "outcomes",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("lead_id", String(ID), nullable=False),
    Column("outcome", String(ID), nullable=False),
    Column("ts_us", Micros, nullable=False),
    Column("amount", Float, nullable=True),
    Column("source", String(ID), nullable=False),  # import, api, disposition
    UniqueConstraint("lead_id", "outcome", "ts_us", name="uq_outcomes_lead_outcome_ts"),
)

stage_changes = Table(
    "stage_changes",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("lead_id", String(ID), nullable=False),
    Column("from_stage", String(20), nullable=True),
    Column("to_stage", String(20), nullable=False),
    Column("at_us", Micros, nullable=False),
    Column("reason", String(TEXT_FIELD), nullable=True),
    Column("actor", String(ID), nullable=True),  # a trigger id, an API key name, ...
    Index("ix_stage_changes_lead", "lead_id", "id"),
)

triggers = Table(
    "triggers",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("definition", Json, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("updated_us", Micros, nullable=False),
)

trigger_firings = Table(
    "trigger_firings",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("trigger_id", String(ID), nullable=False),
    Column("lead_id", String(ID), nullable=False),
    Column("sheet", String(ID), nullable=False),
    Column("fired_us", Micros, nullable=False),
    Column("reason", String(20), nullable=False),
    Column("detail", Json, nullable=False),  # the transition and what the actions did
    Index("ix_trigger_firings_lead", "lead_id", "id"),
    Index("ix_trigger_firings_trigger", "trigger_id", "id"),
)

# Named integers, e.g. the position of a round-robin owner assignment.
counters = Table(
    "counters",
    metadata,
    Column("name", String(ID), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# Webhook calls to make: written in the same transaction as the change that caused them,
# delivered (and retried) afterwards, so none is lost across a crash.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("firing_id", BigInteger, ForeignKey("trigger_firings.id"), nullable=True),
    Column("url", String(TEXT_FIELD), nullable=False),
    Column("body", Text, nullable=False),
    Column("secret", String(ID), nullable=True),
    Column("status", String(20), nullable=False),  # pending, delivered, dead
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_us", Micros, nullable=False),
    Column("last_error", String(TEXT_FIELD), nullable=True),
    Column("created_us", Micros, nullable=False),
    Column("delivered_us", Micros, nullable=True),
    # times sent again by hand after it was delivered or gave up: each is a new delivery, with
    # a delivery id of its own (leadscore.store.outbox.delivery_id)
    Column("resends", Integer, nullable=False, server_default=text("0")),
    Index("ix_outbox_due", "status", "next_attempt_us"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("outbox_id", BigInteger, ForeignKey("outbox.id"), nullable=False),
    Column("at_us", Micros, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", String(TEXT_FIELD), nullable=True),
    Column("duration_ms", Float, nullable=False),
    Index("ix_deliveries_outbox", "outbox_id", "id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),  # the public part of the key
    Column("name", String(ID), nullable=False),
    Column("secret_hash", String(128), nullable=False),  # sha256 of the secret part, hex
    Column("scopes", String(200), nullable=False),  # space-separated: ingest read admin
    Column("created_us", Micros, nullable=False),
    Column("revoked_us", Micros, nullable=True),
    Column("last_used_us", Micros, nullable=True),
)

# Saved lead lists: a name and the query string of the lead list's filters and sort.
segments = Table(
    "segments",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("query", String(TEXT_FIELD), nullable=False),  # e.g. band=hot&country=US&sort=-score
    Column("description", String(TEXT_FIELD), nullable=True),
    Column("created_us", Micros, nullable=False),
    Column("updated_us", Micros, nullable=False),
    UniqueConstraint("name", name="uq_segments_name"),
)
