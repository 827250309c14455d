"""search values of each resource for the FHIR API (issue 20): tokens and clinical date range

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

Resources stored before get their values here, computed by ``core.search_index`` as it is
at this revision; rows are read and updated a thousand at a time.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from core.search_index import index_values

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_CHUNK = 1000


def upgrade() -> None:
    op.add_column("resources", sa.Column("search_tokens", sa.Text(), nullable=True))
    op.add_column("resources", sa.Column("date_low", sa.DateTime(timezone=True), nullable=True))
    op.add_column("resources", sa.Column("date_high", sa.DateTime(timezone=True), nullable=True))
    resources = sa.table(
        "resources",
        sa.column("resource_type", sa.String()),
        sa.column("resource_id", sa.String()),
        sa.column("body", sa.Text()),
        sa.column("search_tokens", sa.Text()),
        sa.column("date_low", sa.DateTime(timezone=True)),
        sa.column("date_high", sa.DateTime(timezone=True)),
    )
    bind = op.get_bind()
    after: tuple[str, str] = ("", "")
    while True:
        rows = bind.execute(
            sa.select(resources.c.resource_type, resources.c.resource_id, resources.c.body)
            .where(sa.tuple_(resources.c.resource_type, resources.c.resource_id) > sa.tuple_(*after))
            .order_by(resources.c.resource_type, resources.c.resource_id)
            .limit(_CHUNK)
        ).all()
        if not rows:
            break
        values = []
        for rtype, rid, body in rows:
            tokens, low, high = index_values(json.loads(body))
            values.append({"t": rtype, "i": rid, "tokens": tokens, "low": low, "high": high})
        bind.execute(
            resources.update()
            .where(
                resources.c.resource_type == sa.bindparam("t"), resources.c.resource_id == sa.bindparam("i")
            )
            .values(
                search_tokens=sa.bindparam("tokens"),
                date_low=sa.bindparam("low"),
                date_high=sa.bindparam("high"),
            ),
            values,
        )
        after = (rows[-1][0], rows[-1][1])


def downgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.drop_column("date_high")
        batch.drop_column("date_low")
        batch.drop_column("search_tokens")
