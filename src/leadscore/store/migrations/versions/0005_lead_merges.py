"""Lead merges: an email-keyed lead merged into the lead id that claimed its email, so that
what is later sent for the old id goes to the lead it became.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lead_merges",
        sa.Column("lead_id", sa.String(length=200), nullable=False),
        sa.Column("into_id", sa.String(length=200), nullable=False),
        sa.Column("merged_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("lead_id"),
    )
    op.create_index("ix_lead_merges_into", "lead_merges", ["into_id"])


def downgrade() -> None:
    op.drop_index("ix_lead_merges_into", table_name="lead_merges")
    op.drop_table("lead_merges")
