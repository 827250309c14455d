"""The sandbox as a Celery worker consuming only the sandbox queue. Its texts are
screened for known identifiers by the identified-zone workers (``sidecar.screen``)."""

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
from sandbox.screen import CeleryScreen


def build_sandbox_app(settings: Settings) -> Celery:
    app = make_celery(settings, "sidecar-sandbox", results=True)
    screen = CeleryScreen(app, settings.screen_timeout_s)
    state: dict[str, Database] = {}
    model = ExtractiveSummarizer()

    def db() -> Database:
        if "db" not in state:
            # The model zone's own login where configured (sandbox_database_url): the
            # database then refuses it every identified table.
            state["db"] = Database(settings, url=settings.effective_sandbox_database_url)
        return state["db"]

    @app.task(name=SUMMARY_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def summarize_task(self: Any, job_id: int) -> str:
        result = run_job(db(), job_id, model, screen=screen)
        if result.outcome in (JobOutcome.NOT_DUE, JobOutcome.DEFERRED):
            with db().sessions() as session:
                job = session.get(Job, job_id)
                if job is not None and job.status == JobStatus.PENDING:
                    # A newer trigger (or a missing screening verdict) pushed the job
                    # back: come back when it is due.
                    wait = max(
                        0.05,
                        (
                            job.due_at.replace(tzinfo=job.due_at.tzinfo or UTC) - datetime.now(UTC)
                        ).total_seconds(),
                    )
                    raise self.retry(countdown=wait)
        return str(result.outcome)

    return app
