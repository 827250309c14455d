"""Celery application factory and the task names both zones agree on.

Tasks are sent by name, so the identified-zone worker can queue a summary job without
importing the sandbox, and the sandbox never imports the worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery, bootsteps
from kombu import Queue  # type: ignore[attr-defined]

if TYPE_CHECKING:  # the model zone imports the task names, never the settings object
    from core.settings import Settings

PIPELINE_TASK = "sidecar.pipeline.process"  # one inbox entry (kept for queued tasks of 0.1)
LANE_TASK = "sidecar.pipeline.lane"  # a lane's backlog, batch by batch (worker.runner)
SUMMARY_TASK = "sidecar.sandbox.summarize"
PIPELINE_QUEUE = "sidecar.pipeline"
SANDBOX_QUEUE = "sidecar.sandbox"
# The sandbox asks the identified zone whether a prompt (or a model's answer) carries a
# known identifier of its patient; served by `sidecar worker` on its own queue, so a
# screening never waits behind a lane's backlog for longer than one task.
SCREEN_TASK = "sidecar.screen"
SCREEN_QUEUE = "sidecar.screen"


def lane_queue(lane: int) -> str:
    """One queue per lane; each consumed by one single-threaded worker, so the messages of
    a patient (always the same lane) are processed in arrival order."""
    return f"{PIPELINE_QUEUE}.{lane}"


SHUTDOWN_CHECK_S = 0.5


class _PromptShutdown(bootsteps.StartStopStep):  # type: ignore[misc]
    """A worker's event loop checks for SIGTERM between polls, and a poll waits for the next
    timer, up to 10 s (kombu's Hub): a no-op timer every SHUTDOWN_CHECK_S bounds that wait,
    so `sidecar worker` and `sidecar sandbox` stop within a second rather than ten."""

    requires = ("celery.worker.components:Hub",)

    def start(self, worker: Any) -> None:
        if worker.hub is not None:
            worker.hub.call_repeatedly(SHUTDOWN_CHECK_S, _no_op)


def _no_op() -> None:
    return None


def _durable(name: str) -> Queue:
    return Queue(name, durable=True)  # type: ignore[no-untyped-call]


def make_celery(settings: Settings, name: str, *, results: bool = False) -> Celery:
    """``results``: the app sends or serves a request that waits for its answer (the
    screening); replies travel back over the same RabbitMQ (rpc://), never stored."""
    if not settings.broker_url:
        raise ValueError("Celery needs SIDECAR_BROKER_URL")
    app = Celery(name, broker=settings.broker_url, backend="rpc://" if results else None)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # The message is acknowledged to RabbitMQ only after the task finished, so a
        # worker killed mid-task leaves it queued for another.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=PIPELINE_QUEUE,
        task_queues=[
            *(_durable(lane_queue(k)) for k in range(settings.pipeline_lanes)),
            _durable(SANDBOX_QUEUE),
            _durable(SCREEN_QUEUE),
        ],
        task_routes={SUMMARY_TASK: {"queue": SANDBOX_QUEUE}, SCREEN_TASK: {"queue": SCREEN_QUEUE}},
        result_persistent=False,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    app.steps["worker"].add(_PromptShutdown)
    return app
