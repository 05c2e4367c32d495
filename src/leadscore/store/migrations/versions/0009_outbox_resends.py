"""Webhook calls sent again by hand: ``outbox.resends`` counts them, and a call's delivery id
(``X-Leadscore-Delivery``) takes the count, so that a call sent again after it was delivered
or gave up is a new delivery to a receiver that drops repeats by that id
(``leadscore.store.outbox.delivery_id``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 01:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.add_column(
            sa.Column("resends", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.drop_column("resends")
