"""a partial index for the `unlinked` count of `sidecar stats` and `GET /status`

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-12

Patients scoped to one message (a PID without identifier, or no PID: issue 19) are the
``reid_map`` rows of authority ``urn:sidecar:message-scope`` (``mapping.ids``). Without the
index, counting them would read every row of the re-identification map on each poll.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# sidecar.stats.UNLINKED_WHERE at this revision (copied: a later change comes with a migration).
WHERE = "authority = 'urn:sidecar:message-scope'"


def upgrade() -> None:
    op.create_index(
        "ix_reid_map_unlinked",
        "reid_map",
        ["pseudonym"],
        sqlite_where=sa.text(WHERE),
        postgresql_where=sa.text(WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_reid_map_unlinked", "reid_map")
