"""The model zone's database role on PostgreSQL: a sandbox logged in as a member of
``sidecar_model_zone`` runs a summary job end to end, and is refused every table of the
identified zone (raw messages, quarantine, identifier tokens, re-identification map)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from core.db import Database
from core.settings import Settings
from core.tables import Job, JobStatus
from sandbox.models import ExtractiveSummarizer
from sandbox.runner import JobOutcome, run_job
from tests.conftest import PG_ADMIN
from tests.deployments import Embedded
from tests.fixtures.messages import ADT_A01, ORU_R01, encoded

IDENTIFIED_TABLES = ["inbox", "quarantine", "phi_tokens", "reid_map", "patient_phi"]


@pytest.fixture
def sandbox_url(pg_url: str) -> Iterator[str]:
    """A login role in sidecar_model_zone, for the test's fresh database."""
    role = f"sandbox_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE sidecar_model_zone")
    yield make_url(pg_url).set(username=role, password=None).render_as_string(hide_password=False)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
def identified(tmp_path: Path, pg_url: str) -> Iterator[Database]:
    """The identified zone's database (its own role) after an admission and a lab result,
    with the sidecar stopped so that only the test's sandbox runs jobs."""
    dep = Embedded(tmp_path / "data", database_url=pg_url)
    dep.start()
    try:
        dep.deliver(encoded(ADT_A01), encoded(ORU_R01))
    finally:
        dep.stop()
    db = Database(dep.settings)
    yield db
    db.dispose()


def test_the_sandbox_role_runs_a_job_and_is_refused_the_identified_zone(
    identified: Database, sandbox_url: str
) -> None:
    with identified.transaction() as session:
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
        job_id = job.id

    sandbox_db = Database(Settings(), url=sandbox_url)
    try:
        result = run_job(sandbox_db, job_id, ExtractiveSummarizer(), screen=lambda *_: [])
        assert result.outcome == JobOutcome.DONE, result
        with sandbox_db.sessions() as session:
            assert session.get_one(Job, job_id).status == JobStatus.DONE
            for table in IDENTIFIED_TABLES:
                with pytest.raises(ProgrammingError, match="permission denied"):
                    session.execute(text(f"SELECT count(*) FROM {table}"))
                session.rollback()
            with pytest.raises(ProgrammingError, match="permission denied"):
                session.execute(text("DELETE FROM audit_log"))  # the chain is append-only to it
    finally:
        sandbox_db.dispose()
