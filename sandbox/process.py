"""The embedded default's model zone: summary jobs in a process of their own under
`sidecar serve` (started by sidecar.sandbox_process).

What this process holds is what ``SandboxConfig`` carries: a database URL, opened as the
model zone (core.zones: on SQLite an authorizer refuses every identified table; on
PostgreSQL the URL's role has only the model zone's grants), the model to load (with the
model server's API key, if any: given here, never in the process's environment) and a few
timings. No settings object, no secret, no vault: its texts are screened by `serve`, over
the link (sandbox.screen.LinkScreen).
"""

from __future__ import annotations

import multiprocessing.connection
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.children import ChildLink
from core.db import Database
from core.logs import configure_logging
from sandbox.llm import ModelConfig, load_model
from sandbox.runner import JobOutcome, due_job_ids, run_job
from sandbox.screen import LinkScreen

__all__ = ["SandboxConfig", "run_sandbox_child"]


@dataclass(frozen=True)
class SandboxConfig:
    database_url: str  # the model zone's (sandbox_database_url, else database_url)
    model: str | None  # sandbox_model: "module:factory"; None: the extractive default
    model_config: ModelConfig | None  # model_base_url's server; when set, used instead of ``model``
    screen_timeout_s: float
    poll_interval_s: float
    log_level: str = "INFO"
    log_file: Path | None = None  # log_file: None writes to stderr
    nice: int = 0
    language: str = "en"  # summary_language
    max_sentences: int = 12  # summary_max_sentences
    # How long a stop drains pending jobs (under core.children's 30 s stop limit); what is
    # not done by then, or once the parent or its screen is gone, stays pending for the next
    # start: jobs are rows, so nothing is lost, and none is failed for want of a screen.
    drain_s: float = 20.0


def run_sandbox_child(
    conn: multiprocessing.connection.Connection, parent: int, config: SandboxConfig
) -> None:
    """Due jobs until told to stop; then every pending one (coalescing is only a delay) for up
    to ``drain_s``, while the parent and its screen are there."""
    configure_logging(config.log_level, file=config.log_file)
    link = ChildLink(conn, parent, nice=config.nice)
    db = Database(url=config.database_url, model_zone=True)
    screen = LinkScreen(link, config.screen_timeout_s)
    model = load_model(config.model_config, config.model)

    def run(job_id: int, *, drain: bool = False) -> JobOutcome:
        return run_job(
            db,
            job_id,
            model,
            screen=screen,
            ignore_due=drain,
            language=config.language,
            max_sentences=config.max_sentences,
        ).outcome

    def run_due() -> int:
        done = 0
        for job_id in due_job_ids(db):
            if link.stop.is_set():
                break  # the drain takes over, with its time limit
            run(job_id)
            done += 1
        if done:
            link.report({"changed": True})
        return done

    def drain(until: float) -> None:
        """Every pending job (coalescing is only a delay) until ``until``, while the parent
        and its screen are there; what is left stays pending for the next start."""
        while ids := due_job_ids(db, now=datetime.max.replace(tzinfo=UTC)):
            for job_id in ids:
                if link.parent_gone.is_set() or time.monotonic() > until:
                    return
                outcome = run(job_id, drain=True)
                link.report({"changed": True})
                if outcome is JobOutcome.DEFERRED:
                    return  # no screen any more: the rest would only spend their attempts

    link.ready()
    try:
        while not link.stop.is_set():
            if run_due():
                continue
            link.wake.wait(config.poll_interval_s)
            link.wake.clear()
        drain(time.monotonic() + config.drain_s)
    finally:
        db.dispose()
        link.stopped()
