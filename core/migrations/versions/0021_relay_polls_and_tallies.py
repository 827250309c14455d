"""what the relay polls for and what it has published, without reading the whole outbox

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-08

The relay polls the outbox for unsent, unblocked events several times a second. On
PostgreSQL the index on (sent_at, id) also holds an entry for every event sent since the
last vacuum, and the planner (without statistics yet, on a busy new table) read them all
through a bitmap scan: 30-110 ms per poll at 60,000 events. ``ix_outbox_pending`` covers the
waiting events alone (on PostgreSQL only); the relay's queries and the pending count name
its predicate word for word.

``events.published`` (``sidecar stats``, ``GET /status``) counted every sent event of the
outbox at each poll, 60 ms at 60,000 events and growing with every event ever written.
``event_tallies`` keeps it per relay process, added to in the transaction that marks the
events sent; the events sent before this revision are tallied once here.

With a monitor polling `GET /status` five times a second, those reads took more of
PostgreSQL's CPU than the pipeline's writes (docs/benchmarks.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

# core.statuses.PENDING_EVENTS_WHERE at this revision (copied: a later change comes with a
# migration).
PENDING = "sent_at IS NULL AND blocked_at IS NULL"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # SQLite leaves no dead entries in an index, and its planner keeps to (sent_at, id):
        # there the index would only cost its upkeep.
        op.create_index("ix_outbox_pending", "outbox", ["id"], postgresql_where=sa.text(PENDING))
    op.create_table(
        "event_tallies",
        sa.Column("relay", sa.String(128), primary_key=True),
        sa.Column("published", sa.BigInteger(), nullable=False),
    )
    op.execute(
        "INSERT INTO event_tallies (relay, published) "
        "SELECT 'before-0021', count(*) FROM outbox WHERE sent_at IS NOT NULL HAVING count(*) > 0"
    )


def downgrade() -> None:
    op.drop_table("event_tallies")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_outbox_pending", "outbox")
