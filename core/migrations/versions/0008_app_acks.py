"""application acknowledgements owed to senders, delivered from an outbox

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "app_acks",
        sa.Column("id", big_id, primary_key=True, autoincrement=True),
        sa.Column("inbox_id", sa.BigInteger(), nullable=False, unique=True),
        sa.Column("code", sa.String(2), nullable=False),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(200), nullable=True),
    )
    op.create_index("ix_app_acks_status_due", "app_acks", ["status", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_app_acks_status_due", "app_acks")
    op.drop_table("app_acks")
