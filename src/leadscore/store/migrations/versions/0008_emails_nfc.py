"""Stored emails in Unicode's composed form (NFC), as emails are matched from now on
(``leadscore.store.leads.email_key``): an email with an ``é`` stored as ``e`` and a combining
accent would no longer be found by the email that names it, and a new lead would be made
beside it. Each lead's ``email`` column, and its profile's ``email`` field when that is the
same text, are rewritten; nothing else is (a lead first known by its email alone keeps its
id, which the store tells as such by its email: ``leads._email_keyed``).

Only emails with a character outside ASCII are read (none, in most stores).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 00:00:00.000000
"""

from __future__ import annotations

import json
import logging
import unicodedata

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

log = logging.getLogger("leadscore.store")

leads = sa.table(
    "leads",
    sa.column("lead_id", sa.String()),
    sa.column("email", sa.String()),
    sa.column("profile", sa.JSON().with_variant(JSONB(), "postgresql")),
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":  # a character outside ASCII: more bytes than characters
        outside_ascii = sa.func.length(sa.cast(leads.c.email, sa.LargeBinary))
    else:
        outside_ascii = sa.func.octet_length(leads.c.email)
    rows = bind.execute(
        sa.select(leads.c.lead_id, leads.c.email, leads.c.profile).where(
            leads.c.email.is_not(None), outside_ascii != sa.func.length(leads.c.email)
        )
    ).all()
    changed = 0
    for lead_id, email, profile in rows:
        composed = unicodedata.normalize("NFC", email)
        if composed == email:
            continue
        if isinstance(profile, str):  # (a driver that hands JSON back as text)
            profile = json.loads(profile)
        values: dict[str, object] = {"email": composed}
        if isinstance(profile, dict) and profile.get("email") == email:
            values["profile"] = {**profile, "email": composed}
        bind.execute(leads.update().where(leads.c.lead_id == lead_id).values(**values))
        changed += 1
    if changed:
        log.warning("emails of %d lead(s) rewritten in Unicode's composed form (NFC)", changed)


def downgrade() -> None:
    pass  # the composed form is the same email: nothing to undo
