"""The model zone's database role on PostgreSQL: a sandbox logged in as a member of
``sidecar_model_zone`` runs a summary job end to end (claims its job, reads the
de-identified store, hands back its output, which the identified zone stores), and may do
nothing else: every identified table is refused to it, and so are rewriting a job's
patient, the served resources, the outbox and dead letters (issue 17). Its privileges are
exactly core.zones' allow-list, column by column."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from core.db import Database
from core.tables import Job, JobStatus, Resource
from core.zones import MODEL_ZONE, ROLE
from deid import Vault
from sandbox.models import ExtractiveSummarizer
from sandbox.runner import JobOutcome, run_job
from sidecar.outputs import OutputIntake
from tests.deployments import Embedded
from tests.fixtures.messages import ADT_A01, ORU_R01, encoded
from worker.context import load_secret
from worker.leakguard import LeakGuard

IDENTIFIED_TABLES = [
    "inbox",
    "quarantine",
    "phi_tokens",
    "reid_map",
    "patient_phi",
    "dead_letters",
    "app_acks",
    "intake_journals",
    "audit_log",
]
REFUSED_WRITES = {
    "jobs.patient": "UPDATE jobs SET patient = 'other'",
    "jobs.kind": "UPDATE jobs SET kind = 'other'",
    "jobs.result": "UPDATE jobs SET result = 'DocumentReference/x'",
    "resources": "UPDATE resources SET body = body",
    "resources insert": (
        "INSERT INTO resources (resource_type, resource_id, version, patient, body, content_hash, "
        "updated_at) VALUES ('Patient', 'x', 1, 'p', '{}', 'h', now())"
    ),
    "resource_history": (
        "INSERT INTO resource_history (resource_type, resource_id, version, body, origin, recorded_at) "
        "VALUES ('Patient', 'x', 1, '{}', 'x', now())"
    ),
    "outbox": (
        "INSERT INTO outbox (event_id, routing_key, body, created_at, attempts, screened) "
        "VALUES ('x', 'x', '{}', now(), 0, true)"
    ),
    "dead_letters": (
        "INSERT INTO dead_letters (stage, code, reason, created_at) VALUES ('x', 'x', 'x', now())"
    ),
    "audit_log delete": "DELETE FROM audit_log",
    "jobs.screenings": "UPDATE jobs SET screenings = 0, screen_leak = false",
}


@pytest.fixture
def deployment(tmp_path: Path, pg_url: str) -> Embedded:
    """The identified zone's database after an admission and a lab result, with the
    sidecar stopped so that only the test's sandbox runs jobs."""
    dep = Embedded(tmp_path / "data", database_url=pg_url)
    dep.start()
    try:
        dep.deliver(encoded(ADT_A01), encoded(ORU_R01))
    finally:
        dep.stop()
    return dep


def _pending_job(db: Database) -> int:
    with db.transaction() as session:
        patient = session.execute(select(Job.patient)).scalars().first()
        assert patient is not None
        now = datetime.now(UTC)
        job = Job(
            kind="report",
            patient=patient,
            status=JobStatus.PENDING,
            due_at=now,
            created_at=now,
            updated_at=now,
        )
        session.add(job)
        session.flush()
        return job.id


def test_the_sandbox_role_runs_a_job_and_the_identified_zone_stores_it(
    deployment: Embedded, sandbox_url: str
) -> None:
    identified = Database(deployment.settings)
    job_id = _pending_job(identified)
    sandbox_db = Database(url=sandbox_url, model_zone=True)
    try:
        result = run_job(sandbox_db, job_id, ExtractiveSummarizer(), screen=lambda *_: "clean")
        assert result.outcome == JobOutcome.DONE, result
        vault = Vault(
            load_secret(deployment.settings), date_shift_max_days=deployment.settings.date_shift_max_days
        )
        assert OutputIntake(identified, LeakGuard(vault)).drain() == 1
        with identified.sessions() as session:
            job = session.get_one(Job, job_id)
            assert (job.status, job.result) == (JobStatus.DONE, result.document)
            types = session.execute(
                select(Resource.resource_type).where(Resource.patient == job.patient)
            ).scalars()
            assert {"DocumentReference", "Provenance"} <= set(types)
    finally:
        sandbox_db.dispose()
        identified.dispose()


def test_the_sandbox_role_is_refused_the_identified_zone_and_every_other_write(
    deployment: Embedded, sandbox_url: str
) -> None:
    sandbox_db = Database(deployment.settings, url=sandbox_url)
    refused: list[str] = []
    try:
        with sandbox_db.sessions() as session:
            for table in IDENTIFIED_TABLES:
                try:
                    session.execute(text(f"SELECT count(*) FROM {table}"))
                except ProgrammingError as exc:
                    assert "permission denied" in str(exc)
                    refused.append(table)
                session.rollback()
            for name, statement in REFUSED_WRITES.items():
                try:
                    session.execute(text(statement))
                except ProgrammingError as exc:
                    assert "permission denied" in str(exc)
                    refused.append(name)
                session.rollback()
    finally:
        sandbox_db.dispose()
    assert refused == IDENTIFIED_TABLES + list(REFUSED_WRITES)


def test_the_role_holds_exactly_the_allow_list(deployment: Embedded) -> None:
    with psycopg.connect(
        make_url(deployment.settings.effective_database_url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    ) as conn:
        tables = conn.execute(
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
            "WHERE grantee = %s AND table_schema = 'public'",
            (ROLE,),
        ).fetchall()
        columns = set(
            conn.execute(
                "SELECT table_name, privilege_type, column_name FROM information_schema.column_privileges "
                "WHERE grantee = %s AND table_schema = 'public'",
                (ROLE,),
            ).fetchall()
        )
    assert tables == []  # no table-wide privilege: columns only
    expected = {
        (table, privilege, column)
        for table, access in MODEL_ZONE.items()
        for privilege, names in (
            ("SELECT", access.select),
            ("INSERT", access.insert),
            ("UPDATE", access.update),
        )
        for column in names
    }
    assert columns == expected
