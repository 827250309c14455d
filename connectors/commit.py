"""Group commit: messages that arrive while a commit is running share the next one.

One writer thread owns the durable write. It takes everything queued (up to
``max_batch``), hands it to ``sink.commit_many`` as ONE transaction, and resolves each
message's asyncio future on its event loop. With one sender waiting for each ACK, a
batch is one message and latency is a single commit; with many senders (or a sender
that pipelines), batches grow by themselves and the fsync is shared — no timer, so a
quiet listener never waits. Frames submitted in one turn of the event loop reach the
thread as one hand-over at the next turn: handing them over one by one woke the thread
for a batch of one while the rest were still being framed.

A failing commit fails every future of its batch: each sender gets AE/CE and resends.
So do frames gathered when the committer stops, before their burst was handed over.

``inline=True`` commits a small burst on the event loop itself, at that next turn, when
the writer thread has nothing in hand: for a sink whose commit is one short local write
(the intake journal, connectors.journal): for one sender waiting for each ACK the two
thread hand-overs are a good part of its round trip. Larger bursts, and anything arriving
while the thread is busy, go to the thread as before, so under load the loop keeps reading
and answering while a commit runs; and since an inline commit waits for the thread to be
idle, commits keep the order in which frames arrived. The inbox's own commit (several
statements; on PostgreSQL a round trip to a server) always goes to the thread: a server
that stops answering would freeze the loop (no reads, no error answers, no idle timeouts).
The measurements behind these choices: docs/intake.md, "How the intake commits".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from connectors.base import InboundMessage, MessageSink, Receipt

log = logging.getLogger("sidecar.connectors.commit")

INLINE_MAX = 4  # frames of one loop turn committed inline (one waiting sender has one)

# Called on the submitting event loop with the receipt, or with the error that kept the
# message from being stored (exactly one of them is None).
Done = Callable[[Receipt | None, Exception | None], None]


@dataclass(frozen=True)
class _Pending:
    message: InboundMessage
    done: Done
    loop: asyncio.AbstractEventLoop


class GroupCommitter:
    def __init__(
        self,
        sink: MessageSink,
        *,
        max_batch: int = 500,
        inline: bool = False,
        settling: contextlib.AbstractContextManager[object] | None = None,
    ) -> None:
        """``settling``: entered (re-entrantly) on the loop around the callbacks of one burst (the
        MLLP listener holds the answers of a burst and writes each connection's in one send)."""
        self._sink = sink
        self._max_batch = max_batch
        self._inline = inline
        self._settling = settling or contextlib.nullcontext()
        # Bursts handed to the thread and not yet settled; read and written on the loop only
        # (incremented at hand-over, decremented when the result is back on the loop).
        self._outstanding = 0
        self._queue: queue.SimpleQueue[list[_Pending] | None] = queue.SimpleQueue()  # None: stop
        self._gathering: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._started = False
        # Orders hand-overs against the stop sentinel: a burst either reaches the queue
        # before it (and is committed) or finds the committer stopped (and fails at once).
        self._handover = threading.Lock()
        self._stopped = False
        self.batches = 0
        self.messages = 0
        self.commit_seconds = 0.0

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then end the thread."""
        with self._handover:
            self._stopped = True
            if self._started:
                self._queue.put(None)
        if self._started:
            self._thread.join(timeout)

    def submit(self, message: InboundMessage) -> asyncio.Future[Receipt]:
        """From the event loop: a future that resolves once the message is durable."""
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()

        def done(receipt: Receipt | None, error: Exception | None) -> None:
            if future.done():
                return
            if receipt is not None:
                future.set_result(receipt)
            else:
                future.set_exception(error or RuntimeError("commit failed"))

        self.submit_with(message, done)
        return future

    def submit_with(self, message: InboundMessage, done: Done) -> None:
        """From the event loop: ``done`` is called on this loop once the message is durable
        (or failed). A callback, not a future: a future's callbacks run one loop turn later,
        and each turn is an epoll round and a scheduler pass (the MLLP listener's answer is
        written from ``done`` directly).

        Frames submitted in one turn of the loop are gathered and leave together at its
        next turn (one queue hand-over per burst, not per frame)."""
        loop = asyncio.get_running_loop()
        gathering = self._gathering.get(loop)
        if gathering is None:
            gathering = self._gathering[loop] = []
            loop.call_soon(self._flush, loop)
        gathering.append(_Pending(message, done, loop))

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._gathering.pop(loop, [])
        if not batch:
            return
        if self._inline and not self._outstanding and len(batch) <= INLINE_MAX and not self._stopped:
            receipts, error = self._commit_batch(batch)
            self._settle(list(enumerate(batch)), receipts, error)
            return
        with self._handover:
            if not self._stopped:
                self._outstanding += 1
                self._queue.put([*batch[:-1], _Pending(batch[-1].message, self._last_done(batch[-1]), loop)])
                return
        # Gathered while the committer stopped: never committed, so never ACKed; each
        # sender gets an error answer and resends to the next listener.
        self._settle(list(enumerate(batch)), None, RuntimeError("group committer stopped"))

    def _last_done(self, pending: _Pending) -> Done:
        """The burst's last callback, wrapped: the burst is settled (on the loop) once it ran."""

        def done(receipt: Receipt | None, error: Exception | None) -> None:
            self._outstanding -= 1
            pending.done(receipt, error)

        return done

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                return
            batch = list(item)
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.extend(nxt)
            self._commit(batch)

    def _commit(self, batch: Sequence[_Pending]) -> None:
        receipts, error = self._commit_batch(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[int, _Pending]]] = {}
        for index, pending in enumerate(batch):
            by_loop.setdefault(pending.loop, []).append((index, pending))
        for loop, items in by_loop.items():
            # One hop per loop and batch, not per message: call_soon_threadsafe wakes the loop.
            try:
                loop.call_soon_threadsafe(self._settle, items, receipts, error)
            except RuntimeError:
                log.warning("event loop closed before commit result", extra={"event": "inbox.loop_closed"})

    def _settle(
        self, items: list[tuple[int, _Pending]], receipts: Sequence[Receipt] | None, error: Exception | None
    ) -> None:
        """On the loop: every callback of the burst, inside ``settling``."""
        with self._settling:
            for index, pending in items:
                try:
                    if receipts is not None:
                        pending.done(receipts[index], None)
                    else:
                        pending.done(None, error or RuntimeError("commit failed"))
                except Exception:
                    # One caller's bug must not keep the others of the batch from their answers.
                    log.exception("commit callback failed", extra={"event": "inbox.callback_failed"})

    def _commit_batch(self, batch: Sequence[_Pending]) -> tuple[Sequence[Receipt] | None, Exception | None]:
        started = time.perf_counter()
        try:
            receipts = self._sink.commit_many([p.message for p in batch])
        except Exception as exc:
            # Logged by type only: driver errors quote statement parameters (raw messages).
            log.error(
                "group commit failed",
                extra={"event": "inbox.commit_failed", "batch": len(batch), "error": type(exc).__name__},
            )
            return None, exc
        self.batches += 1
        self.messages += len(batch)
        self.commit_seconds += time.perf_counter() - started
        return receipts, None
