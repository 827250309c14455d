"""Child processes of `sidecar serve` on the embedded default, and their link to it.

The listener keeps its core: the pipeline and the sandbox run in processes of their own
(multiprocessing's spawn: the listener's process has threads and open databases), each
linked to `serve` by a pipe. Over it the parent wakes a child (new work), tells it to
stop (it drains first), and hears its reports (a batch stored: wake the relay). A child
may also ask and wait for an answer (``ChildLink.request``): the sandbox's screening
requests, answered by `serve` so that the model zone's process holds no vault. The
parent starts a child again when it dies; a child exits when its parent is gone, so a
crash of either leaves no orphan and loses nothing (the work is in the database).
"""

from __future__ import annotations

import itertools
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
from pathlib import Path
from typing import Any

__all__ = ["ChildLink", "Children", "process_name"]

log = logging.getLogger("sidecar.children")

STOP, WAKE = "stop", "wake"
REQUEST, ANSWER = "request", "answer"  # keys of a request (child -> parent) and its answer
SUPERVISE_EVERY_S = 0.5
_PARENT_CHECK_S = 0.5


def process_name() -> str:
    """host:pid, the key under which a process adds to its counters (``pipeline_stats``,
    ``event_tallies``): one row per process, so processes never update the same row."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _short(name: str) -> str:
    """A process name within Linux's 15 characters: sidecar-pipeline-1 is sc-pipeline-1."""
    return name.replace("sidecar-", "sc-", 1)[:15]


class ChildLink:
    """The child's end: ``stop`` and ``wake`` events, ``report`` to the parent."""

    def __init__(self, conn: multiprocessing.connection.Connection, parent: int, *, nice: int = 0) -> None:
        self._conn = conn
        self._parent = parent
        self._send_lock = threading.Lock()
        self.stop, self.wake = threading.Event(), threading.Event()
        # Set when the parent is gone (its end closed, or another process adopted us): a
        # draining child then stops at once, its work left in the database for the next start.
        self.parent_gone = threading.Event()
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}
        if nice:
            os.nice(nice)  # the listener first when both want a core
        with suppress(OSError):  # Linux: ps, top and bench.e2e then tell the children apart
            Path("/proc/self/comm").write_text(_short(multiprocessing.current_process().name))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop (a drain)
        signal.signal(signal.SIGTERM, lambda *_: self._stop())
        threading.Thread(target=self._listen, name="parent", daemon=True).start()

    def _stop(self) -> None:
        self.stop.set()
        self.wake.set()

    def _listen(self) -> None:
        # Reads on after a stop: a draining child still asks (the sandbox's screenings) and
        # must hear the answers; it ends when the link or the parent is gone.
        while True:
            try:
                if self._conn.poll(_PARENT_CHECK_S):
                    message = self._conn.recv()
                    if isinstance(message, dict) and ANSWER in message:
                        self._answered(message)
                        continue
                    if message == STOP:
                        self.stop.set()
                    self.wake.set()
                elif os.getppid() != self._parent:
                    self.parent_gone.set()
                    self._stop()
                    return
            except (EOFError, OSError):
                self.parent_gone.set()
                self._stop()
                return

    def report(self, message: dict[str, Any]) -> None:
        with suppress(OSError, ValueError), self._send_lock:
            self._conn.send(message)

    def request(self, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Ask the parent and wait for its answer; TimeoutError without one in time
        (the parent busy, stopping or gone)."""
        ident = next(self._ids)
        done, box = threading.Event(), list[dict[str, Any]]()
        self._waiting[ident] = (done, box)
        try:
            with self._send_lock:
                self._conn.send({REQUEST: ident, **payload})
            if not done.wait(timeout_s) or not box:
                raise TimeoutError(f"no answer from the parent within {timeout_s}s")
            return box[0]
        except (OSError, ValueError) as exc:
            raise TimeoutError(f"link to the parent lost ({type(exc).__name__})") from exc
        finally:
            self._waiting.pop(ident, None)

    def _answered(self, message: dict[str, Any]) -> None:
        waiting = self._waiting.get(message[ANSWER])
        if waiting is not None:  # else: it came after the requester gave up
            waiting[1].append(message)
            waiting[0].set()

    def ready(self) -> None:
        self.report({"ready": True})

    def stopped(self) -> None:
        self.report({"stopped": True})


Target = Callable[..., None]  # (conn, parent pid, *args)


class Children:
    """The parent's end: starts ``count`` children running ``target(conn, parent_pid,
    *args_for(index))``, wakes them, hears their reports, restarts the dead, stops them."""

    def __init__(
        self,
        target: Target,
        *,
        name: str,
        count: int = 1,
        args_for: Callable[[int], tuple[Any, ...]] = lambda _index: (),
        on_report: Callable[[dict[str, Any]], None] | None = None,
        on_request: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        wake_every_s: float = 0.0,
    ) -> None:
        """``on_request``: answers a child's ``ChildLink.request`` (on the thread that reads
        that child's link, so one child's requests are answered in order)."""
        self._target, self._name, self._count = target, name, max(1, count)
        self._args_for, self._on_report = args_for, on_report
        self._on_request = on_request
        self._wake_every_s = wake_every_s
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
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"{self._name}-supervisor", daemon=True
        )
        self._supervisor.start()

    def _spawn(self, index: int) -> tuple[multiprocessing.process.BaseProcess, Any]:
        mp = multiprocessing.get_context("spawn")
        parent_end, child_end = mp.Pipe()
        process = mp.Process(
            target=self._target,
            args=(child_end, os.getpid(), *self._args_for(index)),
            name=f"{self._name}-{index}",
            daemon=True,
        )
        process.start()
        child_end.close()
        return process, parent_end

    def _await_ready(self, index: int, deadline: float) -> None:
        process, conn = self._children[index]
        if not conn.poll(max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"{process.name} did not start")
        conn.recv()
        thread = threading.Thread(
            target=self._listen, args=(conn,), name=f"{process.name}-reports", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _supervise(self) -> None:
        """A child that died (killed, out of memory) is started again: its work is still in
        the database, and the new one takes it in order."""
        while not self._stopping.wait(SUPERVISE_EVERY_S):
            for index, (process, conn) in enumerate(list(self._children)):
                if process.is_alive() or self._stopping.is_set():
                    continue
                log.error(
                    "child process died; starting it again",
                    extra={"child": process.name, "exitcode": process.exitcode},
                )
                conn.close()
                with self._lock:
                    self._children[index] = self._spawn(index)
                try:
                    self._await_ready(index, time.monotonic() + 60.0)
                except (RuntimeError, EOFError, OSError):
                    log.error("child process did not start again", extra={"child": process.name})

    def _listen(self, conn: Any) -> None:
        while True:
            try:
                report = conn.recv()
            except (EOFError, OSError, TypeError):
                # TypeError: stop() closed the connection under a blocked recv (CPython's
                # multiprocessing then reads from a handle of None).
                return
            if report.get("stopped"):
                return
            if REQUEST in report:
                self._answer(conn, report)
                continue
            if self._on_report is not None:
                try:
                    self._on_report(report)
                except Exception:
                    log.exception("child report callback failed")

    def _answer(self, conn: Any, request: dict[str, Any]) -> None:
        ident = request.pop(REQUEST)
        answer: dict[str, Any]
        if self._on_request is None:
            answer = {"error": "no-handler"}
        else:
            try:
                answer = self._on_request(request)
            except Exception as exc:
                log.exception("child request failed")
                answer = {"error": type(exc).__name__}
        with suppress(OSError, ValueError), self._lock:
            conn.send({**answer, ANSWER: ident})

    def wake(self) -> None:
        """New work for the children (at most one wake per ``wake_every_s``)."""
        now = time.monotonic()
        if now - self._last_wake < self._wake_every_s:
            return
        self._last_wake = now
        with self._lock:
            for _, conn in self._children:
                with suppress(OSError, ValueError):
                    conn.send(WAKE)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self._children if p.pid is not None]

    def stop(self, timeout_s: float = 30.0) -> None:
        """Each child finishes what it must (a drain), then exits."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(SUPERVISE_EVERY_S + 1.0)
        with self._lock:
            for _, conn in self._children:
                with suppress(OSError, ValueError):
                    conn.send(STOP)
        deadline = time.monotonic() + timeout_s
        for process, _ in self._children:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("child process did not stop in time", extra={"child": process.name})
                process.terminate()
                process.join(5.0)
        for thread in self._threads:
            thread.join(1.0)
        for _, conn in self._children:
            conn.close()
