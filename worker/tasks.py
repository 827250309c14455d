"""The pipeline as Celery tasks (production: RabbitMQ). Same functions as in-process."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from sqlalchemy.exc import DBAPIError

from core.settings import Settings
from core.tasks import PIPELINE_TASK, SANDBOX_QUEUE, SUMMARY_TASK, make_celery
from worker.context import build_context
from worker.pipeline import PipelineContext, process

log = logging.getLogger("sidecar.worker.tasks")


def build_worker_app(settings: Settings) -> Celery:
    app = make_celery(settings, "sidecar-worker")
    lock = threading.Lock()
    state: dict[str, PipelineContext] = {}

    def context() -> PipelineContext:
        # Built on first use inside the worker process, never at import or before a fork.
        with lock:
            if "ctx" not in state:
                state["ctx"] = build_context(settings)
            return state["ctx"]

    @app.task(name=PIPELINE_TASK, bind=True, max_retries=settings.pipeline_max_attempts)  # type: ignore[untyped-decorator]
    def process_task(self: Any, inbox_id: int) -> str:
        try:
            result = process(context(), inbox_id)
        except DBAPIError as exc:
            # Transient by nature (database restarting, connection dropped). After the last
            # retry the entry simply stays RECEIVED; the serve sweeper dispatches it again.
            raise self.retry(exc=exc, countdown=min(30, 2**self.request.retries)) from exc
        for job_id in result.job_ids:
            app.send_task(
                SUMMARY_TASK, args=[job_id], queue=SANDBOX_QUEUE, countdown=settings.summary_coalesce_s + 0.05
            )
        return str(result.outcome)

    return app
