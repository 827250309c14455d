"""`sidecar convert` on DICOM files, as a user runs it: real processes, real files."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from core.fhir import validate_resource
from tests.test_cli import sidecar

CT = Path(str(get_testdata_file("CT_small.dcm")))
MR = Path(str(get_testdata_file("MR_small.dcm")))
SOURCE_VALUES = ("CompressedSamples", "1CT1", "4MR1")


def test_deid_writes_the_deidentified_object_and_its_bundle(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = sidecar(
        "convert", "--deid", "--out", str(out), "--data-dir", str(tmp_path / "d"), str(CT), str(MR)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    objects = sorted(out.glob("*.dcm"))
    assert len(objects) == 2
    for name, original in (("CT_small", CT), ("MR_small", MR)):
        bundle = json.loads((out / f"{name}.json").read_text())
        validate_resource(bundle)
        assert bundle["type"] == "transaction"
        patient, study = (e["resource"] for e in bundle["entry"])
        assert (patient["resourceType"], study["resourceType"]) == ("Patient", "ImagingStudy")
        sop = study["series"][0]["instance"][0]["uid"]
        written = pydicom.dcmread(out / f"{sop}.dcm")
        assert written.SOPInstanceUID == sop
        assert (
            written.PatientID == patient["id"] and study["subject"]["reference"] == f"Patient/{patient['id']}"
        )
        assert study["identifier"][0]["value"] == f"urn:oid:{written.StudyInstanceUID}"
        source = pydicom.dcmread(original)
        assert written.StudyInstanceUID != source.StudyInstanceUID
        blob = (out / f"{name}.json").read_bytes() + (out / f"{sop}.dcm").read_bytes()
        for value in (*SOURCE_VALUES, source.SOPInstanceUID, source.StudyInstanceUID):
            assert value.encode() not in blob, value

    # Same secret, same output: a second run gives the same names and bytes.
    again = tmp_path / "again"
    sidecar("convert", "--deid", "--out", str(again), "--data-dir", str(tmp_path / "d"), str(CT))
    [first] = [p for p in objects if p.read_bytes() == next(again.glob("*.dcm")).read_bytes()]
    assert first.name == next(again.glob("*.dcm")).name


def test_without_deid_the_identified_bundle_goes_to_stdout(tmp_path: Path) -> None:
    result = sidecar("convert", "--data-dir", str(tmp_path / "d"), str(CT))
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    bundle = json.loads(line)
    validate_resource(bundle)
    study = bundle["entry"][-1]["resource"]
    assert study["identifier"][0]["value"] == f"urn:oid:{pydicom.dcmread(CT).StudyInstanceUID}"
    assert not list(tmp_path.rglob("*.dcm"))


def test_broken_and_missing_dicom_files_give_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"this is not DICOM")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(CT.read_bytes()[:400])
    missing = tmp_path / "missing.dcm"
    out = tmp_path / "out"
    result = sidecar(
        "convert", "--deid", "--out", str(out), "--data-dir", str(tmp_path / "d"),
        str(broken), str(truncated), str(missing), str(CT),
    )  # fmt: skip
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert f"{broken}: not a readable DICOM file (InvalidDicomError)" in errors
    assert any(e.startswith(f"{truncated}: ") for e in errors)
    assert any(e.startswith(f"{missing}: ") for e in errors)
    assert "Traceback" not in result.stderr
    assert len(list(out.glob("*.dcm"))) == 1  # the good file is still converted


def test_deid_without_out_is_refused(tmp_path: Path) -> None:
    result = sidecar("convert", "--deid", "--data-dir", str(tmp_path / "d"), str(CT))
    assert result.returncode == 1
    assert result.stderr.strip() == f"{CT}: the de-identified .dcm needs --out DIR"
    assert result.stdout == ""
