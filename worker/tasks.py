"""The pipeline as Celery tasks (production: RabbitMQ). Same functions as in-process.
Also the screening of the sandbox's texts (``sidecar.screen``; see worker.screen)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery
from sqlalchemy.exc import DBAPIError

from core.settings import Settings
from core.tasks import PIPELINE_TASK, SANDBOX_QUEUE, SCREEN_TASK, SUMMARY_TASK, make_celery
from worker.context import build_context
from worker.pipeline import PipelineContext, ProcessResult, process
from worker.screen import ScreenService

log = logging.getLogger("sidecar.worker.tasks")


PATIENCE_S = 600.0


def process_with_patience(ctx: PipelineContext, inbox_id: int) -> ProcessResult:
    """Retry transient failures here, in the task, with back-off: re-queueing would put
    the message behind newer ones of the same patient. A database outage therefore pauses
    the lane and it resumes in order. Past PATIENCE_S the task gives up; the entry stays
    RECEIVED and `sidecar serve` dispatches it again."""
    deadline = time.monotonic() + PATIENCE_S
    delay = 0.2
    while True:
        try:
            return process(ctx, inbox_id)
        except DBAPIError as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning(
                "transient failure, retrying",
                extra={"inbox_id": inbox_id, "error_type": type(exc).__name__},
            )
            time.sleep(delay)
            delay = min(10.0, delay * 2)


def build_worker_app(settings: Settings) -> Celery:
    app = make_celery(settings, "sidecar-worker", results=True)
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

    # Acknowledged on receipt and never retried: the sandbox waits screen_timeout_s for
    # the answer and defers the job without one, so a late verdict would help no one.
    @app.task(name=SCREEN_TASK, ignore_result=False, acks_late=False)  # type: ignore[untyped-decorator]
    def screen_task(job_id: int, patient: str, text: str, stage: str) -> list[str]:
        ctx = context()
        return ScreenService(ctx.db, ctx.vault)(job_id, patient, text, stage)

    return app
