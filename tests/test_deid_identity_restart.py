"""Acceptance 4 of issue #5: the same patient arriving by ADT, by ORU and by DICOM gets one
pseudonym and one date shift — across a restart of the process.

Two real `sidecar serve` processes (embedded defaults: SQLite + in-process pipeline) on the
same data directory (database and secret file): the first takes an ADT^A01 and an ORU^R01
over MLLP and is stopped; the second takes DICOM C-STOREs of the same patient.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from connectors import MllpClient
from core.db import Database
from core.settings import Settings
from core.tables import InboxEntry, OutboxEvent, Resource
from deid import Vault
from tests.fixtures.messages import ADT_A01, IDENTIFIERS, ORU_R01, encoded
from worker.context import load_secret

REPO = Path(__file__).resolve().parents[1]

# What the DICOM headers add to the HL7 identifiers (names, ids, the source UIDs).
DICOM_IDENTIFIERS = ["ACC-IMG-4471", "CompressedSamples", "Okonkwo", "Radiology Westwing"]


@contextmanager
def serve(data: Path, log: Path, **env: str) -> Iterator[dict[str, int]]:
    environment = {**os.environ, **{f"SIDECAR_{k.upper()}": v for k, v in env.items()}}
    with log.open("a") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(data), "--mllp-port", "0"],
            cwd=REPO,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, "serve exited: " + log.read_text()
            yield json.loads(line)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(90) == 0, log.read_text()  # drained: pipeline done, outbox published
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def instance(name: str, *, issuer: str | None) -> pydicom.Dataset:
    ds = pydicom.dcmread(str(get_testdata_file(name)))
    ds.PatientID = "MRN7734021"
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.PatientName = "Quimby^Harriet^Ann"
    ds.PatientBirthDate = "19760412"
    ds.StudyDate = ds.SeriesDate = "20260302"
    ds.StudyTime = "093000"
    ds.AccessionNumber = "ACC-IMG-4471"
    ds.ReferringPhysicianName = "Okonkwo^Chidi"
    ds.InstitutionName = "Radiology Westwing"
    ds.StudyDescription = "CT chest for Harriet Quimby"
    return ds


def c_store(port: int, *datasets: pydicom.Dataset) -> list[int]:
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="SIDECAR")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def days_between(shifted: str, real: str) -> int:
    return (date.fromisoformat(shifted[:10]) - date.fromisoformat(real)).days


def resources(db: Database, resource_type: str) -> list[dict[str, Any]]:
    with db.sessions() as session:
        bodies = session.execute(
            select(Resource.body).where(Resource.resource_type == resource_type)
        ).scalars()
        return [json.loads(b) for b in bodies]


def test_one_pseudonym_and_one_date_shift_across_feeds_and_a_restart(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "serve.log"

    # Process 1: HL7 only.
    with (
        serve(data, log) as ports,
        MllpClient().connect("127.0.0.1", ports["mllp_port"], timeout=30) as client,
    ):
        for message in (ADT_A01, ORU_R01):
            assert b"|AA|" in client.send(encoded(message))
    db = Database(Settings(data_dir=data))
    [patient_before] = resources(db, "Patient")
    pseudonym = patient_before["id"]

    # Process 2: a new process on the same database and secret, DICOM only. The CT names
    # its issuer; the MR has none and relies on the configured default authority.
    ct, mr = instance("CT_small.dcm", issuer="GENHOSP"), instance("MR_small.dcm", issuer=None)
    with serve(data, log, dicom_port="0", dicom_issuer_default="GENHOSP") as ports:
        assert "dicom_port" in ports
        assert c_store(ports["dicom_port"], ct, mr) == [0, 0]

    with db.sessions() as session:
        statuses = session.execute(select(InboxEntry.source, InboxEntry.status)).all()
    assert sorted(statuses) == [("dicom", "processed")] * 2 + [("mllp", "processed")] * 2

    # One patient: the DICOM Patient stub did not replace (or duplicate) the ADT's Patient.
    [patient] = resources(db, "Patient")
    assert patient == patient_before
    [observation, *_] = [o for o in resources(db, "Observation") if "effectiveDateTime" in o]
    studies = resources(db, "ImagingStudy")
    assert len(studies) == 2
    for resource in (observation, *studies):
        assert resource["subject"] == {"reference": f"Patient/{pseudonym}"}

    # One date shift: every date of the patient moved by the same number of days.
    settings = Settings(data_dir=data)
    vault = Vault(load_secret(settings), date_shift_max_days=settings.date_shift_max_days)
    shift = vault.date_shift_days(pseudonym)
    assert days_between(patient["birthDate"], "1976-04-12") == shift
    assert days_between(observation["effectiveDateTime"], "2026-03-01") == shift
    for study in studies:
        assert days_between(study["started"], "2026-03-02") == shift
        assert study["series"][0]["started"][:10] == study["started"][:10]

    # The de-identified objects agree with the ImagingStudy and carry the pseudonym.
    files = sorted((data / "deid-dicom").rglob("*.dcm"))
    assert len(files) == 2
    by_study = {s["identifier"][0]["value"].removeprefix("urn:oid:"): s for s in studies}
    for path in files:
        out = pydicom.dcmread(path)
        assert out.PatientID == str(out.PatientName) == pseudonym
        study = by_study[out.StudyInstanceUID]
        assert path.parent.name == out.StudyInstanceUID and path.stem == out.SOPInstanceUID
        assert study["series"][0]["uid"] == out.SeriesInstanceUID
        assert study["series"][0]["instance"][0]["uid"] == out.SOPInstanceUID
        assert (
            days_between(f"{out.StudyDate[:4]}-{out.StudyDate[4:6]}-{out.StudyDate[6:8]}", "2026-03-02")
            == shift
        )
        assert out.StudyInstanceUID not in (ct.StudyInstanceUID, mr.StudyInstanceUID)

    # No identifier of either feed anywhere past the line: stored JSON, events, files, logs.
    source_uids = [ds.StudyInstanceUID for ds in (ct, mr)] + [ds.SOPInstanceUID for ds in (ct, mr)]
    needles = [*IDENTIFIERS, *DICOM_IDENTIFIERS, *source_uids]
    with db.sessions() as session:
        stored = "\n".join(session.execute(select(Resource.body)).scalars())
        events = "\n".join(session.execute(select(OutboxEvent.body)).scalars())
    for where, blob in (("stored resources", stored), ("events", events), ("logs", log.read_text())):
        leaked = [v for v in needles if v.lower() in blob.lower()]
        assert not leaked, f"identifiers in {where}: {leaked}"
    assert '"ImagingStudy' in events
    for path in files:
        raw = path.read_bytes()
        leaked = [v for v in needles if v.encode() in raw]
        assert not leaked, f"identifiers in {path.name}: {leaked}"
    db.dispose()
