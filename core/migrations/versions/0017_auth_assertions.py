"""SMART client assertions already used, for refusing a replayed jti (issue 20)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_assertions",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_auth_assertions_expires_at", "auth_assertions", ["expires_at"])


def downgrade() -> None:
    op.drop_table("auth_assertions")
