"""The DICOM Storage SCP: C-STORE in, durable commit, then the response — in that order.

A pynetdicom acceptor (C-ECHO and C-STORE for every storage SOP class, any transfer
syntax). Each received instance is kept as a DICOM Part-10 file: the file meta pynetdicom
derives from the request and presentation context, followed by the data set exactly as
it came over the wire (never decoded and re-encoded). That file goes to the inbox
through the same group committer as MLLP frames (source "dicom", sender = calling AE
title, control id = SOP Instance UID, message type "DICOM^<Modality>", charset "dicom"),
and only once it is durable does the SCU get Success (0x0000). A failed commit answers
0xA700 (out of resources: the SCU keeps the image and retries), never Success. A resend
of a stored instance is answered Success again and counted as a resend on the inbox row.

Nothing is stored that is not whole (``dicom_check``): pynetdicom spools each received
data set to a temporary file (its chunked mode: never the whole object in memory while it
arrives), which is checked before it is read. An object or element over its size cap is
answered 0xA701 (refused, out of resources) and quarantined with its first 64 KiB; a data
set that does not parse to its end, or cannot be decoded, 0xC000; pixel data shorter than
the image attributes require, 0xA900. Each is quarantined with the reason, never processed.

Under abuse (issue 17): connections are counted from accept, per peer address and in
total, so one peer's idle sockets cannot take the slots another peer's associations need;
a connection over a cap is closed at once, counted in ``sidecar_dicom_connections_refused``
and logged within a budget (a few lines a second, however many refusals). A connection
that sends no association request is closed by the ARTIM timer (``acse_timeout_s``), an
idle association by ``network_timeout_s``. Each admitted connection is served by one
worker of a pool as large as the total cap.

Read-only toward the PACS: the only bytes sent back are association and DIMSE responses.
pynetdicom's own loggers are held at WARNING: at INFO they print UIDs and AE titles of
every request, and we log what we need ourselves (peers, AE titles, sizes, codes; never
data set content or UIDs).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import socketserver
import threading
import time
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pydicom
import pynetdicom
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

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
from connectors.dicom_check import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    HEAD_BYTES,
    TOO_LARGE,
    Limits,
    Problem,
    check_object,
)
from connectors.hl7.header import MessageHeader
from core.logs import LogBudget

log = logging.getLogger("sidecar.connectors.dicom")
# Lines an outsider can multiply (refused connections, quarantined objects): a few a
# second at most, the rest counted in one "log.suppressed" line.
budget = LogBudget(log, rate_per_s=1.0, burst=3)

_UID = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")

SOURCE = "dicom"
CHARSET = "dicom"  # inbox.charset of a DICOM entry: its raw bytes are a Part-10 file
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # storage failed on our side: the SCU should retry later


@dataclass(frozen=True)
class DicomConfig:
    ae_title: str = "SIDECAR"
    host: str = "127.0.0.1"
    port: int = 11112
    # Empty: any calling AE title. Otherwise the association is rejected (A-ASSOCIATE-RJ).
    allowed_calling_aets: tuple[str, ...] = ()
    # Empty: everyone. Networks a peer address must be in; others are disconnected at once.
    allowed_peers: tuple[str, ...] = ()
    max_pdu: int = 65_536  # 0: unlimited
    # Connections, counted from accept (negotiated or not): in total, and per peer address.
    max_associations: int = 32
    max_connections_per_peer: int = 8
    acse_timeout_s: float = 10.0  # ARTIM: a connection with no association request is closed
    network_timeout_s: float = 60.0  # an association with no PDU for this long is aborted
    dimse_timeout_s: float = 30.0  # waiting for the next DIMSE message of an association
    max_object_bytes: int = 32 * 1024 * 1024
    max_element_bytes: int = 4 * 1024 * 1024  # any element but pixel data
    commit_timeout_s: float = 60.0
    _networks: tuple[Network, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not 0 < len(self.ae_title.strip()) <= 16:
            raise ValueError("ae_title must be 1 to 16 characters")
        if any(not 0 < len(t.strip()) <= 16 for t in self.allowed_calling_aets):
            raise ValueError("allowed calling AE titles must be 1 to 16 characters")
        if self.max_pdu < 0 or self.max_associations <= 0 or self.commit_timeout_s <= 0:
            raise ValueError("max_pdu >= 0, max_associations and commit_timeout_s > 0")
        if not 0 < self.max_connections_per_peer <= self.max_associations:
            raise ValueError("max_connections_per_peer must be between 1 and max_associations")
        if min(self.acse_timeout_s, self.network_timeout_s, self.dimse_timeout_s) <= 0:
            raise ValueError("acse, network and dimse timeouts must be > 0")
        if self.max_object_bytes <= 0 or self.max_element_bytes <= 0:
            raise ValueError("max_object_bytes and max_element_bytes must be > 0")
        object.__setattr__(self, "_networks", parse_networks(self.allowed_peers))

    def peer_allowed(self, host: str) -> bool:
        return peer_in(self._networks, host)


@dataclass(frozen=True)
class DicomHeader(MessageHeader):
    """What the inbox needs to know of a C-STORE, in the shape every connector hands over."""

    @property
    def sender(self) -> str:
        return self.sending_application  # the calling AE title


def dicom_header(calling_aet: str, sop_instance_uid: str, modality: str) -> DicomHeader:
    return DicomHeader(
        field_separator="",
        encoding_characters="",
        sending_application=calling_aet,
        sending_facility="",
        receiving_application="",
        receiving_facility="",
        message_type=f"DICOM^{modality}" if modality else "DICOM",
        trigger_event=modality,
        control_id=sop_instance_uid,
        processing_id="P",
        version="",
        accept_ack_type="",
        application_ack_type="",
        charset=CHARSET,
    )


class DicomMetrics:
    """Labelled by calling AE title: only admitted ones (past the allow-list) reach a label,
    and only the first ``max_senders`` of them; the rest count under "other", so AE titles
    invented by a peer cannot grow ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None, *, max_senders: int = 64) -> None:
        self.registry = registry or CollectorRegistry()
        self._senders: set[str] = set()
        self._max_senders = max_senders
        self._senders_lock = threading.Lock()
        self.received = Counter(
            "sidecar_dicom_instances_received", "C-STORE requests", ["calling_ae"], registry=self.registry
        )
        self.stored = Counter(
            "sidecar_dicom_instances_stored",
            "C-STOREs answered Success (after commit)",
            ["calling_ae"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "sidecar_dicom_instances_duplicate",
            "Resends of stored instances",
            ["calling_ae"],
            registry=self.registry,
        )
        self.failed = Counter(
            "sidecar_dicom_instances_failed",
            "C-STOREs answered with a failure status",
            ["calling_ae", "status"],
            registry=self.registry,
        )
        self.refused = Counter(
            "sidecar_dicom_connections_refused",
            "Connections closed at accept (reason: peer_not_allowed, peer_limit, total_limit)",
            ["reason"],
            registry=self.registry,
        )
        self.connections = Gauge(
            "sidecar_dicom_connections", "Open DICOM connections (negotiated or not)", registry=self.registry
        )
        self.latency = Histogram(
            "sidecar_dicom_store_latency_seconds",
            "From a complete C-STORE request to its response",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=self.registry,
        )

    def sender(self, calling_ae: str) -> str:
        with self._senders_lock:
            if calling_ae in self._senders:
                return calling_ae
            if len(self._senders) < self._max_senders:
                self._senders.add(calling_ae)
                return calling_ae
        return "other"


class _Slots:
    """Open connections per peer address and in total; taken at accept, given back when
    the connection's association has ended."""

    def __init__(self, total: int, per_peer: int, metrics: DicomMetrics) -> None:
        self._total, self._per_peer = total, per_peer
        self._open: Tally[str] = Tally()
        self._lock = threading.Lock()
        self._metrics = metrics

    def take(self, host: str) -> str | None:
        """None when a slot was taken, else the refusal reason."""
        with self._lock:
            if self._open[host] >= self._per_peer:
                return "peer_limit"
            if self._open.total() >= self._total:
                return "total_limit"
            self._open[host] += 1
        self._metrics.connections.inc()
        return None

    def give_back(self, host: str) -> None:
        with self._lock:
            self._open[host] -= 1
            if self._open[host] <= 0:
                del self._open[host]
        self._metrics.connections.dec()


class _Handler(RequestHandler):
    """pynetdicom's handler starts the association's thread and returns; this one waits
    for it, so the pool worker and the connection's slot are held until it ends."""

    def handle(self) -> None:
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        stopping = cast(_Server, self.server).stopping
        while assoc.is_alive() and not stopping.is_set():
            # Not one join(): a worker must not outlive stop() waiting on an association
            # that lingers until its ARTIM timer (the pool's threads are joined at exit).
            assoc.join(0.5)


class _Server(ThreadedAssociationServer):
    """pynetdicom's acceptor, plus the peer checks and connection caps at accept, before
    any thread is started or PDU read, and a bounded pool instead of a thread per socket."""

    # socketserver's default backlog is 5: under a flood of connects, every other peer's
    # SYN is dropped and retried a second later. Refusals are closed fast, so a deeper
    # queue drains quickly.
    request_queue_size = 128
    allowed: DicomConfig
    stopping: threading.Event
    slots: _Slots
    pool: ThreadPoolExecutor
    metrics: DicomMetrics

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0]) if isinstance(client_address, tuple) else ""
        reason = "peer_not_allowed" if not self.allowed.peer_allowed(host) else self.slots.take(host)
        if reason is None:
            return True
        self.metrics.refused.labels(reason).inc()
        budget.warning("dicom connection refused", event="dicom.refused", reason=reason, peer=host)
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            self.pool.submit(self._serve, request, client_address)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._release(request, client_address)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._release(request, client_address)

    def _release(self, request: Any, client_address: Any) -> None:
        self.shutdown_request(request)  # closed already unless the handler failed
        self.slots.give_back(str(client_address[0]) if isinstance(client_address, tuple) else "")

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr: a log line by type instead.
        log.error("dicom connection failed", extra={"event": "dicom.connection_failed"})

    def shutdown(self) -> None:
        # The base class also removes itself from AE._servers, a list only start_server fills.
        self.stopping.set()
        socketserver.BaseServer.shutdown(self)
        self.server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _discard_spool(event: evt.Event) -> None:
    """A connection closed in the middle of a C-STORE leaves pynetdicom's temporary file
    of the partial data set behind (it removes only those it handed to us): remove it."""
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    spool = getattr(message, "_data_set_file", None)
    if spool is not None:
        with contextlib.suppress(OSError):
            spool.close()
            os.unlink(spool.name)


def _peer(event: evt.Event) -> str:
    requestor = event.assoc.requestor
    host, port = str(requestor.address), requestor.port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _decode(raw: bytes) -> Dataset:
    """Read back the Part-10 bytes exactly as the pipeline will, touching every element."""
    ds = pydicom.dcmread(io.BytesIO(raw))
    for _ in ds.iterall():  # raw elements are converted lazily; force it now
        pass
    return ds


class DicomServer:
    def __init__(
        self,
        config: DicomConfig,
        sink: MessageSink,
        *,
        on_committed: CommitListener | None = None,
        metrics: DicomMetrics | None = None,
    ) -> None:
        self._config = config
        self._sink = sink
        self._committer = GroupCommitter(sink)
        self._on_committed = on_committed
        self.metrics = metrics or DicomMetrics()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._limits = Limits(config.max_object_bytes, config.max_element_bytes)
        # The group committer resolves asyncio futures; pynetdicom calls handlers on one
        # thread per association, so they submit through a small loop of our own.
        self._loop = asyncio.new_event_loop()

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        # Received data sets go to a temporary file (0600) as they arrive, not to memory;
        # process-wide, and only receiving is affected.
        pynetdicom._config.STORE_RECV_CHUNKED_DATASET = True
        ae = AE(ae_title=self._config.ae_title)
        ae.maximum_pdu_size = self._config.max_pdu
        ae.maximum_associations = self._config.max_associations
        ae.acse_timeout = self._config.acse_timeout_s
        ae.network_timeout = self._config.network_timeout_s
        ae.dimse_timeout = self._config.dimse_timeout_s
        ae.require_calling_aet = [t.strip() for t in self._config.allowed_calling_aets]
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(cast(str, context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        server = ae.make_server(
            (self._config.host, self._config.port),
            evt_handlers=[(evt.EVT_C_STORE, self._handle_store), (evt.EVT_CONN_CLOSE, _discard_spool)],
            server_class=_Server,
            request_handler=_Handler,
        )
        assert isinstance(server, _Server)  # bound: a port in use has raised by now
        server.allowed = self._config
        server.metrics = self.metrics
        server.stopping = threading.Event()
        server.slots = _Slots(
            self._config.max_associations, self._config.max_connections_per_peer, self.metrics
        )
        server.pool = ThreadPoolExecutor(self._config.max_associations, thread_name_prefix="dicom-conn")
        self._committer.start()
        loop_thread = threading.Thread(target=self._loop.run_forever, name="dicom-commit-loop", daemon=True)
        loop_thread.start()
        server_thread = threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True)
        server_thread.start()
        self._server = server
        self._threads = [loop_thread, server_thread]
        log.info(
            "dicom listening",
            extra={"event": "dicom.listening", "host": self._config.host, "port": self.port},
        )

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting; associations in progress are aborted (their SCUs resend what
        they got no Success for); then commit what is queued."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        established = []
        for assoc in list(server.active_associations):
            if assoc.is_established:
                established.append(assoc)
                assoc.abort()
            else:
                # Still negotiating, or fed garbage: nothing is owed an answer, and its
                # thread lingers until pynetdicom's ARTIM timer; it is a daemon thread.
                assoc.kill()
        for assoc in established:
            assoc.join(timeout)  # a handler in the middle of a commit finishes it
        self._committer.stop(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        for thread in self._threads:
            thread.join(timeout)
        self._loop.close()
        log.info("dicom stopped", extra={"event": "dicom.stopped"})

    # -- C-STORE ----------------------------------------------------------------------

    def _handle_store(self, event: evt.Event) -> int:
        started = time.perf_counter()
        calling = str(event.assoc.requestor.ae_title).strip()
        label = self.metrics.sender(calling)
        self.metrics.received.labels(label).inc()
        try:
            status = self._store(event, calling)
        except Exception:
            # A bug must cost one request (answered as not stored), never the listener.
            log.exception("dicom store handling failed", extra={"event": "dicom.bug", "calling_ae": calling})
            status = OUT_OF_RESOURCES
        if status == SUCCESS:
            self.metrics.stored.labels(label).inc()
        else:
            self.metrics.failed.labels(label, f"0x{status:04X}").inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        return status

    def _store(self, event: evt.Event, calling: str) -> int:
        received_at = datetime.now(UTC)
        peer = _peer(event)
        spooled = Path(event.dataset_path)
        problem = check_object(spooled, self._limits)
        if problem is not None:
            return self._refuse(spooled, peer, problem, received_at)
        raw = spooled.read_bytes()
        context = {"peer": peer, "calling_ae": calling, "nbytes": len(raw)}
        try:
            ds = _decode(raw)
            sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip()
            modality = str(ds.get("Modality", "") or "").strip()[:16]
        except Exception as exc:
            # pydicom's messages can quote values: the reason names the exception type only.
            return self._reject(raw, peer, f"data set cannot be decoded ({type(exc).__name__})", received_at)
        if not (len(sop_uid) <= 64 and _UID.fullmatch(sop_uid)):
            return self._reject(raw, peer, "no valid SOP Instance UID (0008,0018)", received_at)

        message = InboundMessage(
            raw=raw,
            header=dicom_header(calling, sop_uid, modality),
            charset=CHARSET,
            repaired=False,
            source=SOURCE,
            peer=peer,
            received_at=received_at,
        )
        try:
            receipt = self._commit(message)
        except Exception as exc:
            log.error(
                "dicom commit failed",
                extra={"event": "dicom.commit_failed", "error": type(exc).__name__, **context},
            )
            return OUT_OF_RESOURCES
        if receipt.duplicate:
            self.metrics.duplicates.labels(self.metrics.sender(calling)).inc()
        log.debug(
            "dicom instance committed",
            extra={
                "event": "dicom.committed",
                "inbox_id": receipt.inbox_id,
                "duplicate": receipt.duplicate,
                **context,
            },
        )
        notify_committed(self._on_committed, receipt, message, log, "dicom.notify_failed")
        return SUCCESS

    def _commit(self, message: InboundMessage) -> Receipt:
        async def submit() -> Receipt:
            return await self._committer.submit(message)

        return asyncio.run_coroutine_threadsafe(submit(), self._loop).result(self._config.commit_timeout_s)

    def _refuse(self, spooled: Path, peer: str, problem: Problem, received_at: datetime) -> int:
        """Quarantine what ``check_object`` refused: an oversized object by its head only
        (its meta and first elements: enough to tell what it was), never all of it."""
        with spooled.open("rb") as fp:
            raw = fp.read(HEAD_BYTES) if problem.code == "oversized" else fp.read()
        return self._reject(raw, peer, problem.reason, received_at, code=problem.code, status=problem.status)

    def _reject(
        self,
        raw: bytes,
        peer: str,
        reason: str,
        received_at: datetime,
        *,
        code: str = "bad-dicom",
        status: int = CANNOT_UNDERSTAND,
    ) -> int:
        try:
            quarantine_id = self._sink.quarantine(Rejected(raw, SOURCE, peer, reason, code, received_at))
        except Exception as exc:
            # Without the evidence stored, ask the SCU to keep the object and retry.
            log.error(
                "dicom quarantine failed",
                extra={"event": "dicom.quarantine_failed", "peer": peer, "error": type(exc).__name__},
            )
            return OUT_OF_RESOURCES
        budget.warning(
            "dicom instance quarantined",
            event="dicom.quarantined",
            peer=peer,
            quarantine_id=quarantine_id,
            code=code,
            status=f"0x{status:04X}",
        )
        return status


def is_dicom_entry(source: str, charset: str) -> bool:
    """Whether an inbox entry holds a Part-10 file rather than an HL7 message."""
    return source == SOURCE or charset == CHARSET


__all__ = [
    "CANNOT_UNDERSTAND",
    "CHARSET",
    "DATASET_MISMATCH",
    "OUT_OF_RESOURCES",
    "SOURCE",
    "SUCCESS",
    "TOO_LARGE",
    "DicomConfig",
    "DicomHeader",
    "DicomMetrics",
    "DicomServer",
    "dicom_header",
    "is_dicom_entry",
]
