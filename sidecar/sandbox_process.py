"""The embedded default's model zone: summary jobs in a process of their own under `sidecar serve`.

The listener keeps its core (a summary reads a patient's whole record and runs a model).
The identified zone's known-identifier screen is still an object of this process
(``worker.screen.ScreenService``, as the in-process loop had), so this process opens the
identified tables through it; the hardening issue (17) puts the screen behind the link
to `serve`, so the model zone's process holds neither the vault nor those tables.
"""

from __future__ import annotations

import multiprocessing.connection
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from core.children import ChildLink, Children
from core.db import Database
from core.settings import Settings
from sandbox.models import ExtractiveSummarizer
from sandbox.runner import due_job_ids, run_job
from worker.context import load_secret
from worker.screen import ScreenService

__all__ = ["sandbox_process"]


def run_sandbox_child(conn: multiprocessing.connection.Connection, parent: int, settings: Settings) -> None:
    """Due jobs until told to stop; then every pending one (coalescing is only a delay)."""
    from core.logs import configure_logging
    from deid import Vault

    configure_logging(settings.log_level)
    link = ChildLink(conn, parent, nice=settings.pipeline_nice)
    db = Database(settings)
    screen = ScreenService(db, Vault(load_secret(settings), date_shift_max_days=settings.date_shift_max_days))
    model = ExtractiveSummarizer()

    def run_due(*, drain: bool = False) -> int:
        horizon = datetime.max.replace(tzinfo=UTC) if drain else None
        done = 0
        for job_id in due_job_ids(db, now=horizon):
            run_job(db, job_id, model, screen=screen, ignore_due=drain)
            done += 1
        if done:
            link.report({"changed": True})
        return done

    link.ready()
    try:
        while not link.stop.is_set():
            if run_due():
                continue
            link.wake.wait(settings.relay_interval_s)
            link.wake.clear()
        while run_due(drain=True):
            pass
    finally:
        db.dispose()
        link.stopped()


def sandbox_process(
    settings: Settings, on_report: Callable[[dict[str, Any]], None] | None = None
) -> Children:
    return Children(
        run_sandbox_child, name="sidecar-sandbox", args_for=lambda _index: (settings,), on_report=on_report
    )
