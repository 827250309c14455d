"""One MLLP connection: bytes in, framing events to a handler, answers out in frame order.

An asyncio Protocol rather than streams: bytes are framed in the transport's own callback,
and an answer is written from the commit's callback the moment it is known. With a task
reading a StreamReader and another waiting on each answer, a message took five turns of
the event loop (each an epoll round and a scheduler pass); this way it takes two, which
for a sender waiting for each ACK was ~10% more messages a second (bench/mllp.py).

What the connection guarantees, whatever the handler does:
- answers leave in the order their frames arrived, each exactly once;
- at most ``max_in_flight`` frames await an answer, and nothing is read while the sender
  leaves our ACKs unread in the socket buffer (backpressure instead of memory);
- a sender that half-closes still gets the answers it is owed, then the connection closes;
- idle for ``idle_timeout_s`` with nothing owed: closed (waiting on our commit is not idle).
  Only traffic counts: a complete frame, bytes inside a frame, an answer written. Bytes
  between frames (a newline every few seconds) do not, so they cannot hold a slot;
- a frame started must end within ``frame_timeout_s`` (a start block that never ends, or
  one trickled in a byte at a time, cannot hold a slot either); a new start block inside
  it does not restart that deadline;
- ``drain()`` (the listener stopping) reads nothing more and closes once nothing is owed.

Answers given while the owner's ``AnswerCork`` is held (the callbacks of one group commit)
leave together: one send per connection for the burst instead of one per ACK. The send
was the largest single cost of the event loop with 8 senders pipelining (~19 µs of
~45 µs per message, profiled with bench/mllp.py), and the sender reads fewer segments.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from contextlib import suppress
from typing import Protocol

from connectors.mllp.framing import Frame, FrameEvent, FrameReader, ProblemCode, encode_frame
from core.logs import LogBudget

log = logging.getLogger("sidecar.connectors.mllp")

CLOSE_TIMEOUT_S = 5.0  # a peer that does not take our last answers is cut off after this


class Slot:
    """One frame's place in its connection's answer order."""

    __slots__ = ("ready", "reply")

    def __init__(self) -> None:
        self.ready = False
        self.reply: bytes | None = None


class Answers(Protocol):
    def fill(self, slot: Slot, reply: bytes | None) -> None:
        """The answer for ``slot`` (None: nothing to send); written once those before it are."""
        ...


class AnswerCork:
    """While held (``with cork:``, re-entrant), connections keep the answers they are given
    and write them on the outermost release, each connection's in one send. Loop thread
    only. A plain class rather than a generator context manager: it is entered for every
    commit, a lone sender's included."""

    def __init__(self) -> None:
        self._depth = 0
        self._held: list[MllpConnection] = []

    def __enter__(self) -> None:
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth:
            return  # held further up: that release writes
        held, self._held = self._held, []
        for connection in held:
            try:
                connection.flush()
            except Exception:
                # A bug must cost one connection, never the others' answers.
                log.exception("mllp answer failed", extra={"event": "mllp.failed", "peer": connection.peer})
                connection.abort()

    def hold(self, connection: MllpConnection) -> bool:
        """Register a connection with answers to write on release; False when not held."""
        if not self._depth:
            return False
        self._held.append(connection)
        return True


class Owner(Protocol):
    """The listener a connection belongs to."""

    # Lines written once per connection go through it: a flood of connections would
    # otherwise be a flood of lines.
    log_budget: LogBudget

    def admit(self, connection: MllpConnection) -> bool: ...

    def timed_out(self, connection: MllpConnection, kind: str) -> None:
        """Closed for silence ("idle") or a frame not ended in time ("frame")."""
        ...

    def handle(self, event: FrameEvent, peer: str, answers: Answers, slot: Slot) -> None:
        """Start on one framing event; its answer fills ``slot``, now or later."""
        ...

    def closed(self, connection: MllpConnection) -> None: ...


class MllpConnection(asyncio.Protocol):
    def __init__(
        self,
        owner: Owner,
        *,
        max_frame_bytes: int,
        max_in_flight: int,
        idle_timeout_s: float,
        frame_timeout_s: float,
        cork: AnswerCork | None = None,
    ) -> None:
        self._owner = owner
        self._cork = cork or AnswerCork()
        self._out: list[bytes] = []  # encoded answers held by the cork, in order
        self._max_in_flight = max_in_flight
        self._idle_timeout_s = idle_timeout_s
        self._frame_timeout_s = frame_timeout_s
        self._framer = FrameReader(max_frame_bytes)
        self._slots: collections.deque[Slot] = collections.deque()
        # Frames read beyond max_in_flight (one read can hold many): handled as slots free up.
        self._waiting: collections.deque[FrameEvent] = collections.deque()
        self._taking = False
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._last_traffic = 0.0
        self._frame_started: float | None = None  # when the frame being read began
        self._idle_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._ending = False  # half-closed by the sender, or draining: close once nothing is owed
        self._admitted = False
        self.host = ""  # the peer's address, for allow-lists
        self.peer = "unknown"  # "host:port", for logs
        self.closed: asyncio.Future[None] = self._loop.create_future()

    @property
    def busy(self) -> bool:
        """Frames read but not yet answered: closing now would leave a stored message
        without its ACK."""
        return bool(self._slots or self._waiting or self._out)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peername = transport.get_extra_info("peername")
        self.host = str(peername[0]) if isinstance(peername, tuple) and peername else ""
        self.peer = peer_name(peername)
        if not self._owner.admit(self):
            # At once, not after a graceful close: a refused peer keeps no descriptor.
            transport.abort()
            return
        self._admitted = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Hospital interfaces hold connections open for days, often through firewalls
            # that silently drop idle flows; keepalive lets the OS notice a dead peer.
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._owner.log_budget.info("mllp connection opened", event="mllp.opened", peer=self.peer)
        self._last_traffic = self._loop.time()
        self._idle_timer = self._loop.call_later(self._next_check(), self._check_idle)

    def data_received(self, data: bytes) -> None:
        framer = self._framer
        framed_before = framer.framed_bytes
        events = framer.feed(data)
        now = self._loop.time()
        if events and any(_complete(event) for event in events):
            self._last_traffic = now
            self._frame_started = None
        elif framer.framed_bytes != framed_before:
            self._last_traffic = now
        if framer.in_frame and self._frame_started is None:
            self._frame_started = now
        self._feed(events)

    def eof_received(self) -> bool:
        # Whatever was read is answered before the connection closes: keep the write side.
        self._feed(self._framer.close())
        self._ending = True
        self._close_if_done()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._idle_timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        if self._admitted:
            budget = self._owner.log_budget
            if exc is not None:
                budget.info(
                    "mllp connection lost", event="mllp.lost", peer=self.peer, error=type(exc).__name__
                )
            budget.info("mllp connection closed", event="mllp.closed", peer=self.peer)
            self._owner.closed(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._apply_backpressure()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._apply_backpressure()

    # -- answers ---------------------------------------------------------------------------

    def fill(self, slot: Slot, reply: bytes | None) -> None:
        slot.ready, slot.reply = True, reply
        held = bool(self._out)  # registered with the cork already
        while self._slots and self._slots[0].ready:
            done = self._slots.popleft()
            if done.reply is not None:
                self._out.append(encode_frame(done.reply))
        if self._out and not held and not self._cork.hold(self):
            self.flush()
            return
        self._take()
        self._close_if_done()

    def flush(self) -> None:
        """Write the answers held so far in one send."""
        out, self._out = self._out, []
        transport = self._transport
        if out and transport is not None and not transport.is_closing():
            # A sender that went away finds its messages stored; it resends for the ACKs.
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            self._last_traffic = self._loop.time()  # idle counts from our last answer
        self._take()
        self._close_if_done()

    # -- the listener's side ---------------------------------------------------------------

    def drain(self) -> None:
        """Read nothing more; close once every frame read is answered."""
        self._ending = True
        self._apply_backpressure()
        self._close_if_done()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- inside ----------------------------------------------------------------------------

    def _feed(self, events: list[FrameEvent]) -> None:
        self._waiting.extend(events)
        self._take()

    def _take(self) -> None:
        """Hand waiting frames to the owner while fewer than max_in_flight await answers.
        Not re-entered: an answer given at once (fill inside handle) lets this loop go on."""
        if self._taking:
            return
        self._taking = True
        try:
            while self._waiting and len(self._slots) < self._max_in_flight:
                slot = Slot()
                self._slots.append(slot)
                self._owner.handle(self._waiting.popleft(), self.peer, self, slot)
        except Exception:
            # A bug must cost one connection, never the listener.
            log.exception("mllp connection failed", extra={"event": "mllp.failed", "peer": self.peer})
            self._waiting.clear()
            self.abort()
            return
        finally:
            self._taking = False
        self._apply_backpressure()

    def _apply_backpressure(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        full = bool(self._waiting) or len(self._slots) >= self._max_in_flight
        pause = self._ending or self._writing_paused or full
        if pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
            if self._frame_started is not None:
                # The time we did not read is not the sender's delay.
                self._frame_started = self._loop.time()

    def _close_if_done(self) -> None:
        if self._ending and not self.busy:
            self._close()

    def _check_idle(self) -> None:
        if not self.busy:  # waiting on our commit is neither the sender's silence nor delay
            now = self._loop.time()
            if now - self._last_traffic >= self._idle_timeout_s:
                self._time_out("idle", "mllp idle timeout", "mllp.idle")
                return
            if self._frame_started is not None and now - self._frame_started >= self._frame_timeout_s:
                self._time_out("frame", "mllp frame not ended in time", "mllp.frame_timeout")
                return
        self._idle_timer = self._loop.call_later(self._next_check(), self._check_idle)

    def _time_out(self, kind: str, msg: str, event: str) -> None:
        self._owner.timed_out(self, kind)
        self._owner.log_budget.info(msg, event=event, peer=self.peer)
        self._close()

    def _next_check(self) -> float:
        """Seconds until the earliest deadline (idle or frame), at least 50 ms."""
        now = self._loop.time()
        due = self._last_traffic + self._idle_timeout_s
        if self._frame_started is not None:
            due = min(due, self._frame_started + self._frame_timeout_s)
        return max(due - now, 0.05)

    def _close(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.close()  # after the buffered answers are written
        self._abort_timer = self._loop.call_later(CLOSE_TIMEOUT_S, transport.abort)


def peer_name(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(peer) if peer else "unknown"


def _complete(event: FrameEvent) -> bool:
    """A whole frame arrived (answered, even when too large): traffic, not noise."""
    return isinstance(event, Frame) or event.code is ProblemCode.OVERSIZED
