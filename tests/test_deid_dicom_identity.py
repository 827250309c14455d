"""UID consistency, HL7/DICOM patient linkage, burned-in quarantine and error reporting."""

from __future__ import annotations

import io
import re

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from core.errors import DeidError
from deid import Vault
from deid.dicom import DicomOptions, burned_in_risk, deidentify_dataset
from deid.dicom.values import uid_hash

SECRET = b"identity-test-secret-0123456789"
_UID = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")

STUDY = "1.2.826.0.1.3680043.2.1125.1.1"
SERIES = "1.2.826.0.1.3680043.2.1125.1.2"
FRAME = "1.2.826.0.1.3680043.2.1125.1.3"


def _instance(n: int, *, patient: str = "MRN-4711", issuer: str | None = "HOSP-A") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{SERIES}.{n}")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = f"{SERIES}.{n}"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.FrameOfReferenceUID = FRAME
    ds.Modality = "CT"
    ds.PatientName = "Wang^Fang"
    ds.PatientID = patient
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = "19800102"
    ds.StudyDate = "20240310"
    ds.SeriesDate = "20240310"
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = f"{SERIES}.{n + 1}"
    ds.ReferencedImageSequence = Sequence([ref])
    return ds


def test_same_uid_same_new_uid_and_structure_intact() -> None:
    vault = Vault(SECRET)
    a = deidentify_dataset(_instance(1), vault).dataset
    b = deidentify_dataset(_instance(2), vault).dataset
    assert a.StudyInstanceUID == b.StudyInstanceUID != STUDY
    assert a.SeriesInstanceUID == b.SeriesInstanceUID != SERIES
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID != FRAME
    assert a.SOPInstanceUID != b.SOPInstanceUID
    # a's reference to instance 2 points at b's new SOP Instance UID.
    assert a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == b.SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # standard UIDs are not touched


def test_uid_is_stable_across_vault_instances_and_valid() -> None:
    first = deidentify_dataset(_instance(1), Vault(SECRET)).dataset.StudyInstanceUID
    again = deidentify_dataset(_instance(1), Vault(SECRET)).dataset.StudyInstanceUID
    other = deidentify_dataset(_instance(1), Vault(b"another-secret-0123456789")).dataset.StudyInstanceUID
    assert first == again
    assert first != other
    for uid in (first, other):
        assert uid.startswith("2.25.") and len(uid) <= 64 and _UID.fullmatch(uid)


def test_uid_hash_worst_case_length() -> None:
    # 128 bits in decimal is at most 39 digits.
    assert len(f"2.25.{2**128 - 1}") <= 64
    assert uid_hash(Vault(SECRET), STUDY + "\x00") == uid_hash(Vault(SECRET), STUDY)


def test_same_patient_via_hl7_and_dicom() -> None:
    vault = Vault(SECRET)
    # HL7 PID-3 "MRN-4711^^^HOSP-A^MR": the mapper keys the patient on (CX.4.1, CX.1).
    hl7_pseudonym = vault.pseudonym("HOSP-A", "MRN-4711")
    via_issuer = deidentify_dataset(_instance(1, issuer="hosp-a "), vault)
    via_config = deidentify_dataset(_instance(1, issuer=None), vault, authority="HOSP-A")
    assert via_issuer.patient == via_config.patient == hl7_pseudonym
    out = via_issuer.dataset
    assert out.PatientID == str(out.PatientName) == hl7_pseudonym
    days = vault.date_shift_days(hl7_pseudonym)
    shifted = pydicom.valuerep.DA("20240310")
    assert out.StudyDate == (shifted + __import__("datetime").timedelta(days=days)).strftime("%Y%m%d")
    # A different authority is a different patient.
    assert deidentify_dataset(_instance(1, issuer=None), vault).patient != hl7_pseudonym


def test_no_patient_id_means_no_pseudonym_and_no_dates() -> None:
    out = deidentify_dataset(_instance(1, patient=""), Vault(SECRET))
    assert out.patient is None
    assert out.dataset.PatientID == ""
    assert out.dataset.StudyDate == ""  # Z without a shift
    assert "SeriesDate" not in out.dataset or out.dataset.SeriesDate != "20240310"


def test_round_trip_and_input_untouched() -> None:
    original = _instance(1)
    out = deidentify_dataset(original, Vault(SECRET)).dataset
    assert original.PatientName == "Wang^Fang" and original.StudyInstanceUID == STUDY
    assert original.file_meta.MediaStorageSOPInstanceUID == f"{SERIES}.1"
    assert original.ReferencedImageSequence[0].ReferencedSOPInstanceUID == f"{SERIES}.2"
    blob = io.BytesIO()
    pydicom.dcmwrite(blob, out, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(blob.getvalue()))
    assert back.StudyInstanceUID == out.StudyInstanceUID
    assert b"Wang" not in blob.getvalue() and b"MRN-4711" not in blob.getvalue()
    assert b"19800102" not in blob.getvalue()


def _image(modality: str, flag: str | None, sop: str = "1.2.840.10008.5.1.4.1.1.2") -> Dataset:
    ds = _instance(1)
    ds.Modality = modality
    ds.SOPClassUID = sop
    ds.Rows = ds.Columns = 1
    ds.BitsAllocated = 8
    ds.PixelData = b"\x00\x00"
    if flag is not None:
        ds.BurnedInAnnotation = flag
    return ds


@pytest.mark.parametrize(
    ("modality", "flag", "sop", "risky"),
    [
        ("US", None, "1.2.840.10008.5.1.4.1.1.6.1", True),
        ("US", "NO", "1.2.840.10008.5.1.4.1.1.6.1", False),
        ("OT", "", "1.2.840.10008.5.1.4.1.1.7", True),
        ("CT", None, "1.2.840.10008.5.1.4.1.1.7", True),  # secondary capture by SOP class
        ("XC", None, "1.2.840.10008.5.1.4.1.1.77.1.4", True),
        ("ES", "NO", "1.2.840.10008.5.1.4.1.1.77.1.1", False),
        ("CT", None, "1.2.840.10008.5.1.4.1.1.2", False),
        ("CT", "YES", "1.2.840.10008.5.1.4.1.1.2", True),
        ("MR", "YES", "1.2.840.10008.5.1.4.1.1.4", True),
    ],
)
def test_burned_in_quarantine(modality: str, flag: str | None, sop: str, risky: bool) -> None:
    ds = _image(modality, flag, sop)
    vault = Vault(SECRET)
    result = deidentify_dataset(ds, vault)
    assert (result.quarantined is not None) is risky
    if risky:
        assert "Wang" not in result.quarantined  # type: ignore[operator]
        assert deidentify_dataset(ds, vault, DicomOptions(allow_burned_in=True)).quarantined is None
    assert burned_in_risk(ds) == (result.quarantined if risky else None)


def test_no_pixels_no_quarantine_for_risky_modality() -> None:
    ds = _instance(1)
    ds.Modality = "US"
    assert deidentify_dataset(ds, Vault(SECRET)).quarantined is None


class _Unreadable:
    def __str__(self) -> str:
        raise ValueError("Study for Wang")  # as pydicom does: the message quotes the value


def test_errors_name_tags_not_values() -> None:
    ds = _instance(1)
    ds.add_new(0x00081030, "LO", "Study for Wang")
    ds[0x00081030]._value = _Unreadable()
    with pytest.raises(DeidError) as info:
        deidentify_dataset(ds, Vault(SECRET), DicomOptions())
    assert "(0008,1030)" in str(info.value)
    assert "Wang" not in str(info.value)


def test_not_a_dataset() -> None:
    with pytest.raises(DeidError):
        deidentify_dataset("not a dataset", Vault(SECRET))  # type: ignore[arg-type]


def test_sr_text_inside_replaced_sequence_is_cleaned() -> None:
    ds = _instance(1)
    item = Dataset()
    item.ValueType = "TEXT"
    item.TextValue = "Findings for Wang Fang, MRN-4711: no acute change."
    item.PersonName = "Li^Wei"
    ds.ContentSequence = Sequence([item])  # D in the basic profile
    out = deidentify_dataset(ds, Vault(SECRET)).dataset
    text = out.ContentSequence[0].TextValue
    assert "Wang" not in text and "MRN-4711" not in text and "no acute change" in text
    assert out.ContentSequence[0].PersonName != "Li^Wei"
    plain = deidentify_dataset(ds, Vault(SECRET), DicomOptions(clean_descriptors=False)).dataset
    assert "Findings" not in plain.ContentSequence[0].TextValue
