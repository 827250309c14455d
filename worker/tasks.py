"""The pipeline as Celery tasks (production: RabbitMQ). Same functions as in-process.
Also the screening of the sandbox's texts (``sidecar.screen``; see worker.screen)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery
from sqlalchemy.exc import DBAPIError

from core.children import process_name
from core.settings import Settings
from core.tasks import (
    LANE_TASK,
    PIPELINE_TASK,
    SANDBOX_QUEUE,
    SCREEN_TASK,
    SUMMARY_TASK,
    lane_queue,
    make_celery,
)
from worker.batch import process
from worker.context import build_context
from worker.pipeline import PipelineContext
from worker.runner import Lanes, PipelineRunner
from worker.screen import ScreenService

log = logging.getLogger("sidecar.worker.tasks")


LANE_SLICE_S = 1.0


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

    runners: dict[int, PipelineRunner] = {}

    def send_jobs(job_ids: list[int]) -> None:
        for job_id in job_ids:
            app.send_task(
                SUMMARY_TASK, args=[job_id], queue=SANDBOX_QUEUE, countdown=settings.summary_coalesce_s + 0.05
            )

    def runner(lane: int) -> PipelineRunner:
        if lane not in runners:
            runners[lane] = PipelineRunner(
                context(),
                batch_max=settings.pipeline_batch_max,
                lanes=Lanes(frozenset({lane}), settings.pipeline_lanes),
                dicom_issuer=settings.dicom_issuer_default,
                on_batch=lambda result: send_jobs(result.job_ids),
                name=f"{process_name()}:lane-{lane}",
            )
        return runners[lane]

    @app.task(name=LANE_TASK, bind=True)  # type: ignore[untyped-decorator]
    def lane_task(self: Any, lane: int, up_to: int = 0) -> int:
        """The lane's backlog, batch by batch, in inbox id order, for at most LANE_SLICE_S:
        then the task queues itself again, so a screening request waits behind one slice
        at most. Transient failures back off inside the runner and the entries stay
        RECEIVED; nothing is lost by a crash (late ack: the wake-up is redelivered)."""
        lane_runner = runner(lane)
        deadline = time.monotonic() + LANE_SLICE_S
        done = 0
        while time.monotonic() < deadline:
            took = lane_runner.run_once()
            if not took and not lane_runner.failing:
                return done
            done += took
        lane_runner.flush_stats()
        app.send_task(LANE_TASK, args=[lane, up_to], queue=lane_queue(lane))
        return done

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
    # The answer is a verdict only ("clean", "leak", "refused"; worker.screen), a few per job.
    @app.task(name=SCREEN_TASK, ignore_result=False, acks_late=False)  # type: ignore[untyped-decorator]
    def screen_task(job_id: int, text: str, stage: str, patient: str | None = None) -> str:
        # ``patient``: what earlier sandboxes sent; ignored, the job row names the patient.
        ctx = context()
        return ScreenService(ctx.db, ctx.vault, max_per_job=settings.screen_max_per_job)(job_id, text, stage)

    return app
