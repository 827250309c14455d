"""Known values across messages: what an admission reported about a patient is scrubbed
from a later message that does not carry it itself (a lab note naming the patient, whose
PID has the MRN only) — issue #5, "every identifier the message (and the vault, for that
patient) knows"."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from core.tables import DeadLetter, Resource
from deid import Vault, deidentify, deidentify_dataset
from mapping import map_message
from tests.deployments import Embedded

# A name no dictionary holds, so only knowing it can catch it.
ADMISSION = (
    "MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260301081500+0800||ADT^A01^ADT_A01|KV-ADT-1|P|2.5.1\r"
    "EVN|A01|20260301081500+0800\r"
    "PID|1||MRN5550101^^^GENHOSP^MR||Zorvathy^Ilsabetta||19660412|F|||"
    "9 Quillfeather Row^^Springfield^IL^62704^USA||(217)555-0199^PRN^PH\r"
    "PV1|1|I|W4^412^B^GENHOSP||||9921^Okonkwo^Chidi|||MED\r"
)
LAB = (
    "MSH|^~\\&|LIS|GENHOSP|SIDECAR|GENHOSP|20260302121000+0800||ORU^R01^ORU_R01|KV-LAB-1|P|2.5.1\r"
    "PID|1||MRN5550101^^^GENHOSP^MR\r"
    "OBR|1|ORD-1|ACC-1|2823-3^Potassium^LN|||20260302113000+0800|||||||||||||||20260302120500+0800|||F\r"
    "OBX|1|NM|2823-3^Potassium [Moles/volume] in Serum or Plasma^LN||6.4|mmol/L|3.5-5.1|HH|||F\r"
    "OBX|2|ST|8251-1^Service comment^LN||Critical value phoned to Ilsabetta Zorvathy on the ward.||||||F\r"
)
NAME_PARTS = ["Zorvathy", "Ilsabetta"]


def test_the_message_alone_does_not_know_the_name() -> None:
    """The scrubber has nothing to go on in the lab message by itself: without the
    admission's values the name stays (so the next test can fail)."""
    mapped = map_message(LAB)
    keys = {pid: (k.authority, k.value) for pid, k in mapped.patient_keys.items()}
    out = deidentify(mapped.resources, keys, mapped.phi_values, Vault(b"k" * 32))
    assert "Zorvathy" in json.dumps([r.resource for r in out.resources])


def test_a_name_reported_by_the_admission_is_scrubbed_from_a_later_lab_note(tmp_path: Path) -> None:
    dep = Embedded(tmp_path / "data")
    dep.start()
    try:
        dep.deliver(ADMISSION.encode())  # processed before the lab message arrives
        dep.deliver(LAB.encode())
        with dep.db.sessions() as s:
            bodies = list(s.execute(select(Resource.body)).scalars())
            dead = list(s.execute(select(DeadLetter)).scalars())
        events = [e.decode() for e in dep.events]
    finally:
        dep.stop()
    assert not dead, [(d.stage, d.code, d.reason) for d in dead]
    comments = [
        json.loads(b) for b in bodies if json.loads(b).get("resourceType") == "Observation" and "8251-1" in b
    ]
    assert len(comments) == 1
    assert "[NAME]" in comments[0]["valueString"]
    assert "phoned to" in comments[0]["valueString"]
    for text in [*bodies, *events]:
        for part in NAME_PARTS:
            assert part not in text


# The same patient by DICOM: a worklist-less emergency scan, no name in the header, the
# technologist's note in the description. Only the admission's values can catch the name.
def _scan(patient_id: str, *, name: str = "", description: str = "") -> pydicom.Dataset:
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = "GENHOSP"
    ds.PatientName = name
    ds.StudyDescription = description
    # Another scan, not the test file's own: UIDs of its own.
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


SCAN_NOTE = "CT head, pt Ilsabetta Zorvathy, transfer from ward"


def test_without_known_values_the_dicom_description_keeps_the_name() -> None:
    out = deidentify_dataset(_scan("MRN5550101", description=SCAN_NOTE), Vault(b"k" * 32))
    assert "Zorvathy" in str(out.dataset.StudyDescription)  # so the next test can fail


def test_values_cross_between_hl7_and_dicom_in_both_directions(tmp_path: Path) -> None:
    dep = Embedded(tmp_path / "data", dicom_port=0)
    dep.start()
    try:
        dep.deliver(ADMISSION.encode())
        assert dep.app is not None and dep.app.dicom is not None
        # HL7 -> DICOM: the admission's name, in a scan description without a header name.
        # DICOM -> HL7: a scan names a patient the HL7 feeds never named; a later lab
        # note about that patient (PID with the MRN only) names them.
        scans = [
            _scan("MRN5550101", description=SCAN_NOTE),
            _scan("MRN5550202", name="Vexmoore^Oriandel", description="CT abdomen"),
        ]
        ae = AE(ae_title="MODALITY1")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", dep.app.dicom.port, ae_title="SIDECAR")
        assert assoc.is_established
        try:
            assert [int(assoc.send_c_store(ds).Status) for ds in scans] == [0, 0]
        finally:
            assoc.release()
        dep.settle()
        dep.deliver(LAB_OTHER.encode())
        with dep.db.sessions() as s:
            bodies = list(s.execute(select(Resource.body)).scalars())
            dead = list(s.execute(select(DeadLetter)).scalars())
        events = [e.decode() for e in dep.events]
        objects = [p.read_bytes() for p in (tmp_path / "data" / "deid-dicom").rglob("*.dcm")]
    finally:
        dep.stop()
    assert not dead, [(d.stage, d.code, d.reason) for d in dead]
    assert len(objects) == 2
    studies = [json.loads(b) for b in bodies if json.loads(b)["resourceType"] == "ImagingStudy"]
    described = [s["description"] for s in studies if "head" in s.get("description", "")]
    assert described and "[NAME]" in described[0] and "transfer from ward" in described[0]
    comments = [json.loads(b) for b in bodies if "8251-1" in b and "Vexmoore" not in b]
    assert any("discussed with [NAME]" in c.get("valueString", "") for c in comments)
    for blob in [*bodies, *events, *(o.decode("latin-1") for o in objects)]:
        for part in [*NAME_PARTS, "Vexmoore", "Oriandel"]:
            assert part not in blob


LAB_OTHER = (
    "MSH|^~\\&|LIS|GENHOSP|SIDECAR|GENHOSP|20260303121000+0800||ORU^R01^ORU_R01|KV-LAB-2|P|2.5.1\r"
    "PID|1||MRN5550202^^^GENHOSP^MR\r"
    "OBR|1|ORD-2|ACC-2|2823-3^Potassium^LN|||20260303113000+0800|||||||||||||||20260303120500+0800|||F\r"
    "OBX|1|NM|2823-3^Potassium [Moles/volume] in Serum or Plasma^LN||4.1|mmol/L|3.5-5.1|N|||F\r"
    "OBX|2|ST|8251-1^Service comment^LN||Results discussed with Oriandel Vexmoore by phone.||||||F\r"
)
