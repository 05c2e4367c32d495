"""SQLite: a trigram full-text index of each lead's id, email and profile values, so that the
lead list's search finds a rare term without reading every lead's profile. PostgreSQL: nothing
(its search reads the leads, in parallel).

The index's rows are keyed by ``lead_search_ids``, whose INTEGER PRIMARY KEY is stable (the
leads table's own rowids may change when the file is vacuumed). Triggers keep both current.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 18:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# What a lead is found by: its id, its email and the values (not the keys) of its profile.
TEXT = (
    "{row}.lead_id || ' ' || coalesce({row}.email, '') || ' ' || "
    "coalesce((SELECT group_concat(value, ' ') FROM json_each({row}.profile)), '')"
)
ID_OF = "(SELECT id FROM lead_search_ids WHERE lead_id = {row}.lead_id)"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(
        "CREATE TABLE lead_search_ids (id INTEGER PRIMARY KEY, lead_id TEXT NOT NULL UNIQUE)"
    )
    op.execute("CREATE VIRTUAL TABLE lead_search USING fts5(text, tokenize='trigram')")
    op.execute("INSERT INTO lead_search_ids (lead_id) SELECT lead_id FROM leads")
    op.execute(
        "INSERT INTO lead_search (rowid, text) SELECT m.id, "
        + TEXT.format(row="leads")
        + " FROM leads JOIN lead_search_ids AS m ON m.lead_id = leads.lead_id"
    )
    new, old = TEXT.format(row="new"), ID_OF.format(row="old")
    op.execute(
        "CREATE TRIGGER lead_search_insert AFTER INSERT ON leads BEGIN "
        "INSERT INTO lead_search_ids (lead_id) VALUES (new.lead_id); "
        f"INSERT INTO lead_search (rowid, text) VALUES ({ID_OF.format(row='new')}, {new}); END"
    )
    op.execute(
        "CREATE TRIGGER lead_search_update AFTER UPDATE OF lead_id, email, profile ON leads "
        f"BEGIN DELETE FROM lead_search WHERE rowid = {old}; "
        "UPDATE lead_search_ids SET lead_id = new.lead_id WHERE lead_id = old.lead_id; "
        f"INSERT INTO lead_search (rowid, text) VALUES ({ID_OF.format(row='new')}, {new}); END"
    )
    op.execute(
        "CREATE TRIGGER lead_search_delete AFTER DELETE ON leads BEGIN "
        f"DELETE FROM lead_search WHERE rowid = {old}; "
        "DELETE FROM lead_search_ids WHERE lead_id = old.lead_id; END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for trigger in ("lead_search_insert", "lead_search_update", "lead_search_delete"):
        op.execute(f"DROP TRIGGER {trigger}")
    op.execute("DROP TABLE lead_search")
    op.execute("DROP TABLE lead_search_ids")
