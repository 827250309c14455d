"""the auditors' workspace: the log indexed by patient and by client, signed checkpoints,
consumer cursors (issue 21)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07

``audit_patients`` is filled from the entries' detail ("patients") from now on; entries
written before this revision named their patient only in the entity, and are indexed here
from it where it is ``Patient/<id>`` (reads, $everything, re-identification).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_patients",
        sa.Column("patient", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
    )
    op.create_index("ix_audit_log_actor_seq", "audit_log", ["actor", "seq"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
    )
    op.create_table(
        "audit_cursors",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        # The model zone names the patient whose context it read (core.zones, as of this revision).
        op.execute("GRANT INSERT (patient, seq) ON audit_patients TO sidecar_model_zone")
    op.execute(
        "INSERT INTO audit_patients (patient, seq) SELECT DISTINCT substr(entity, 9), seq FROM audit_log "
        "WHERE entity LIKE 'Patient/%' AND entity NOT LIKE 'Patient/h:%' AND entity NOT LIKE 'Patient/%/%' "
        "AND length(entity) <= 72"
    )


def downgrade() -> None:
    op.drop_table("audit_cursors")
    op.drop_table("audit_checkpoints")
    op.drop_index("ix_audit_log_actor_seq", table_name="audit_log")
    op.drop_table("audit_patients")
