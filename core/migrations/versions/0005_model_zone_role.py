"""the model zone's database role: de-identified store only

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

PostgreSQL only (SQLite has no roles; the embedded deployment runs everything in one
process). ``sidecar_model_zone`` is a group role without login: an operator creates the
sandbox's login role as a member of it (docs/architecture.md, "Zones in the database").
Grants name tables one by one, so every table added later — and all the identified ones
(inbox, quarantine, phi_tokens, reid_map) — stays closed to it unless a migration opens it.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ROLE = "sidecar_model_zone"

# table -> privileges the sandbox needs (see sandbox/runner.py, core/store.py, audit/log.py).
# SELECT where the ORM reads back generated ids (INSERT ... RETURNING needs it).
GRANTS = {
    "alembic_version": "SELECT",
    "resources": "SELECT, INSERT, UPDATE",  # context in; the summary's DocumentReference out
    "resource_history": "SELECT, INSERT",
    "outbox": "SELECT, INSERT",  # the summary event (de-identified, leak-checked by the relay)
    "jobs": "SELECT, UPDATE",
    "dead_letters": "SELECT, INSERT",  # failed jobs, with their reason
    "audit_log": "INSERT",
    "audit_head": "SELECT, UPDATE",  # the chain head is locked FOR UPDATE while appending
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Roles are per cluster, and several databases (tests, sites) share a cluster.
    op.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') "
        f"THEN CREATE ROLE {ROLE} NOLOGIN; END IF; END $$"
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {ROLE}")
    for table, privileges in GRANTS.items():
        op.execute(f"GRANT {privileges} ON {table} TO {ROLE}")
    # The sequences behind those tables' generated ids (an insert draws from them).
    tables = ", ".join(f"'{table}'" for table in GRANTS)
    op.execute(
        "DO $$ DECLARE r record; BEGIN FOR r IN "
        "SELECT DISTINCT s.relname FROM pg_class s JOIN pg_depend d ON d.objid = s.oid "
        "JOIN pg_class t ON d.refobjid = t.oid "
        f"WHERE s.relkind = 'S' AND t.relname IN ({tables}) LOOP "
        f"EXECUTE 'GRANT USAGE ON SEQUENCE ' || quote_ident(r.relname) || ' TO {ROLE}'; "
        "END LOOP; END $$"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in GRANTS:
        op.execute(f"REVOKE ALL ON {table} FROM {ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {ROLE}")
