"""The embedded default's runner: the same pipeline functions on one background thread.

One thread processes inbox entries strictly in arrival order, which keeps every
patient's messages in order. Transient failures (database busy or restarting) are
retried with back-off; an entry that still fails stays RECEIVED in the inbox and the
sweeper hands it back later, so nothing acknowledged is dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError

from worker.pipeline import PipelineContext, ProcessResult, process

log = logging.getLogger("sidecar.worker.inprocess")

_STOP = -1


class InProcessPipeline:
    def __init__(
        self,
        ctx: PipelineContext,
        *,
        on_result: Callable[[ProcessResult], None] | None = None,
        max_attempts: int = 5,
    ) -> None:
        self._ctx = ctx
        self._on_result = on_result
        self._max_attempts = max_attempts
        self._queue: queue.Queue[int] = queue.Queue()
        self._queued: set[int] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, inbox_id: int) -> None:
        with self._lock:
            if inbox_id in self._queued:
                return
            self._queued.add(inbox_id)
        self._queue.put(inbox_id)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once everything submitted so far has been through the pipeline."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._queued:
                    return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        self.wait_idle(timeout)
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            inbox_id = self._queue.get()
            if inbox_id == _STOP:
                return
            try:
                result = self._process_with_retries(inbox_id)
                if result is not None and self._on_result is not None:
                    try:
                        self._on_result(result)
                    except Exception:
                        log.exception("result callback failed", extra={"inbox_id": inbox_id})
            finally:
                with self._lock:
                    self._queued.discard(inbox_id)

    def _process_with_retries(self, inbox_id: int) -> ProcessResult | None:
        for attempt in range(1, self._max_attempts + 1):
            try:
                return process(self._ctx, inbox_id)
            except DBAPIError:
                log.warning("transient failure, retrying", extra={"inbox_id": inbox_id, "attempt": attempt})
                time.sleep(min(5.0, 0.1 * 2**attempt))
            except Exception:
                # Not expected (pure stages dead-letter their own failures): keep the
                # thread alive; the entry stays RECEIVED for the sweeper.
                log.exception("pipeline error", extra={"inbox_id": inbox_id})
                return None
        return None
