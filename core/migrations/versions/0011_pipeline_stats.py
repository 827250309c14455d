"""CPU time the pipeline spent per stage, per pipeline process

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

Operational counters (``sidecar stats``: ``pipeline.cpu_ms.<stage>``); no data values.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pipeline_stats",
        sa.Column("process", sa.String(128), primary_key=True),
        sa.Column("stage", sa.String(32), primary_key=True),
        sa.Column("cpu_s", sa.Float(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pipeline_stats")
