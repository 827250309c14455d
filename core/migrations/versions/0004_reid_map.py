"""re-identification map: pseudonym -> the identifier it was made from

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reid_map",
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("authority", sa.String(length=400), nullable=False),
        sa.Column("identifier", sa.String(length=400), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pseudonym"),
    )


def downgrade() -> None:
    op.drop_table("reid_map")
