"""Production dispatch: a patient's HL7 messages and DICOM objects go to one lane (one
worker, in order), whichever feed names them; different patients spread over the lanes."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from connectors.dicom import CHARSET as DICOM_CHARSET
from core.db import Database
from core.settings import Settings
from core.tables import InboxEntry
from worker.dispatch import InboxDispatcher

LANES = 4
PATIENTS = [f"MRN{n:05d}" for n in range(1, 13)]


def _adt(mrn: str, n: int) -> bytes:
    return (
        f"MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260301081500||ADT^A08^ADT_A01|LANE-{n}|P|2.5.1\r"
        f"PID|1||{mrn}^^^GenHosp^MR||Doe^Jo\r"
    ).encode()


def _scan(mrn: str, issuer: str | None) -> bytes:
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.PatientID = mrn
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _entry(raw: bytes, charset: str, n: int) -> InboxEntry:
    return InboxEntry(
        source="dicom" if charset == DICOM_CHARSET else "mllp",
        peer="p:1",
        sender="S",
        control_id=f"C{n}",
        message_type="x",
        received_at=datetime.now(UTC),
        raw=raw,
        charset=charset,
    )


def test_a_patients_hl7_and_dicom_entries_share_a_lane(tmp_path: Path) -> None:
    db = Database(Settings(data_dir=tmp_path))
    db.migrate()
    entries = []
    for n, mrn in enumerate(PATIENTS):
        entries.append((mrn, _entry(_adt(mrn, n), "UTF-8", 3 * n)))
        # One object names the issuer, the other relies on the feed's configured one.
        entries.append((mrn, _entry(_scan(mrn, "GENHOSP"), DICOM_CHARSET, 3 * n + 1)))
        entries.append((mrn, _entry(_scan(mrn, None), DICOM_CHARSET, 3 * n + 2)))
    with db.transaction() as session:
        session.add_all([e for _, e in entries])
    sent: list[tuple[int, int]] = []
    dispatcher = InboxDispatcher(
        db, lambda lane, up_to: sent.append((lane, up_to)), lanes=LANES, dicom_issuer="GenHosp"
    )
    assert dispatcher.run_once() == len(entries)
    assert dispatcher.run_once() == 0  # nothing new: no lane is woken again
    db.dispose()

    lane_of_id = {entry.id: dispatcher.lane(entry.raw, entry.charset) for _, entry in entries}
    by_patient: dict[str, set[int]] = {}
    for mrn, entry in entries:
        by_patient.setdefault(mrn, set()).add(lane_of_id[entry.id])
    assert all(len(lanes) == 1 for lanes in by_patient.values()), by_patient
    assert len({lane for lanes in by_patient.values() for lane in lanes}) > 1  # not all on lane 0
    # One wake-up per lane that has entries, naming its newest one, oldest lane first.
    newest = {lane: max(i for i, k in lane_of_id.items() if k == lane) for lane in set(lane_of_id.values())}
    assert sent == sorted(newest.items(), key=lambda item: item[1])
