"""partial indexes for the counts `sidecar stats` and `GET /status` report

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

Without them, counting resends, repaired messages and blocked events read every row of
the inbox and the outbox (raw messages and event bodies included): tens of milliseconds
per poll once a day's traffic is stored. Each covers only the rare rows it counts.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_inbox_resent",
        "inbox",
        ["resend_count"],
        sqlite_where=sa.text("resend_count > 0"),
        postgresql_where=sa.text("resend_count > 0"),
    )
    op.create_index(
        "ix_inbox_repaired",
        "inbox",
        ["id"],
        sqlite_where=sa.text("repaired = 1"),
        postgresql_where=sa.text("repaired"),
    )
    op.create_index(
        "ix_outbox_blocked",
        "outbox",
        ["id"],
        sqlite_where=sa.text("blocked_at IS NOT NULL"),
        postgresql_where=sa.text("blocked_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_blocked", "outbox")
    op.drop_index("ix_inbox_repaired", "inbox")
    op.drop_index("ix_inbox_resent", "inbox")
