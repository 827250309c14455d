"""The sandbox as a Celery worker consuming only the sandbox queue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import Celery

from core.db import Database
from core.settings import Settings
from core.tables import Job, JobStatus
from core.tasks import SUMMARY_TASK, make_celery
from sandbox.models import ExtractiveSummarizer
from sandbox.runner import JobOutcome, run_job


def build_sandbox_app(settings: Settings) -> Celery:
    app = make_celery(settings, "sidecar-sandbox")
    state: dict[str, Database] = {}
    model = ExtractiveSummarizer()

    def db() -> Database:
        if "db" not in state:
            state["db"] = Database(settings)
        return state["db"]

    @app.task(name=SUMMARY_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def summarize_task(self: Any, job_id: int) -> str:
        result = run_job(db(), job_id, model)
        if result.outcome == JobOutcome.NOT_DUE:
            with db().sessions() as session:
                job = session.get(Job, job_id)
                if job is not None and job.status == JobStatus.PENDING:
                    # A newer trigger pushed the job back: come back when it is due.
                    wait = max(
                        0.05,
                        (
                            job.due_at.replace(tzinfo=job.due_at.tzinfo or UTC) - datetime.now(UTC)
                        ).total_seconds(),
                    )
                    raise self.retry(countdown=wait)
        return str(result.outcome)

    return app
