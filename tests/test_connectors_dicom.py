"""The DICOM Storage SCP over real sockets: a pynetdicom SCU against our SCP, a real
SQLite inbox behind it."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)
from sqlalchemy import select, text

from connectors.base import InboundMessage, Receipt, Rejected
from connectors.dicom import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS, DicomConfig, DicomServer
from connectors.inbox import DatabaseInbox
from core.db import Database
from core.settings import Settings
from core.tables import InboxEntry, QuarantineEntry

CT = Path(str(get_testdata_file("CT_small.dcm")))
MR = Path(str(get_testdata_file("MR_small.dcm")))


class GatedInbox:
    """The real inbox, with a gate the test opens: shows when the SCP answers."""

    def __init__(self, inbox: DatabaseInbox) -> None:
        self.inbox = inbox
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def commit_many(self, messages: Sequence[InboundMessage]) -> Sequence[Receipt]:
        self.entered.set()
        assert self.gate.wait(30)
        return self.inbox.commit_many(messages)

    def quarantine(self, item: Rejected) -> int:
        return self.inbox.quarantine(item)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(Settings(data_dir=tmp_path))
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def sink(db: Database) -> Iterator[GatedInbox]:
    inbox = DatabaseInbox(db)
    yield GatedInbox(inbox)
    inbox.close()


def start(sink: GatedInbox, **config: object) -> DicomServer:
    server = DicomServer(DicomConfig(port=0, **config), sink)  # type: ignore[arg-type]
    server.start()
    return server


@pytest.fixture
def scp(sink: GatedInbox) -> Iterator[DicomServer]:
    server = start(sink)
    yield server
    server.stop()


def send(
    port: int,
    dataset: Path | pydicom.Dataset,
    *,
    ae_title: str = "STORESCU",
    source: str = "127.0.0.1",
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> int | None:
    """C-STORE one object (from ``source``: 127.0.0.2 plays a second peer); the response
    status, or None when no association was made."""
    ae = AE(ae_title=ae_title)
    for context in (CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage):
        ae.add_requested_context(context, transfer_syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="SIDECAR", bind_address=(source, 0))
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(dataset)
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def rows(db: Database) -> list[InboxEntry]:
    with db.sessions() as session:
        return list(session.execute(select(InboxEntry).order_by(InboxEntry.id)).scalars())


def test_success_only_after_the_instance_is_in_the_inbox(
    scp: DicomServer, sink: GatedInbox, db: Database
) -> None:
    sink.gate.clear()
    result: list[int | None] = []
    scu = threading.Thread(target=lambda: result.append(send(scp.port, CT)))
    scu.start()
    assert sink.entered.wait(10)
    time.sleep(0.5)
    assert result == [] and scu.is_alive()  # no answer while the commit is pending
    assert rows(db) == []
    sink.gate.set()
    scu.join(10)
    assert result == [SUCCESS]

    [row] = rows(db)
    original = pydicom.dcmread(CT)
    assert (row.source, row.sender, row.control_id) == ("dicom", "STORESCU", original.SOPInstanceUID)
    assert (row.message_type, row.charset, row.status) == ("DICOM^CT", "dicom", "received")
    assert row.peer.startswith("127.0.0.1:")
    stored = pydicom.dcmread(io.BytesIO(row.raw))  # a Part-10 file with its meta
    assert stored.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert stored.PatientName == original.PatientName
    assert stored.PixelData == original.PixelData


def test_resend_is_a_duplicate_answered_success(scp: DicomServer, db: Database) -> None:
    assert send(scp.port, CT) == SUCCESS
    assert send(scp.port, CT) == SUCCESS
    assert send(scp.port, MR) == SUCCESS
    ct, mr = rows(db)
    assert ct.resend_count == 1 and mr.resend_count == 0
    assert mr.message_type == "DICOM^MR"
    assert scp.metrics.duplicates.labels("STORESCU")._value.get() == 1


def test_failed_commit_answers_out_of_resources_never_success(scp: DicomServer, db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE inbox"))  # a real storage failure
    assert send(scp.port, CT) == OUT_OF_RESOURCES


def test_disallowed_calling_ae_is_rejected(sink: GatedInbox, db: Database) -> None:
    server = start(sink, allowed_calling_aets=("PACS",))
    try:
        assert send(server.port, CT, ae_title="INTRUDER") is None
        assert rows(db) == []
        assert send(server.port, CT, ae_title="PACS") == SUCCESS
        assert [r.sender for r in rows(db)] == ["PACS"]
    finally:
        server.stop()


def test_disallowed_peer_is_disconnected(sink: GatedInbox, db: Database) -> None:
    server = start(sink, allowed_peers=("10.0.0.0/8",))
    try:
        assert send(server.port, CT) is None
        assert rows(db) == []
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x08\x00\x18\x00ZZ\x04\x00abcd", "cannot be decoded (NotImplementedError)"),
        # Lengths that run past the end (issue 17: never answered Success): see
        # tests/security/test_dicom.py for truncated images.
        (b"\x08\x00\x18\x00UI\xff\xff" + b"not a dataset" * 3, "does not parse to its end"),
        (b"hello, this is not DICOM at all" * 8, "does not parse to its end"),
        (b"\x08\x00\x18\x00UI\x04\x00abcd", "no valid SOP Instance UID"),
    ],
)
def test_undecodable_data_set_is_quarantined(
    scp: DicomServer,
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    body: bytes,
    reason: str,
) -> None:
    # Valid file meta, then bytes that are not a data set, sent as they are (pynetdicom's
    # chunked mode streams a file's data set without decoding it).
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(buffer, meta)
    buffer.write(body)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(buffer.getvalue())

    assert send(scp.port, broken) == CANNOT_UNDERSTAND
    assert rows(db) == []
    with db.sessions() as session:
        [q] = session.execute(select(QuarantineEntry)).scalars()
    assert (q.source, q.code) == ("dicom", "bad-dicom")
    assert reason in q.reason
    assert q.raw.endswith(body)


def test_survives_garbage_and_answers_echo(scp: DicomServer) -> None:
    for junk in (b"GET / HTTP/1.1\r\n\r\n", b"\x01\x00" + b"\xff" * 64, bytes(range(256)) * 8):
        with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as s:
            s.sendall(junk)
            s.settimeout(2)
            with contextlib.suppress(TimeoutError, ConnectionError):
                s.recv(1024)  # pynetdicom may answer with an A-ABORT, or just close
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="SIDECAR")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == SUCCESS
    assoc.release()
    assert send(scp.port, MR) == SUCCESS
