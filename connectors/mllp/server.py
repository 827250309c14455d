"""The MLLP listener: frames in, durable commit, then ACK out — strictly in that order.

Per connection, ACKs go out in frame order. Frames are not handled one at a time,
though: each complete frame is handed to the group committer at once, so a sender that
pipelines (or many senders together) share commits, while a sender that waits for each
ACK sees the latency of a single commit. A message is acknowledged positively (AA, or CA
in enhanced mode) only after its commit returned, i.e. after it is durable; a failure to
store answers AE/CE so the sender keeps it and resends. Nothing but ACKs is ever written
to the socket.

Logs carry peers, sizes, codes, control ids and sending applications — never message
content. Exceptions raised by the sink are logged by type only: database drivers put
statement parameters (the raw message) into their exception text.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from connectors.base import (
    CommitListener,
    InboundMessage,
    MessageSink,
    Network,
    Receipt,
    Rejected,
    notify_committed,
    parse_networks,
    peer_in,
)
from connectors.commit import GroupCommitter
from connectors.hl7.ack import AckCode, build_ack
from connectors.hl7.charset import decode_message
from connectors.hl7.header import HeaderError, MessageHeader, peek_header
from connectors.metrics import IntakeMetrics
from connectors.mllp.connection import CLOSE_TIMEOUT_S, AnswerCork, Answers, MllpConnection, Slot
from connectors.mllp.framing import Frame, FrameEvent, FrameProblem, ProblemCode
from core.errors import IngestError

log = logging.getLogger("sidecar.connectors.mllp")

SOURCE = "mllp"
NOT_STORED = "message not stored; resend"


class AckMode(StrEnum):
    AUTO = "auto"  # follow the message: MSH-15/16 valued means enhanced mode (CA/CE/CR)
    ORIGINAL = "original"  # always AA/AE/AR, for senders that fill MSH-15/16 but expect AA


@dataclass(frozen=True)
class MllpConfig:
    host: str = "127.0.0.1"
    port: int = 2575
    max_frame_bytes: int = 1_048_576
    idle_timeout_s: float = 300.0
    max_connections: int = 64
    max_in_flight: int = 256  # frames of one connection committed but not yet answered
    ack_mode: AckMode = AckMode.AUTO
    # Empty: everyone. Networks ("10.1.0.0/16", "127.0.0.1") a peer address must be in.
    allowed_peers: tuple[str, ...] = ()
    # Empty: everyone. Sending applications (MSH-3, first component), case-insensitive.
    allowed_senders: tuple[str, ...] = ()
    ssl_context: ssl.SSLContext | None = None
    # MSH-18 empty: the charset to assume, per header (a per-sender policy); None = UTF-8.
    default_charset: Callable[[MessageHeader], str] | None = None
    _networks: tuple[Network, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.max_frame_bytes <= 0 or self.idle_timeout_s <= 0 or self.max_connections <= 0:
            raise ValueError("max_frame_bytes, idle_timeout_s and max_connections must be positive")
        if self.max_in_flight <= 0:
            raise ValueError("max_in_flight must be positive")
        object.__setattr__(self, "_networks", parse_networks(self.allowed_peers))

    def peer_allowed(self, host: str) -> bool:
        return peer_in(self._networks, host)

    def sender_allowed(self, header: MessageHeader) -> bool:
        if not self.allowed_senders:
            return True
        app = header.sending_application.split(header.component_separator, 1)[0].strip().casefold()
        return app in {s.casefold() for s in self.allowed_senders}


@dataclass(frozen=True)
class _AckPlan:
    """Which ACK codes one message gets, from MSH-15 (accept acknowledgment type)."""

    ok: AckCode | None  # None: the sender asked for no ACK on success
    error: AckCode | None
    reject: AckCode | None


_ORIGINAL = _AckPlan(AckCode.AA, AckCode.AE, AckCode.AR)


def ack_plan(header: MessageHeader, mode: AckMode) -> _AckPlan:
    """Original mode when MSH-15 and MSH-16 are both empty (or forced); else enhanced mode,
    where MSH-15 decides whether a commit ACK is sent at all: AL always, NE never, ER only
    on error/reject, SU only on success (empty in enhanced mode: always). Application
    ACKs (MSH-16) are never sent: the sidecar has no return path to the sender's system."""
    accept, application = header.accept_ack_type.upper(), header.application_ack_type.upper()
    if mode is AckMode.ORIGINAL or not (accept or application):
        return _ORIGINAL
    on_success = accept in ("", "AL", "SU")
    on_error = accept in ("", "AL", "ER")
    return _AckPlan(
        AckCode.CA if on_success else None,
        AckCode.CE if on_error else None,
        AckCode.CR if on_error else None,
    )


def _context(header: MessageHeader, peer: str, payload: bytes) -> dict[str, object]:
    return {
        "peer": peer,
        "nbytes": len(payload),
        "control_id": header.control_id,
        "sending_application": header.sending_application,
    }


def _fill_later(
    answers: Answers, slot: Slot, reply: Coroutine[Any, Any, bytes | None], tasks: set[asyncio.Task[Any]]
) -> None:
    """For answers that must await something (storing a rejected frame in quarantine)."""
    task = asyncio.ensure_future(reply)
    tasks.add(task)  # the loop keeps only a weak reference to a task

    def done(finished: asyncio.Task[bytes | None]) -> None:
        tasks.discard(finished)
        try:
            result = finished.result()
        except Exception:
            log.exception("mllp frame handling failed", extra={"event": "mllp.bug"})
            result = build_ack(None, AckCode.AE, error=NOT_STORED)
        answers.fill(slot, result)

    task.add_done_callback(done)


class MllpServer:
    def __init__(
        self,
        config: MllpConfig,
        sink: MessageSink,
        *,
        on_committed: CommitListener | None = None,
        metrics: IntakeMetrics | None = None,
        commit_inline: bool = False,
    ) -> None:
        """``commit_inline``: the sink's commit is one short local write (the intake
        journal); a lone sender's is committed on the event loop (connectors.commit)."""
        self._config = config
        self._sink = sink
        self._cork = AnswerCork()
        self._committer = GroupCommitter(sink, inline=commit_inline, settling=self._cork)
        self._on_committed = on_committed
        self.metrics = metrics or IntakeMetrics()
        self._server: asyncio.Server | None = None
        self._connections: set[MllpConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._stopped = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        self._committer.start()
        config = self._config
        self._server = await asyncio.get_running_loop().create_server(
            lambda: MllpConnection(
                self,
                max_frame_bytes=config.max_frame_bytes,
                max_in_flight=config.max_in_flight,
                idle_timeout_s=config.idle_timeout_s,
                cork=self._cork,
            ),
            config.host,
            config.port,
            reuse_address=True,
            ssl=config.ssl_context,
        )
        log.info(
            "mllp listening",
            extra={"event": "mllp.listening", "host": self._config.host, "port": self.port},
        )

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop accepting, let frames being answered finish (commit + ACK), then close."""
        if self._server is None:
            return
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._server.close()
        for conn in list(self._connections):
            conn.drain()  # an idle one closes now; a busy one once its answers are out
        closing = {conn.closed for conn in self._connections}
        if closing:
            _, pending = await asyncio.wait(closing, timeout=drain_timeout_s)
            if pending:
                log.warning(
                    "mllp drain timed out",
                    extra={"event": "mllp.drain_timeout", "connections": len(pending)},
                )
                for conn in list(self._connections):
                    conn.abort()
                await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S)
        with suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), CLOSE_TIMEOUT_S)
        await asyncio.to_thread(self._committer.stop)
        log.info("mllp stopped", extra={"event": "mllp.stopped"})
        self._stopped.set()

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await self.stop()
            raise

    # -- connections -----------------------------------------------------------------

    def admit(self, connection: MllpConnection) -> bool:
        if not self._config.peer_allowed(connection.host):
            log.warning("mllp peer not allowed", extra={"event": "mllp.peer_denied", "peer": connection.peer})
            return False
        if self._stopping or len(self._connections) >= self._config.max_connections:
            log.warning(
                "mllp connection refused",
                extra={
                    "event": "mllp.refused",
                    "peer": connection.peer,
                    "connections": len(self._connections),
                    "stopping": self._stopping,
                },
            )
            return False
        self._connections.add(connection)
        self.metrics.connections.inc()
        return True

    def closed(self, connection: MllpConnection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self.metrics.connections.dec()

    def handle(self, event: FrameEvent, peer: str, answers: Answers, slot: Slot) -> None:
        """Start handling one framing event now; its ACK (or None) fills ``slot``."""
        if isinstance(event, Frame):
            try:
                self._start_frame(event.payload, peer, time.perf_counter(), answers, slot)
            except Exception:
                log.exception("mllp frame handling failed", extra={"event": "mllp.bug", "peer": peer})
                answers.fill(slot, build_ack(None, AckCode.AE, error=NOT_STORED))
            return
        _fill_later(answers, slot, self._answer_problem(event, peer), self._tasks)

    # -- frames ----------------------------------------------------------------------

    def _start_frame(self, payload: bytes, peer: str, started: float, answers: Answers, slot: Slot) -> None:
        """Everything up to the commit, synchronously; the ACK follows from the commit's
        callback. No task per frame: with one, scheduling and stepping it cost about as
        much as the rest of the frame's handling (profiled with bench/mllp.py)."""
        received_at = datetime.now(UTC)
        try:
            header = peek_header(payload)
        except IngestError as exc:
            _fill_later(answers, slot, self._reject(payload, peer, exc, received_at, started), self._tasks)
            return

        sender = header.sender
        plan = ack_plan(header, self._config.ack_mode)
        self.metrics.of(sender).received.inc()
        if not self._config.sender_allowed(header):
            # Not stored: data from an interface nobody configured is not ours to keep.
            log.warning(
                "mllp sender not allowed",
                extra={"event": "mllp.sender_denied", **_context(header, peer, payload)},
            )
            answers.fill(
                slot, self._nack(header, plan.reject, "sending application not allowed", "207", started)
            )
            return

        default = self._config.default_charset(header) if self._config.default_charset else "UTF-8"
        decoded = decode_message(payload, header.charset, default=default)
        message = InboundMessage(
            raw=payload,
            header=header,
            charset=decoded.charset,
            repaired=decoded.repaired,
            source=SOURCE,
            peer=peer,
            received_at=received_at,
        )
        self._committer.submit_with(
            message, functools.partial(self._committed, answers, slot, message, plan, started)
        )

    def _committed(
        self,
        answers: Answers,
        slot: Slot,
        message: InboundMessage,
        plan: _AckPlan,
        started: float,
        receipt: Receipt | None,
        error: Exception | None,
    ) -> None:
        try:
            reply = self._after_commit(message, plan, started, receipt, error)
        except Exception:
            log.exception("mllp frame handling failed", extra={"event": "mllp.bug", "peer": message.peer})
            reply = build_ack(None, AckCode.AE, error=NOT_STORED)
        answers.fill(slot, reply)

    def _after_commit(
        self,
        message: InboundMessage,
        plan: _AckPlan,
        started: float,
        receipt: Receipt | None,
        error: Exception | None,
    ) -> bytes | None:
        header = message.header
        if receipt is None:
            log.error(
                "mllp commit failed",
                extra={
                    "event": "mllp.commit_failed",
                    "error": type(error).__name__,
                    **_context(header, message.peer, message.raw),
                },
            )
            return self._nack(header, plan.error, NOT_STORED, "207", started)
        sender = header.sender
        if receipt.duplicate:
            self.metrics.of(sender).duplicates.inc()
        if message.repaired:
            self.metrics.of(sender).repaired.inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "mllp message committed",
                extra={
                    "event": "mllp.committed",
                    "inbox_id": receipt.inbox_id,
                    "duplicate": receipt.duplicate,
                    "charset": message.charset,
                    "repaired": message.repaired,
                    **_context(header, message.peer, message.raw),
                },
            )
        if receipt.inbox_id is not None:  # journaled: the journal tells once it is in the inbox
            self._notify(receipt, message)
        if plan.ok is None:
            return None
        self.metrics.of(sender).acked.inc()
        self.metrics.ack_latency.observe(time.perf_counter() - started)
        # A resend of a stored message is acknowledged again: the sender lost our first ACK.
        return build_ack(header, plan.ok)

    async def _reject(
        self, payload: bytes, peer: str, exc: IngestError, received_at: datetime, started: float
    ) -> bytes | None:
        reason = str(exc)
        error_code = exc.hl7_error_code if isinstance(exc, HeaderError) else "100"
        log.warning(
            "mllp message rejected",
            extra={"event": "mllp.rejected", "peer": peer, "nbytes": len(payload), "code": exc.code},
        )
        self.metrics.received.labels("unknown").inc()
        self.metrics.nacked.labels("unknown", "AR").inc()
        await self._quarantine(Rejected(payload, SOURCE, peer, reason, exc.code, received_at))
        self.metrics.ack_latency.observe(time.perf_counter() - started)
        return build_ack(None, AckCode.AR, error=reason, error_code=error_code)

    def _nack(
        self, header: MessageHeader, code: AckCode | None, error: str, error_code: str, started: float
    ) -> bytes | None:
        if code is None:
            return None
        self.metrics.nacked.labels(header.sender, str(code)).inc()
        self.metrics.ack_latency.observe(time.perf_counter() - started)
        return build_ack(header, code, error=error, error_code=error_code)

    def _notify(self, receipt: Receipt, message: InboundMessage) -> None:
        notify_committed(self._on_committed, receipt, message, log, "mllp.notify_failed")

    async def _quarantine(self, item: Rejected) -> None:
        try:
            quarantine_id = await asyncio.to_thread(self._sink.quarantine, item)
        except Exception as exc:
            # The sender still gets its AR; losing the evidence is logged loudly.
            log.error(
                "mllp quarantine failed",
                extra={
                    "event": "mllp.quarantine_failed",
                    "peer": item.peer,
                    "code": item.code,
                    "error": type(exc).__name__,
                },
            )
            return
        log.info(
            "mllp quarantined",
            extra={
                "event": "mllp.quarantined",
                "peer": item.peer,
                "code": item.code,
                "quarantine_id": quarantine_id,
                "nbytes": len(item.raw),
            },
        )

    # -- framing problems ------------------------------------------------------------

    async def _answer_problem(self, problem: FrameProblem, peer: str) -> bytes | None:
        log.warning(
            "mllp framing problem",
            extra={
                "event": "mllp.framing",
                "peer": peer,
                "problem": str(problem.code),
                "nbytes": problem.nbytes,
            },
        )
        received_at = datetime.now(UTC)
        if problem.code is ProblemCode.OVERSIZED:
            # A complete frame the sender awaits an answer for: reject it, echoing its
            # control id when the kept head still holds a readable MSH.
            header: MessageHeader | None
            try:
                header = peek_header(problem.content)
            except IngestError:
                header = None
            reason = f"frame exceeds {self._config.max_frame_bytes} bytes"
            await self._quarantine(
                Rejected(problem.content, SOURCE, peer, reason, str(problem.code), received_at)
            )
            return build_ack(header, AckCode.AR, error=reason)
        if problem.code is ProblemCode.NESTED_START and problem.content.strip():
            # The sender abandoned this frame, so it awaits no answer: an ACK here would be
            # read as the answer to its next message. Keep the bytes as evidence only.
            await self._quarantine(
                Rejected(problem.content, SOURCE, peer, problem.detail, str(problem.code), received_at)
            )
        return None
