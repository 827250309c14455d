"""The embedded sandbox process at a stop: its drain is bounded, and once `serve` (which
answers its screenings) is gone it leaves the pending jobs for the next start instead of
spending their attempts on a screen that cannot answer and failing them."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from sqlalchemy import select

from core.settings import Settings
from core.tables import Job, JobStatus
from sandbox.process import run_sandbox_child
from sidecar.sandbox_process import sandbox_config
from tests.fixtures.messages import ADT_A01, ORU_R01
from tests.test_leak_outgoing import ingest
from worker.context import build_context


def test_a_sandbox_whose_parent_is_gone_fails_no_job(tmp_path: Path) -> None:
    # Pending jobs not yet due (a long coalescing window): a stop drains them.
    settings = Settings(data_dir=tmp_path / "d", summary_coalesce_s=3600)
    ctx = build_context(settings)
    job_ids = ingest(ctx, ADT_A01, ORU_R01)
    assert job_ids
    spawn = multiprocessing.get_context("spawn")
    parent_end, child_end = spawn.Pipe()
    child = spawn.Process(target=run_sandbox_child, args=(child_end, os.getpid(), sandbox_config(settings)))
    child.start()
    child_end.close()
    try:
        assert parent_end.poll(60), "the sandbox process did not start"
        assert parent_end.recv() == {"ready": True}
        parent_end.send("stop")
        parent_end.close()  # serve is gone: no screening will be answered
        child.join(60)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
    with ctx.db.sessions() as s:
        jobs = s.execute(select(Job.status, Job.error_code).where(Job.id.in_(job_ids))).all()
    assert jobs and all(status == JobStatus.PENDING for status, _ in jobs), jobs
    ctx.db.dispose()
