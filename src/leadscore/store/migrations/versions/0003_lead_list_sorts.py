"""Indexes for the lead list's sorts (by last update, creation, fit, engagement), so a page
stays fast with a million leads, and for the overview's counts (band, grade, MQL).

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
    op.create_index("ix_leads_updated", "leads", ["updated_us", "lead_id"])
    op.create_index("ix_leads_created", "leads", ["created_us", "lead_id"])
    op.create_index("ix_scores_sheet_fit", "scores", ["sheet", "fit", "lead_id"])
    op.create_index("ix_scores_sheet_engagement", "scores", ["sheet", "engagement", "lead_id"])
    op.drop_index("ix_scores_sheet_band", table_name="scores")
    op.create_index("ix_scores_sheet_band", "scores", ["sheet", "band", "grade", "mql"])


def downgrade() -> None:
    op.drop_index("ix_scores_sheet_band", table_name="scores")
    op.create_index("ix_scores_sheet_band", "scores", ["sheet", "band"])
    op.drop_index("ix_scores_sheet_engagement", table_name="scores")
    op.drop_index("ix_scores_sheet_fit", table_name="scores")
    op.drop_index("ix_leads_created", table_name="leads")
    op.drop_index("ix_leads_updated", table_name="leads")
