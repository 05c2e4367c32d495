"""PostgreSQL: a trigram index (pg_trgm's GIN operator class) of each lead's id and profile
text, so that the lead list's search finds a rare term without reading every lead (SQLite has
its own since 0004). The expression is the one the search matches
(``leadscore.store.queries.PG_SEARCH_TEXT``).

pg_trgm ships with PostgreSQL (the contrib package) and is a trusted extension: a user with
the CREATE right on the database may add it. Where it cannot be added (not installed, or
no such right), or the index cannot be made, the migration goes on without it and says so:
the search then reads the leads, as before. The index can be made by hand later, with the
statements of docs/operations.md.

Building the index and the planner's statistics reads every lead and blocks writes to the
leads table until the migration commits (about 35 s per million leads on the benchmark
machine): upgrade with the service stopped, as for any migration.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 06:00:00.000000
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

log = logging.getLogger("leadscore.store")

INDEX = (
    "CREATE INDEX ix_leads_search ON leads USING gin "
    "(lower((lead_id)::text || E'\\n' || (profile)::text) gin_trgm_ops)"
)
# The planner's statistics of the indexed text, sampled from 1,000 leads' (not the default
# 100), tell it a term that many leads hold (read the leads in the list's order, stopping at a
# page) from a rare one (the index); without them it takes the index for every term, and a
# common one then costs every match read and sorted.
STATISTICS = "ALTER INDEX ix_leads_search ALTER COLUMN 1 SET STATISTICS 1000"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for step, sql in (
        ("add the pg_trgm extension", "CREATE EXTENSION IF NOT EXISTS pg_trgm"),
        ("make the trigram index of the lead search", INDEX),
    ):
        savepoint = bind.begin_nested()
        try:
            bind.exec_driver_sql(sql)
        except sa.exc.DBAPIError as e:
            savepoint.rollback()
            reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
            log.warning(
                "could not %s (%s): the lead list's search reads every lead instead", step, reason
            )
            return
        savepoint.commit()
    bind.exec_driver_sql(STATISTICS)
    bind.exec_driver_sql("ANALYZE leads")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # the extension stays: other objects of the database may use it
    op.execute("DROP INDEX IF EXISTS ix_leads_search")
