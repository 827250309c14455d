"""the model zone narrowed: its own output table, per-job screening state, column grants

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-10

The sandbox no longer writes the de-identified store, the outbox or dead letters: it
inserts its output into ``job_outputs`` and the identified zone stores it after checking
it again (sidecar.outputs). ``jobs.screenings`` and ``jobs.screen_leak`` bound how often
a job's texts may be screened (worker.screen). On PostgreSQL every privilege of
``sidecar_model_zone`` is revoked and granted again, column by column, from the one
allow-list in core/zones.py (as of this revision: it is copied here, so that a later
change to the list comes with a migration of its own).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

ROLE = "sidecar_model_zone"

# core.zones.MODEL_ZONE at this revision: table -> (SELECT, INSERT, UPDATE) columns.
GRANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "jobs": (
        ("id", "kind", "patient", "status", "due_at", "attempts", "updated_at"),
        (),
        ("status", "attempts", "due_at", "updated_at"),
    ),
    "resources": (("resource_type", "resource_id", "version", "patient", "body"), (), ()),
    "job_outputs": (("id",), ("job_id", "outcome", "body", "code", "reason", "created_at"), ()),
    "audit_log": (
        (),
        ("seq", "at", "actor", "action", "outcome", "entity", "detail", "prev_hash", "hash"),
        (),
    ),
    "audit_head": (("id", "seq", "hash"), (), ("seq", "hash")),
    "alembic_version": (("version_num",), (), ()),
}
# What 0005 granted: revoked on upgrade, granted again on downgrade.
OLD_GRANTS = {
    "alembic_version": "SELECT",
    "resources": "SELECT, INSERT, UPDATE",
    "resource_history": "SELECT, INSERT",
    "outbox": "SELECT, INSERT",
    "jobs": "SELECT, UPDATE",
    "dead_letters": "SELECT, INSERT",
    "audit_log": "INSERT",
    "audit_head": "SELECT, UPDATE",
}


def upgrade() -> None:
    op.create_table(
        "job_outputs",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("code", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_job_outputs_job_id", "job_outputs", ["job_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("screenings", sa.Integer(), nullable=False, server_default=sa.text("0")))
        batch.add_column(sa.Column("screen_leak", sa.Boolean(), nullable=False, server_default=sa.false()))
    if op.get_bind().dialect.name != "postgresql":
        return
    _revoke_everything()
    for table, (select, insert, update) in GRANTS.items():
        for privilege, columns in (("SELECT", select), ("INSERT", insert), ("UPDATE", update)):
            if columns:
                op.execute(f"GRANT {privilege} ({', '.join(columns)}) ON {table} TO {ROLE}")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {ROLE}")
    # The one generated key it draws: its own output rows'.
    op.execute(f"GRANT USAGE ON SEQUENCE job_outputs_id_seq TO {ROLE}")


def _revoke_everything() -> None:
    """Every table and sequence privilege of the role in this schema, whoever granted it
    (a table's REVOKE takes its column privileges with it)."""
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {ROLE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _revoke_everything()
        for table, privileges in OLD_GRANTS.items():
            op.execute(f"GRANT {privileges} ON {table} TO {ROLE}")
        op.execute(
            "DO $$ DECLARE r record; BEGIN FOR r IN "
            "SELECT DISTINCT s.relname FROM pg_class s JOIN pg_depend d ON d.objid = s.oid "
            "JOIN pg_class t ON d.refobjid = t.oid "
            f"WHERE s.relkind = 'S' AND t.relname IN ({', '.join(repr(t) for t in OLD_GRANTS)}) LOOP "
            f"EXECUTE 'GRANT USAGE ON SEQUENCE ' || quote_ident(r.relname) || ' TO {ROLE}'; "
            "END LOOP; END $$"
        )
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("screen_leak")
        batch.drop_column("screenings")
    op.drop_index("ix_job_outputs_job_id", table_name="job_outputs")
    op.drop_table("job_outputs")
