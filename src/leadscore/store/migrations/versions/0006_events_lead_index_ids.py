"""PostgreSQL: the events' (lead_id, ts_us) index also holds each event's id (``INCLUDE``), so
that the event cache checks a lead's kept events (their count and newest id) and reads the
newer ones from the index alone, without a visit to the table for every event of the lead.
SQLite: nothing (its index holds the id already: the rowid).

Rebuilding the index locks the events table, reads and writes alike, until the migration
commits (about 2 s per million events on the benchmark machine): upgrade with the service
stopped, as for any migration.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 04:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_events_lead_ts", table_name="events")
    op.create_index("ix_events_lead_ts", "events", ["lead_id", "ts_us"], postgresql_include=["id"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_events_lead_ts", table_name="events")
    op.create_index("ix_events_lead_ts", "events", ["lead_id", "ts_us"])
