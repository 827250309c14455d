"""how far each MLLP intake journal has been stored in the inbox

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

Identified-zone bookkeeping: the model zone's role gets no grant on it (0005 grants by name).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "intake_journals",
        sa.Column("journal_id", sa.String(36), primary_key=True),
        sa.Column("moved_seq", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("intake_journals")
