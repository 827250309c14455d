"""The sandbox as a Celery worker consuming only the sandbox queue. Its texts are
screened for known identifiers by the identified-zone workers (``sidecar.screen``).

The app, the model zone's database and the model are built by ``sidecar`` from the
settings (sidecar.sandbox_process.build_sandbox_app); this module holds no settings.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from sqlalchemy import select

from core.db import Database
from core.model_tables import Job, JobStatus
from core.tasks import SUMMARY_TASK
from sandbox.models import SummaryModel
from sandbox.runner import JobOutcome, run_job
from sandbox.screen import PromptScreen

__all__ = ["register_summary_task"]


def register_summary_task(
    app: Celery,
    db: Callable[[], Database],
    model: SummaryModel,
    screen: PromptScreen,
    *,
    language: str = "en",
    max_sentences: int = 12,
) -> None:
    """``db``: the model zone's database, made on first use inside the worker process."""

    @app.task(name=SUMMARY_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def summarize_task(self: Any, job_id: int) -> str:
        result = run_job(db(), job_id, model, screen=screen, language=language, max_sentences=max_sentences)
        if result.outcome in (JobOutcome.NOT_DUE, JobOutcome.DEFERRED):
            with db().sessions() as session:
                row = session.execute(select(Job.status, Job.due_at).where(Job.id == job_id)).first()
                if row is not None and row.status == JobStatus.PENDING:
                    # A newer trigger (or a missing screening verdict) pushed the job
                    # back: come back when it is due.
                    due = row.due_at.replace(tzinfo=row.due_at.tzinfo or UTC)
                    raise self.retry(countdown=max(0.05, (due - datetime.now(UTC)).total_seconds()))
        return str(result.outcome)
