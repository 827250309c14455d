"""outbox rows the pipeline already screened for its patient's identifiers

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

The pipeline runs the outgoing leak check on the events it writes (in its own processes,
which scale), so the relay publishes those without checking them again; rows written by
anyone else (the sandbox's summaries) are still checked by the relay.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("screened", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("screened")
