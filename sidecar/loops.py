"""Small background loops (relay, sandbox, sweeper): one thread each, woken early by
``wake()`` and otherwise polling at an interval. A failing round is logged and retried
next round; the loop itself never dies."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("sidecar.loops")


class Loop:
    def __init__(
        self,
        name: str,
        round_fn: Callable[[], int],
        interval_s: float,
        *,
        wake: threading.Event | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """``wake``, ``stop``: events someone else sets (a child process's link), for ``run``."""
        self.name = name
        self._round = round_fn
        self._interval = interval_s
        self._wake = wake or threading.Event()
        self._stop = stop or threading.Event()
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def run_round(self) -> int:
        try:
            return self._round()
        except Exception as exc:
            self.failures += 1
            log.warning("loop round failed", extra={"loop": self.name, "error_type": type(exc).__name__})
            return 0

    def run(self) -> None:
        """Rounds on the calling thread until stopped (``start`` runs them on a thread of their own)."""
        while not self._stop.is_set():
            did = self.run_round()
            if did:
                continue  # more may be waiting: go again without sleeping
            self._wake.wait(self._interval if not self.failures else max(self._interval, 1.0))
            self._wake.clear()
