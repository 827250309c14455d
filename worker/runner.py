"""The pipeline's loop over the inbox, and the embedded default's pipeline processes.

``sidecar serve`` on embedded storage starts ``pipeline_processes`` child processes
(on ``core.children``), so the listener keeps its core while the pipeline uses the others.
Each child runs a ``PipelineRunner``: it takes the RECEIVED inbox entries of its lanes in
inbox id order, a batch at a time, and runs them through ``worker.batch``. The batch is
adaptive by nature: when idle it takes the one or two entries that just arrived (a poll
every few milliseconds, at once when the listener signals a commit); under load it takes
up to ``pipeline_batch_max``, which is what accumulated during the previous batch. A
patient's entries always fall in the same lane (``worker.dispatch.lane_of_entry``), and one
process handles a lane in order, so per-patient order holds with several processes.

A child reports each batch to the parent over a pipe (so the relay, the sandbox and the
application-ACK sender wake at once) and its CPU time per stage to ``pipeline_stats``.
It exits when told to stop (after the entries of its lanes are through: a drain), when
the parent dies (a crash: everything stays RECEIVED in the inbox for the next start), or
on SIGTERM (a drain too).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing.connection
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from core.children import ChildLink, Children, process_name
from core.settings import Settings
from core.tables import InboxEntry, InboxStatus, PipelineStat
from worker.batch import BatchResult, PipelineState, process_entries
from worker.dispatch import lane_of_entry
from worker.pipeline import PipelineContext

log = logging.getLogger("sidecar.worker.runner")

IDLE_POLL_S = 0.005  # an idle runner looks for new entries this often (an indexed read)
STATS_EVERY_S = 1.0
FULL_GC_EVERY_S = 60.0


@dataclass(frozen=True)
class Lanes:
    """Which lanes this runner handles: ``mine`` of ``count``."""

    mine: frozenset[int] = frozenset({0})
    count: int = 1


class PipelineRunner:
    def __init__(
        self,
        ctx: PipelineContext,
        *,
        batch_max: int = 500,
        lanes: Lanes = Lanes(),
        dicom_issuer: str = "",
        on_batch: Callable[[BatchResult], None] | None = None,
        name: str | None = None,
    ) -> None:
        self._ctx = ctx
        self._batch_max = batch_max
        self._lanes = lanes
        self._dicom_issuer = dicom_issuer
        self._on_batch = on_batch
        self.state = PipelineState()
        self.name = name or process_name()
        self._failures = 0
        self._last_stats = time.monotonic()
        self._last_full_gc = time.monotonic()
        # The cyclic collector ran every 700 allocations and rescanned what the caches hold:
        # a third of the pipeline's CPU (docs/benchmarks.md). Batches are acyclic data freed by
        # reference counting, so the young generations are collected after each batch and
        # everything once a minute instead.
        gc.disable()

    @property
    def failing(self) -> bool:
        """The last batch failed transiently: its entries are still waiting."""
        return self._failures > 0

    def next_batch(self) -> list[int]:
        """The oldest RECEIVED entries of this runner's lanes."""
        with self._ctx.db.reads() as session:
            if self._lanes.count == 1:
                query = select(InboxEntry.id).where(InboxEntry.status == InboxStatus.RECEIVED)
                return list(session.execute(query.order_by(InboxEntry.id).limit(self._batch_max)).scalars())
            # Several processes: each reads the backlog's heads and keeps its lanes' entries.
            rows = session.execute(
                select(InboxEntry.id, InboxEntry.raw, InboxEntry.charset)
                .where(InboxEntry.status == InboxStatus.RECEIVED)
                .order_by(InboxEntry.id)
                .limit(self._batch_max * self._lanes.count)
            ).all()
        mine = [
            r.id
            for r in rows
            if lane_of_entry(r.raw, r.charset, self._lanes.count, self._dicom_issuer) in self._lanes.mine
        ]
        return mine[: self._batch_max]

    def run_once(self) -> int:
        """One batch; returns how many entries it took (0: nothing to do)."""
        ids = self.next_batch()
        if not ids:
            self._flush_stats_when_due()
            return 0
        try:
            result = process_entries(self._ctx, ids, state=self.state)
        except DBAPIError as exc:
            # Transient (database busy, restarting): the batch stays RECEIVED and is taken
            # again, in order, after a back-off.
            self._failures += 1
            delay = min(5.0, 0.1 * 2 ** min(self._failures, 6))
            log.warning(
                "transient failure, retrying", extra={"error_type": type(exc).__name__, "delay_s": delay}
            )
            time.sleep(delay)
            return 0
        except Exception:
            # Not expected (the stages dead-letter their own failures): keep the process up
            # and the entries RECEIVED, backing off rather than spinning on the same batch.
            self._failures += 1
            log.exception("pipeline error")
            time.sleep(min(30.0, 0.5 * 2 ** min(self._failures, 6)))
            return 0
        self._failures = 0
        self._collect_garbage()
        if self._on_batch is not None:
            try:
                self._on_batch(result)
            except Exception:
                log.exception("batch callback failed")
        self._flush_stats_when_due()
        return len(ids)

    def _flush_stats_when_due(self) -> None:
        # Not after every batch, nor at every idle moment: at a steady rate the pipeline
        # idles between most batches, and each flush is a write transaction of its own (4%
        # of a pipeline process's time at 300 msg/s, docs/benchmarks.md).
        if time.monotonic() - self._last_stats > STATS_EVERY_S:
            self.flush_stats()

    def _collect_garbage(self) -> None:
        gc.collect(1)
        if time.monotonic() - self._last_full_gc > FULL_GC_EVERY_S:
            gc.collect()
            self._last_full_gc = time.monotonic()

    def flush_stats(self) -> None:
        """Add the CPU time per stage since the last flush to ``pipeline_stats``."""
        seconds, entries = self.state.take()
        self._last_stats = time.monotonic()
        if not seconds:
            return
        rows = [
            {"process": self.name, "stage": stage, "cpu_s": cpu, "entries": entries}
            for stage, cpu in sorted(seconds.items())
        ]
        db = self._ctx.db
        insert = sqlite_insert if db.is_sqlite else pg_insert
        statement = insert(PipelineStat)
        statement = statement.on_conflict_do_update(
            index_elements=["process", "stage"],
            set_={
                "cpu_s": PipelineStat.cpu_s + statement.excluded.cpu_s,
                "entries": PipelineStat.entries + statement.excluded.entries,
            },
        )
        try:
            with db.transaction() as session:
                session.execute(statement, rows)
        except DBAPIError:
            log.warning("pipeline stats not recorded")  # counters only: never worth a retry

    def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Batches until ``stop`` is set, then what is left of the lanes' backlog (a drain)."""
        while not stop.is_set():
            if self.run_once():
                continue
            if wake is not None:
                wake.wait(IDLE_POLL_S)
                wake.clear()
            else:
                time.sleep(IDLE_POLL_S)
        self.drain()

    def drain(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.run_once():
            pass
        self.flush_stats()


# --- the embedded default's pipeline processes (core.children) ----------------------------


def run_pipeline_child(
    conn: multiprocessing.connection.Connection, parent: int, settings: Settings, lanes: Lanes
) -> None:
    """A pipeline process of `sidecar serve`: batches until told to stop (then drains),
    SIGTERM, or its parent is gone."""
    from core.logs import configure_logging
    from worker.context import build_context

    configure_logging(settings.log_level, file=settings.log_file)
    link = ChildLink(conn, parent, nice=settings.pipeline_nice)

    def report(result: BatchResult) -> None:
        link.report({"changed": result.changed, "jobs": bool(result.job_ids), "entries": len(result.results)})

    ctx = build_context(settings)
    runner = PipelineRunner(
        ctx,
        batch_max=settings.pipeline_batch_max,
        lanes=lanes,
        dicom_issuer=settings.dicom_issuer_default,
        on_batch=report,
    )
    link.ready()
    try:
        runner.run(link.stop, link.wake)
    finally:
        ctx.db.dispose()
        link.stopped()


def pipeline_processes(
    settings: Settings, on_batch: Callable[[dict[str, Any]], None] | None = None
) -> Children:
    """The embedded default's pipeline: ``effective_pipeline_processes`` children, child i
    taking lane i of as many lanes."""
    count = settings.effective_pipeline_processes
    return Children(
        run_pipeline_child,
        name="sidecar-pipeline",
        count=count,
        args_for=lambda index: (settings, Lanes(frozenset({index}), count)),
        on_report=on_batch,
        wake_every_s=IDLE_POLL_S,
    )
