"""The MLLP listener: frames in, durable commit, then ACK out — strictly in that order.

Per connection, frames are answered one at a time in arrival order (MLLP is
request/response). A message is acknowledged AA only after ``sink.commit`` has returned,
i.e. after it is durable; any failure to store answers AE so the sender keeps it and
resends. Nothing but ACKs is ever written to the socket.

Logs carry peers, sizes, codes, control ids and sending applications — never message
content. Exceptions raised by the sink are logged by type only: database drivers put
statement parameters (the raw message) into their exception text.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime

from connectors.base import InboundMessage, MessageSink, Receipt, Rejected
from connectors.hl7.ack import AckCode, build_ack
from connectors.hl7.charset import decode_message
from connectors.hl7.header import HeaderError, MessageHeader, peek_header
from connectors.mllp.framing import Frame, FrameEvent, FrameProblem, FrameReader, ProblemCode, encode_frame
from core.errors import IngestError

log = logging.getLogger("sidecar.connectors.mllp")

SOURCE = "mllp"
NOT_STORED = "message not stored; resend"
_READ_CHUNK = 65_536
_CLOSE_TIMEOUT_S = 5.0

CommitListener = Callable[[Receipt, InboundMessage], None]


@dataclass(frozen=True)
class MllpConfig:
    host: str = "127.0.0.1"
    port: int = 2575
    max_frame_bytes: int = 1_048_576
    idle_timeout_s: float = 300.0
    max_connections: int = 64

    def __post_init__(self) -> None:
        if self.max_frame_bytes <= 0 or self.idle_timeout_s <= 0 or self.max_connections <= 0:
            raise ValueError("max_frame_bytes, idle_timeout_s and max_connections must be positive")


@dataclass(eq=False)
class _Connection:
    peer: str
    task: asyncio.Task[object] | None
    # True from the moment bytes are read until their frames are answered: stop() must
    # not cancel a connection then, or a committed message would go unacknowledged.
    busy: bool = False


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(peer) if peer else "unknown"


def _enable_keepalive(writer: asyncio.StreamWriter) -> None:
    # Hospital interfaces hold connections open for days, often through firewalls that
    # silently drop idle flows; keepalive lets the OS notice a dead peer.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT_S)
    except (OSError, TimeoutError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


class MllpServer:
    def __init__(
        self,
        config: MllpConfig,
        sink: MessageSink,
        *,
        on_committed: CommitListener | None = None,
    ) -> None:
        self._config = config
        self._sink = sink
        self._on_committed = on_committed
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False
        self._stopped = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        self._server = await asyncio.start_server(
            self._accept, self._config.host, self._config.port, reuse_address=True
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
            if not conn.busy and conn.task is not None:
                conn.task.cancel()  # it is only waiting for bytes: nothing to lose
        tasks = {conn.task for conn in self._connections if conn.task is not None}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_timeout_s)
            if pending:
                log.warning(
                    "mllp drain timed out",
                    extra={"event": "mllp.drain_timeout", "connections": len(pending)},
                )
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=_CLOSE_TIMEOUT_S)
        with suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), _CLOSE_TIMEOUT_S)
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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_name(writer)
        if self._stopping or len(self._connections) >= self._config.max_connections:
            log.warning(
                "mllp connection refused",
                extra={
                    "event": "mllp.refused",
                    "peer": peer,
                    "connections": len(self._connections),
                    "stopping": self._stopping,
                },
            )
            await _close(writer)
            return
        conn = _Connection(peer, asyncio.current_task())
        self._connections.add(conn)
        _enable_keepalive(writer)
        log.info("mllp connection opened", extra={"event": "mllp.opened", "peer": peer})
        try:
            await self._serve(conn, reader, writer)
        except (ConnectionError, OSError) as exc:
            log.info(
                "mllp connection lost",
                extra={"event": "mllp.lost", "peer": peer, "error": type(exc).__name__},
            )
        except Exception:
            # A bug must cost one connection, never the listener.
            log.exception("mllp connection failed", extra={"event": "mllp.failed", "peer": peer})
        finally:
            self._connections.discard(conn)
            await _close(writer)
            log.info("mllp connection closed", extra={"event": "mllp.closed", "peer": peer})

    async def _serve(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        framer = FrameReader(self._config.max_frame_bytes)
        while True:
            try:
                async with asyncio.timeout(self._config.idle_timeout_s):
                    data = await reader.read(_READ_CHUNK)
            except TimeoutError:
                log.info("mllp idle timeout", extra={"event": "mllp.idle", "peer": conn.peer})
                return
            conn.busy = True
            for event in framer.feed(data) if data else framer.close():
                reply = await self._answer(event, conn.peer)
                if reply is not None:
                    writer.write(encode_frame(reply))
                    await writer.drain()
            conn.busy = False
            if not data or self._stopping:
                return

    async def _answer(self, event: FrameEvent, peer: str) -> bytes | None:
        """The ACK for one framing event, or None when nothing must be sent."""
        if isinstance(event, Frame):
            try:
                return await self._answer_frame(event.payload, peer)
            except Exception:
                log.exception("mllp frame handling failed", extra={"event": "mllp.bug", "peer": peer})
                return build_ack(None, AckCode.AE, error=NOT_STORED)
        return await self._answer_problem(event, peer)

    # -- frames ----------------------------------------------------------------------

    async def _answer_frame(self, payload: bytes, peer: str) -> bytes:
        received_at = datetime.now(UTC)
        try:
            header = peek_header(payload)
        except IngestError as exc:
            reason = str(exc)
            error_code = exc.hl7_error_code if isinstance(exc, HeaderError) else "100"
            log.warning(
                "mllp message rejected",
                extra={"event": "mllp.rejected", "peer": peer, "nbytes": len(payload), "code": exc.code},
            )
            await self._quarantine(Rejected(payload, SOURCE, peer, reason, exc.code, received_at))
            return build_ack(None, AckCode.AR, error=reason, error_code=error_code)

        context = {
            "peer": peer,
            "nbytes": len(payload),
            "control_id": header.control_id,
            "sending_application": header.sending_application,
        }
        try:
            receipt, message = await asyncio.to_thread(self._store, payload, header, peer, received_at)
        except Exception as exc:
            log.error(
                "mllp commit failed",
                extra={"event": "mllp.commit_failed", "error": type(exc).__name__, **context},
            )
            return build_ack(header, AckCode.AE, error=NOT_STORED, error_code="207")

        log.info(
            "mllp message committed",
            extra={
                "event": "mllp.committed",
                "inbox_id": receipt.inbox_id,
                "duplicate": receipt.duplicate,
                "charset": message.charset,
                "repaired": message.repaired,
                **context,
            },
        )
        self._notify(receipt, message)
        # A resend of a stored message is acknowledged again: the sender lost our first ACK.
        return build_ack(header, AckCode.AA)

    def _store(
        self, payload: bytes, header: MessageHeader, peer: str, received_at: datetime
    ) -> tuple[Receipt, InboundMessage]:
        # Runs in a worker thread: decoding a large message must not stall other connections.
        decoded = decode_message(payload, header.charset)
        message = InboundMessage(
            raw=payload,
            header=header,
            charset=decoded.charset,
            repaired=decoded.repaired,
            source=SOURCE,
            peer=peer,
            received_at=received_at,
        )
        return self._sink.commit(message), message

    def _notify(self, receipt: Receipt, message: InboundMessage) -> None:
        if self._on_committed is None:
            return
        try:
            self._on_committed(receipt, message)
        except Exception as exc:
            log.error(
                "mllp on_committed failed",
                extra={
                    "event": "mllp.notify_failed",
                    "inbox_id": receipt.inbox_id,
                    "error": type(exc).__name__,
                },
            )

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
