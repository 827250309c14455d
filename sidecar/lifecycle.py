"""One start/stop protocol for everything `sidecar serve` runs: listeners, processes, loops.

``SidecarApp`` lists its parts once, in start order; ``Parts`` starts them in that order and
stops them in the reverse one. The order is the design: what must outlive another when
stopping (the relay, to publish what the pipeline's drain stored; the audit loops, to
checkpoint and forward the last entries) starts before it, and the listeners start last and
stop first. A part that fails to start stops the ones already started, then the error goes on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Part", "Parts", "loop_part"]

log = logging.getLogger("sidecar.lifecycle")


@dataclass(frozen=True)
class Part:
    """``start()``; ``stop(timeout_s)``: drain for up to that long, then stop. Either may be
    a coroutine function (the asyncio listeners); blocking ones run on a thread."""

    name: str
    start: Callable[[], Any]
    stop: Callable[[float], Any]


def loop_part(name: str, loop: Any, *, final_round: bool = True) -> Part:
    """A ``sidecar.loops.Loop``: stopping ends its thread, then (``final_round``) runs one
    more round for what the parts stopped before it left behind."""

    def stop(_timeout_s: float) -> None:
        loop.stop()
        if final_round:
            loop.run_round()

    return Part(name, loop.start, stop)


async def _call(fn: Callable[..., Any], *args: Any) -> None:
    if inspect.iscoroutinefunction(fn):
        await fn(*args)
    else:
        await asyncio.to_thread(fn, *args)


class Parts:
    def __init__(self, parts: list[Part]) -> None:
        self._parts = parts
        self._started: list[Part] = []

    @property
    def names(self) -> list[str]:
        return [p.name for p in self._parts]

    async def start(self) -> None:
        for part in self._parts:
            try:
                await _call(part.start)
            except BaseException:
                log.error("start failed; stopping what started", extra={"part": part.name})
                await self.stop(10.0)
                raise
            self._started.append(part)

    async def stop(self, timeout_s: float) -> None:
        while self._started:
            part = self._started.pop()
            try:
                await _call(part.stop, timeout_s)
            except Exception as exc:  # the others still stop
                log.error("stop failed", extra={"part": part.name, "error_type": type(exc).__name__})
