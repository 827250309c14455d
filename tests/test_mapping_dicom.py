"""DICOM -> ImagingStudy: the pure mapping, its de-identification (UIDs agree with the
de-identified .dcm), and the pipeline on a real SQLite inbox (merge, dead letters)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from connectors.base import InboundMessage
from connectors.dicom import CHARSET, SOURCE, dicom_header
from connectors.inbox import DatabaseInbox
from core.errors import MappingError
from core.settings import Settings
from core.tables import DeadLetter, Resource
from deid import Vault, deidentify, deidentify_dataset
from mapping.dicom import map_dataset, merge_studies
from worker.batch import process
from worker.context import build_context
from worker.pipeline import Outcome, PipelineContext

SECRET = b"dicom-mapping-test-secret-0123456789"


def ct(sop_suffix: str = "", series_suffix: str = "") -> pydicom.Dataset:
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.PatientID, ds.IssuerOfPatientID = "MRN-1", "HOSP"
    ds.AccessionNumber = "ACC-99"
    if sop_suffix:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + sop_suffix
        ds.InstanceNumber = int(sop_suffix.strip(".")) + 1
    if series_suffix:
        ds.SeriesInstanceUID += series_suffix
        ds.SeriesNumber = 2
    return ds


def test_maps_one_instance_to_a_valid_imaging_study() -> None:
    ds = ct()
    mapped = map_dataset(ds, authority="IGNORED")
    patient, study = mapped.resources
    assert [k.authority for k in mapped.patient_keys.values()] == ["HOSP"]  # the issuer wins
    assert study["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert study["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{ds.StudyInstanceUID}"}
    assert study["identifier"][1]["value"] == "ACC-99"
    assert study["started"] == "2004-01-19T07:27:30-05:00"  # TimezoneOffsetFromUTC -0500
    assert study["modality"] == [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]
    [series] = study["series"]
    assert series["uid"] == ds.SeriesInstanceUID and series["number"] == 1
    assert series["instance"][0]["sopClass"]["code"] == "urn:oid:1.2.840.10008.5.1.4.1.1.2"
    assert mapped.phi_values["MRN-1"] == "ID" and mapped.phi_values[ds.SOPInstanceUID] == "ID"
    assert "MRN-1" not in repr(mapped)
    # Another instance of the same study maps to the same ImagingStudy id.
    assert map_dataset(ct(".7")).study["id"] == study["id"]


def test_missing_study_uid_is_a_mapping_error_naming_the_tag() -> None:
    ds = ct()
    del ds.StudyInstanceUID
    with pytest.raises(MappingError, match="StudyInstanceUID"):
        map_dataset(ds)


def test_deidentified_study_uses_the_uids_of_the_deidentified_object() -> None:
    vault = Vault(SECRET)
    ds = ct()
    mapped = map_dataset(ds)
    keys = {pid: (k.authority, k.value) for pid, k in mapped.patient_keys.items()}
    patient, study = [
        r.resource for r in deidentify(mapped.resources, keys, mapped.phi_values, vault).resources
    ]
    out = deidentify_dataset(ds, vault).dataset
    assert study["identifier"] == [{"system": "urn:dicom:uid", "value": f"urn:oid:{out.StudyInstanceUID}"}]
    assert study["series"][0]["uid"] == out.SeriesInstanceUID
    assert study["series"][0]["instance"][0]["uid"] == out.SOPInstanceUID
    assert study["subject"] == {"reference": f"Patient/{out.PatientID}"} and patient["id"] == out.PatientID
    assert study["started"][:10].replace("-", "") == out.StudyDate
    text = json.dumps(study)
    for value in ("ACC-99", "MRN-1", ds.StudyInstanceUID, ds.SeriesInstanceUID, "CompressedSamples"):
        assert value not in text


def test_merge_keeps_every_series_and_instance_in_any_order() -> None:
    a, b, c = (map_dataset(d).study for d in (ct(".1"), ct(".2"), ct(".3", series_suffix=".9")))
    one = merge_studies(merge_studies(a, b), c)
    other = merge_studies(merge_studies(c, b), a)
    assert one == other
    assert one["numberOfSeries"] == 2 and one["numberOfInstances"] == 3
    assert [len(s["instance"]) for s in one["series"]] == [2, 1]
    assert merge_studies(one, b) == one  # a resend changes nothing


def part10(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def ctx(tmp_path: Path) -> PipelineContext:
    return build_context(Settings(data_dir=tmp_path, secret="s" * 32))


def receive(ctx: PipelineContext, ds: pydicom.Dataset) -> int:
    inbox = DatabaseInbox(ctx.db)
    message = InboundMessage(
        raw=part10(ds),
        header=dicom_header("CT01", str(ds.SOPInstanceUID), str(ds.get("Modality", ""))),
        charset=CHARSET,
        repaired=False,
        source=SOURCE,
        peer="127.0.0.1:1",
        received_at=datetime.now(UTC),
    )
    [receipt] = inbox.commit_many([message])
    inbox.close()
    return receipt.inbox_id


def studies(ctx: PipelineContext) -> list[dict[str, Any]]:
    with ctx.db.sessions() as session:
        bodies = session.execute(select(Resource.body).where(Resource.resource_type == "ImagingStudy"))
        return [json.loads(b) for b in bodies.scalars()]


def test_pipeline_keeps_one_study_up_to_date_and_writes_each_object(ctx: PipelineContext) -> None:
    for ds in (ct(".1"), ct(".2"), ct(".3", series_suffix=".9")):
        assert process(ctx, receive(ctx, ds)).outcome is Outcome.PROCESSED
    [study] = studies(ctx)
    assert study["numberOfSeries"] == 2 and study["numberOfInstances"] == 3
    assert study["meta"]["versionId"] == "3"
    assert ctx.dicom.object_dir is not None
    files = sorted(ctx.dicom.object_dir.rglob("*.dcm"))
    assert len(files) == 3 and len({f.parent for f in files}) == 1
    uids = {i["uid"] for s in study["series"] for i in s["instance"]}
    assert uids == {f.stem for f in files}
    # Reprocessing the same bytes changes nothing (same id, same content, same file).
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert process(ctx, receive(ctx, ct(".4"))).outcome is Outcome.PROCESSED
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    [study] = studies(ctx)
    assert study["numberOfInstances"] == 4


@pytest.mark.parametrize(
    ("change", "stage", "code"),
    [
        ({"PatientID": ""}, "map", "no-patient"),
        ({"Modality": "US", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.6.1"}, "deid", "burned-in"),
    ],
)
def test_unsafe_or_unlinkable_instances_are_dead_lettered(
    ctx: PipelineContext, change: dict[str, str], stage: str, code: str
) -> None:
    ds = ct()
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    inbox_id = receive(ctx, ds)
    assert process(ctx, inbox_id).outcome is Outcome.DEAD_LETTERED
    with ctx.db.sessions() as session:
        [letter] = session.execute(select(DeadLetter)).scalars()
    assert (letter.inbox_id, letter.stage, letter.code) == (inbox_id, stage, code)
    assert "MRN-1" not in letter.reason and "CompressedSamples" not in letter.reason
    assert studies(ctx) == []
    assert ctx.dicom.object_dir is None or not list(ctx.dicom.object_dir.rglob("*.dcm"))
