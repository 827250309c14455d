"""The embedded default's pipeline: one or more processes of their own beside the listener.

``sidecar serve`` on embedded storage starts ``pipeline_processes`` child processes
(``PipelineProcesses``), so the listener keeps its core while the pipeline uses the other.
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

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from core.settings import Settings
from core.tables import InboxEntry, InboxStatus, PipelineStat
from worker.batch import BatchResult, StageClock, process_entries
from worker.dispatch import lane_of_entry
from worker.pipeline import PipelineContext

log = logging.getLogger("sidecar.worker.runner")

IDLE_POLL_S = 0.005  # an idle runner looks for new entries this often (an indexed read)
STATS_EVERY_S = 1.0
SUPERVISE_EVERY_S = 0.5


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
        self.clock = StageClock()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._failures = 0
        self._last_stats = time.monotonic()

    @property
    def failing(self) -> bool:
        """The last batch failed transiently: its entries are still waiting."""
        return self._failures > 0

    def next_batch(self) -> list[int]:
        """The oldest RECEIVED entries of this runner's lanes."""
        with self._ctx.db.sessions() as session:
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
            self.flush_stats()
            return 0
        try:
            result = process_entries(self._ctx, ids, clock=self.clock)
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
        self._failures = 0
        if self._on_batch is not None:
            try:
                self._on_batch(result)
            except Exception:
                log.exception("batch callback failed")
        if time.monotonic() - self._last_stats > STATS_EVERY_S:
            self.flush_stats()
        return len(ids)

    def flush_stats(self) -> None:
        """Add the CPU time per stage since the last flush to ``pipeline_stats``."""
        seconds, entries = self.clock.take()
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


# --- the embedded default's child processes ---------------------------------------------

_STOP = "stop"
_WAKE = "wake"


def _child_main(
    settings: Settings, lanes: Lanes, conn: multiprocessing.connection.Connection, parent: int
) -> None:
    """A pipeline process: runs until told to stop, SIGTERM, or its parent is gone."""
    from core.logs import configure_logging
    from worker.context import build_context

    configure_logging(settings.log_level)
    if settings.pipeline_nice:
        os.nice(settings.pipeline_nice)  # the listener's ACKs first when both want a core
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop (a drain)
    stop, wake = threading.Event(), threading.Event()

    def on_sigterm(*_: object) -> None:
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    send_lock = threading.Lock()

    def report(result: BatchResult) -> None:
        summary = {"changed": result.changed, "jobs": bool(result.job_ids), "entries": len(result.results)}
        with send_lock:
            conn.send(summary)

    ctx = build_context(settings)
    runner = PipelineRunner(
        ctx,
        batch_max=settings.pipeline_batch_max,
        lanes=lanes,
        dicom_issuer=settings.dicom_issuer_default,
        on_batch=report,
    )

    def listen() -> None:
        # Messages from the parent; EOF or a parent that died stops the runner.
        while not stop.is_set():
            try:
                if conn.poll(0.5):
                    message = conn.recv()
                    if message == _STOP:
                        stop.set()
                    wake.set()
                elif os.getppid() != parent:
                    stop.set()
                    wake.set()
            except (EOFError, OSError):
                stop.set()
                wake.set()

    threading.Thread(target=listen, name="parent", daemon=True).start()
    with send_lock:
        conn.send({"ready": True})
    try:
        runner.run(stop, wake)
    finally:
        ctx.db.dispose()
        with suppress(OSError, ValueError), send_lock:
            conn.send({"stopped": True})


class PipelineProcesses:
    """The parent's side: starts the children, wakes them, hears their batches, stops them."""

    def __init__(
        self, settings: Settings, *, count: int, on_batch: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self._settings = settings
        self._count = max(1, count)
        self._on_batch = on_batch
        self._children: list[tuple[multiprocessing.process.BaseProcess, Any]] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._last_wake = 0.0
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        for index in range(self._count):
            self._children.append(self._spawn(index))
        deadline = time.monotonic() + timeout_s
        for index in range(self._count):
            self._await_ready(index, deadline)
        self._supervisor = threading.Thread(target=self._supervise, name="pipeline-supervisor", daemon=True)
        self._supervisor.start()

    def _spawn(self, index: int) -> tuple[multiprocessing.process.BaseProcess, Any]:
        # spawn, not fork: the listener's process has threads (and SQLite connections).
        mp = multiprocessing.get_context("spawn")
        parent_end, child_end = mp.Pipe()
        process = mp.Process(
            target=_child_main,
            args=(self._settings, Lanes(frozenset({index}), self._count), child_end, os.getpid()),
            name=f"sidecar-pipeline-{index}",
            daemon=True,
        )
        process.start()
        child_end.close()
        return process, parent_end

    def _await_ready(self, index: int, deadline: float) -> None:
        process, conn = self._children[index]
        if not conn.poll(max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"pipeline process {process.name} did not start")
        conn.recv()
        thread = threading.Thread(
            target=self._listen, args=(conn,), name=f"{process.name}-reports", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _supervise(self) -> None:
        """A child that died (killed, out of memory) is started again: its lanes' entries
        are still RECEIVED in the inbox, and the new one takes them in order."""
        while not self._stopping.wait(SUPERVISE_EVERY_S):
            for index, (process, conn) in enumerate(list(self._children)):
                if process.is_alive() or self._stopping.is_set():
                    continue
                log.error(
                    "pipeline process died; starting it again",
                    extra={"pipeline_process": process.name, "exitcode": process.exitcode},
                )
                conn.close()
                with self._lock:
                    self._children[index] = self._spawn(index)
                try:
                    self._await_ready(index, time.monotonic() + 60.0)
                except (RuntimeError, EOFError, OSError):
                    log.error(
                        "pipeline process did not start again", extra={"pipeline_process": process.name}
                    )

    def _listen(self, conn: Any) -> None:
        while True:
            try:
                report = conn.recv()
            except (EOFError, OSError):
                return
            if report.get("stopped"):
                return
            if self._on_batch is not None:
                try:
                    self._on_batch(report)
                except Exception:
                    log.exception("pipeline report callback failed")

    def wake(self) -> None:
        """Tell the children new entries are in the inbox (they poll anyway: at most one
        wake per poll interval, however many messages the listener commits)."""
        now = time.monotonic()
        if now - self._last_wake < IDLE_POLL_S:
            return
        self._last_wake = now
        with self._lock:
            for _, conn in self._children:
                with suppress(OSError, ValueError):
                    conn.send(_WAKE)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self._children if p.pid is not None]

    def alive(self) -> bool:
        return all(p.is_alive() for p, _ in self._children)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Drain: each child finishes the entries of its lanes, then exits."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(SUPERVISE_EVERY_S + 1.0)
        with self._lock:
            for _, conn in self._children:
                with suppress(OSError, ValueError):
                    conn.send(_STOP)
        deadline = time.monotonic() + timeout_s
        for process, _ in self._children:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("pipeline process did not stop in time", extra={"pipeline_process": process.name})
                process.terminate()
                process.join(5.0)
        for thread in self._threads:
            thread.join(1.0)
        for _, conn in self._children:
            conn.close()
