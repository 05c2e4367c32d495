"""Indexes for the lead list sorted by last update or creation (the web interface's sorts).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 17:10:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_leads_updated", "leads", ["updated_us"])
    op.create_index("ix_leads_created", "leads", ["created_us"])


def downgrade() -> None:
    op.drop_index("ix_leads_created", table_name="leads")
    op.drop_index("ix_leads_updated", table_name="leads")
