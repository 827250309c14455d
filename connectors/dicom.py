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
A data set that cannot be decoded is quarantined with the reason and answered 0xC000.

Read-only toward the PACS: the only bytes sent back are association and DIMSE responses.
pynetdicom's own loggers are held at WARNING: at INFO they print UIDs and AE titles of
every request, and we log what we need ourselves (peers, AE titles, sizes, codes; never
data set content or UIDs).
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import socketserver
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pydicom
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

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
from connectors.hl7.header import MessageHeader

log = logging.getLogger("sidecar.connectors.dicom")

_UID = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")

SOURCE = "dicom"
CHARSET = "dicom"  # inbox.charset of a DICOM entry: its raw bytes are a Part-10 file
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # storage failed on our side: the SCU should retry later
CANNOT_UNDERSTAND = 0xC000  # the data set cannot be read: retrying the same bytes will not help


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
    max_associations: int = 16
    commit_timeout_s: float = 60.0
    _networks: tuple[Network, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not 0 < len(self.ae_title.strip()) <= 16:
            raise ValueError("ae_title must be 1 to 16 characters")
        if any(not 0 < len(t.strip()) <= 16 for t in self.allowed_calling_aets):
            raise ValueError("allowed calling AE titles must be 1 to 16 characters")
        if self.max_pdu < 0 or self.max_associations <= 0 or self.commit_timeout_s <= 0:
            raise ValueError("max_pdu >= 0, max_associations and commit_timeout_s > 0")
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
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
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
        self.latency = Histogram(
            "sidecar_dicom_store_latency_seconds",
            "From a complete C-STORE request to its response",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=self.registry,
        )


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded acceptor, plus a peer address check before any PDU is read."""

    allowed: DicomConfig

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0]) if isinstance(client_address, tuple) else ""
        if self.allowed.peer_allowed(host):
            return True
        log.warning("dicom peer not allowed", extra={"event": "dicom.peer_denied", "peer": host})
        return False

    def shutdown(self) -> None:
        # The base class also removes itself from AE._servers, a list only start_server fills.
        socketserver.BaseServer.shutdown(self)
        self.server_close()


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
        # The group committer resolves asyncio futures; pynetdicom calls handlers on one
        # thread per association, so they submit through a small loop of our own.
        self._loop = asyncio.new_event_loop()

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        ae = AE(ae_title=self._config.ae_title)
        ae.maximum_pdu_size = self._config.max_pdu
        ae.maximum_associations = self._config.max_associations
        ae.require_calling_aet = [t.strip() for t in self._config.allowed_calling_aets]
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(cast(str, context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        server = ae.make_server(
            (self._config.host, self._config.port),
            evt_handlers=[(evt.EVT_C_STORE, self._handle_store)],
            server_class=_Server,
        )
        assert isinstance(server, _Server)  # bound: a port in use has raised by now
        server.allowed = self._config
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
        self.metrics.received.labels(calling).inc()
        try:
            status = self._store(event, calling)
        except Exception:
            # A bug must cost one request (answered as not stored), never the listener.
            log.exception("dicom store handling failed", extra={"event": "dicom.bug", "calling_ae": calling})
            status = OUT_OF_RESOURCES
        if status == SUCCESS:
            self.metrics.stored.labels(calling).inc()
        else:
            self.metrics.failed.labels(calling, f"0x{status:04X}").inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        return status

    def _store(self, event: evt.Event, calling: str) -> int:
        received_at = datetime.now(UTC)
        peer = _peer(event)
        raw = event.encoded_dataset(include_meta=True)
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
            self.metrics.duplicates.labels(calling).inc()
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

    def _reject(self, raw: bytes, peer: str, reason: str, received_at: datetime) -> int:
        code = "bad-dicom"
        try:
            quarantine_id = self._sink.quarantine(Rejected(raw, SOURCE, peer, reason, code, received_at))
        except Exception as exc:
            # Without the evidence stored, ask the SCU to keep the object and retry.
            log.error(
                "dicom quarantine failed",
                extra={"event": "dicom.quarantine_failed", "peer": peer, "error": type(exc).__name__},
            )
            return OUT_OF_RESOURCES
        log.warning(
            "dicom instance quarantined",
            extra={
                "event": "dicom.quarantined",
                "peer": peer,
                "quarantine_id": quarantine_id,
                "nbytes": len(raw),
            },
        )
        return CANNOT_UNDERSTAND


def is_dicom_entry(source: str, charset: str) -> bool:
    """Whether an inbox entry holds a Part-10 file rather than an HL7 message."""
    return source == SOURCE or charset == CHARSET


__all__ = [
    "CHARSET",
    "SOURCE",
    "DicomConfig",
    "DicomHeader",
    "DicomMetrics",
    "DicomServer",
    "dicom_header",
    "is_dicom_entry",
]
