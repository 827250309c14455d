"""The pipeline and what moves its results: batches of inbox entries mapped, de-identified
and stored in one transaction (``worker.batch``, ``worker.pipeline``), the in-process runner
of `sidecar serve` (``worker.runner``) and the Celery tasks of `sidecar worker`
(``worker.tasks``), lanes (``worker.dispatch``), summary triggers (``worker.triggers``), the
outgoing leak check (``worker.leakguard``), the outbox relay and its publishers
(``worker.relay``, ``worker.publishers``), application ACKs, dead letters and replay.

Members load on first use (``core.frontdoor``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.frontdoor import lazy_exports

if TYPE_CHECKING:
    from worker.batch import process_entries
    from worker.context import build_context
    from worker.dispatch import InboxDispatcher
    from worker.leakguard import LeakGuard
    from worker.pipeline import PipelineContext
    from worker.publishers import LocalBus, OutgoingEvent, Publisher, RabbitPublisher
    from worker.relay import Relay
    from worker.replay import ReplayFilter, replay
    from worker.runner import pipeline_processes
    from worker.screen import ScreenService

__all__ = [
    "InboxDispatcher",
    "LeakGuard",
    "LocalBus",
    "OutgoingEvent",
    "PipelineContext",
    "Publisher",
    "RabbitPublisher",
    "Relay",
    "ReplayFilter",
    "ScreenService",
    "build_context",
    "pipeline_processes",
    "process_entries",
    "replay",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "InboxDispatcher": "worker.dispatch",
        "LeakGuard": "worker.leakguard",
        "LocalBus": "worker.publishers",
        "OutgoingEvent": "worker.publishers",
        "PipelineContext": "worker.pipeline",
        "Publisher": "worker.publishers",
        "RabbitPublisher": "worker.publishers",
        "Relay": "worker.relay",
        "ReplayFilter": "worker.replay",
        "ScreenService": "worker.screen",
        "build_context": "worker.context",
        "pipeline_processes": "worker.runner",
        "process_entries": "worker.batch",
        "replay": "worker.replay",
    },
)
