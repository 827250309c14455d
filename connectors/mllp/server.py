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
import collections
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
from connectors.metrics import OTHER, UNKNOWN, IntakeMetrics
from connectors.mllp.connection import CLOSE_TIMEOUT_S, AnswerCork, Answers, MllpConnection, Slot
from connectors.mllp.framing import Frame, FrameEvent, FrameProblem, ProblemCode
from core.errors import IngestError
from core.logs import LogBudget

log = logging.getLogger("sidecar.connectors.mllp")

SOURCE = "mllp"
_REPORT_EVERY_S = 10.0  # how often the log budget tells what it left out
NOT_STORED = "message not stored; resend"


class AckMode(StrEnum):
    AUTO = "auto"  # follow the message: MSH-15/16 valued means enhanced mode (CA/CE/CR)
    ORIGINAL = "original"  # always AA/AE/AR, for senders that fill MSH-15/16 but expect AA


@dataclass(frozen=True)
class MllpConfig:
    host: str = "127.0.0.1"
    port: int = 2575
    max_frame_bytes: int = 1_048_576
    # Silence (stray bytes between frames are silence) after which a connection is closed.
    idle_timeout_s: float = 300.0
    frame_timeout_s: float = 60.0  # a frame started must end within this
    max_connections: int = 128
    # One address may hold this many: a peer that opens more is refused, not the others.
    max_connections_per_peer: int = 32
    max_in_flight: int = 256  # frames of one connection committed but not yet answered
    ack_mode: AckMode = AckMode.AUTO
    # Empty: everyone. Networks ("10.1.0.0/16", "127.0.0.1") a peer address must be in.
    allowed_peers: tuple[str, ...] = ()
    # Empty: everyone. Sending applications (MSH-3, first component), case-insensitive.
    allowed_senders: tuple[str, ...] = ()
    ssl_context: ssl.SSLContext | None = None
    # MSH-18 empty: the charset to assume, per header (a per-sender policy); None = UTF-8.
    default_charset: Callable[[MessageHeader], str] | None = None
    # Lines per connection or refusal (opened, closed, refused...): a burst, then a rate.
    log_rate_per_s: float = 2.0
    log_burst: int = 20
    _networks: tuple[Network, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        positive = {
            "max_frame_bytes": self.max_frame_bytes,
            "idle_timeout_s": self.idle_timeout_s,
            "frame_timeout_s": self.frame_timeout_s,
            "max_connections": self.max_connections,
            "max_connections_per_peer": self.max_connections_per_peer,
            "max_in_flight": self.max_in_flight,
            "log_rate_per_s": self.log_rate_per_s,
            "log_burst": self.log_burst,
        }
        if bad := [name for name, value in positive.items() if value <= 0]:
            raise ValueError(f"{', '.join(bad)} must be positive")
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
        self._per_peer: collections.Counter[str] = collections.Counter()
        self.log_budget = LogBudget(log, rate_per_s=config.log_rate_per_s, burst=config.log_burst)
        self._report_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._stopped = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        self._committer.start()
        config = self._config
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: MllpConnection(
                self,
                max_frame_bytes=config.max_frame_bytes,
                max_in_flight=config.max_in_flight,
                idle_timeout_s=config.idle_timeout_s,
                frame_timeout_s=config.frame_timeout_s,
                cork=self._cork,
            ),
            config.host,
            config.port,
            reuse_address=True,
            ssl=config.ssl_context,
            # A TLS handshake comes before admission (the peer is known only after it):
            # bound it like a frame, so unfinished handshakes cannot pile up.
            ssl_handshake_timeout=min(config.frame_timeout_s, 60.0) if config.ssl_context else None,
        )
        self._report_timer = loop.call_later(_REPORT_EVERY_S, self._report_suppressed)
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
        if self._report_timer is not None:
            self._report_timer.cancel()
        self.log_budget.report()
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
        host = connection.host
        if not self._config.peer_allowed(host):
            return self._refuse(connection, "peer_not_allowed", "mllp peer not allowed", "mllp.peer_denied")
        if self._stopping:
            return self._refuse(connection, "stopping", "mllp connection refused", "mllp.refused")
        # The peer's own cap first: a peer over it is refused for itself, and the total
        # stays for the others.
        if self._per_peer[host] >= self._config.max_connections_per_peer:
            return self._refuse(connection, "peer_limit", "mllp connection refused", "mllp.refused")
        if len(self._connections) >= self._config.max_connections:
            return self._refuse(connection, "total_limit", "mllp connection refused", "mllp.refused")
        self._connections.add(connection)
        self._per_peer[host] += 1
        self.metrics.connections.inc()
        return True

    def _refuse(self, connection: MllpConnection, reason: str, msg: str, event: str) -> bool:
        self.metrics.refused.labels(reason).inc()
        self.log_budget.warning(
            msg, event=event, peer=connection.peer, reason=reason, connections=len(self._connections)
        )
        return False

    def closed(self, connection: MllpConnection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self._per_peer[connection.host] -= 1
            if self._per_peer[connection.host] <= 0:
                del self._per_peer[connection.host]  # the table holds current peers only
            self.metrics.connections.dec()

    def timed_out(self, connection: MllpConnection, kind: str) -> None:
        self.metrics.timeouts.labels(kind).inc()

    def _report_suppressed(self) -> None:
        """Tell what the log budget left out, also once a flood has stopped."""
        self.log_budget.report(force=False)
        if not self._stopping:
            self._report_timer = asyncio.get_running_loop().call_later(
                _REPORT_EVERY_S, self._report_suppressed
            )

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

        plan = ack_plan(header, self._config.ack_mode)
        if not self._config.sender_allowed(header):
            # Not stored: data from an interface nobody configured is not ours to keep. Nor
            # is a label of its own: one per invented sender would grow /metrics unbounded.
            self.metrics.other.received.inc()
            self.log_budget.warning(
                "mllp sender not allowed", event="mllp.sender_denied", **_context(header, peer, payload)
            )
            answers.fill(
                slot,
                self._nack(header, OTHER, plan.reject, "sending application not allowed", "207", started),
            )
            return
        self.metrics.of(header.sender).received.inc()

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
            label = self.metrics.sender_label(header.sender)
            return self._nack(header, label, plan.error, NOT_STORED, "207", started)
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
        self.log_budget.warning(
            "mllp message rejected", event="mllp.rejected", peer=peer, nbytes=len(payload), code=exc.code
        )
        self.metrics.received.labels(UNKNOWN).inc()
        self.metrics.nacked.labels(UNKNOWN, "AR").inc()
        await self._quarantine(Rejected(payload, SOURCE, peer, reason, exc.code, received_at))
        self.metrics.ack_latency.observe(time.perf_counter() - started)
        return build_ack(None, AckCode.AR, error=reason, error_code=error_code)

    def _nack(
        self,
        header: MessageHeader,
        label: str,
        code: AckCode | None,
        error: str,
        error_code: str,
        started: float,
    ) -> bytes | None:
        """``label``: the sender's metrics label (``other`` for one turned away)."""
        if code is None:
            return None
        self.metrics.nacked.labels(label, str(code)).inc()
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
        self.log_budget.warning(
            "mllp framing problem",
            event="mllp.framing",
            peer=peer,
            problem=str(problem.code),
            nbytes=problem.nbytes,
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
