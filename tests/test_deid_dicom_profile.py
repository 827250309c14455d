"""Acceptance: every attribute of PS3.15 Table E.1-1 that pydicom knows gets its action.

The expected action per attribute is derived here from the CSV in ../shared, written out
independently of ``resolve_action`` (which reads the generated ``profile_table``), so a
mistake in either the generator or the resolver shows up as a mismatch.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from deid.dicom import DicomOptions, deidentify_dataset, make_profile_table, values
from deid.dicom.actions import resolve_action
from deid.vault import Vault
from tests.corpus import shared_file

SECRET = b"profile-test-secret-0123456789"
VAULT = Vault(SECRET)
_TAG = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)")
_DATES = {"DA", "DT"}
_TEXT = {"SH", "LO", "ST", "LT", "UT", "UC"}


def _rows() -> list[tuple[int, str, dict[str, str]]]:
    rows = []
    with shared_file("spec", "ps3.15_table_E.1-1.csv").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            match = _TAG.fullmatch(row["tag"].strip())
            if match:
                rows.append((int(match[1] + match[2], 16), row["basic_profile"], row))
    with shared_file("spec", "ps3.15_table_E.1-1_additions_2024c_to_2026c.csv").open(
        encoding="utf-8", newline=""
    ) as fh:
        for row in csv.DictReader(fh):
            match = _TAG.fullmatch(row["tag"].strip())
            assert match
            rows.append((int(match[1] + match[2], 16), "X", {}))  # spec/README: treat as X
    return rows


def _vr(tag: int) -> str:
    vr = dictionary_VR(tag)
    return vr.split(" or ")[0]  # "US or SS", "OB or OW": the first is valid for a test value


def _value(tag: int, vr: str) -> object:
    h = f"{tag:08X}"
    by_vr: dict[str, object] = {
        "AE": f"AE{h}",
        "AS": "045Y",
        "CS": f"CS{h}",
        "DA": "20200315",
        "DT": "20200315101112",
        "TM": "101112",
        "DS": "12.5",
        "IS": "42",
        "PN": f"Doe^John{h}",
        "UI": f"1.2.3.{tag}",
        "UR": f"http://example.org/{h}",
        "FL": 1.5,
        "FD": 1.5,
        "AT": 0x00100010,
    }
    if vr in by_vr:
        return by_vr[vr]
    if vr in _TEXT:
        return f"T{h}"
    if vr in {"SL", "SS", "UL", "US", "SV", "UV"}:
        return 7
    if vr in {"OB", "OW", "UN", "OD", "OF", "OL", "OV"}:
        return b"\x01" * 8
    raise AssertionError(f"no test value for VR {vr}")


def _nested_item() -> Dataset:
    item = Dataset()
    item.PatientName = "Nested^Person"
    item.PatientID = "NESTED-ID-77"
    item.ReferencedSOPInstanceUID = "1.2.3.99.1"
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.StudyDate = "20200316"
    item.InstitutionName = "Nested General Hospital"
    item.add_new(0x00291010, "LO", "nested private")
    return item


def _full_dataset(rows: list[tuple[int, str, dict[str, str]]]) -> tuple[Dataset, list[tuple[int, str]]]:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    ds.file_meta.MediaStorageSOPInstanceUID = UID(f"1.2.3.{0x00080018}")
    present = []
    for tag, _code, _row in rows:
        # Groups 0000 (DIMSE command) and 0002 (file meta) never sit in a stored dataset.
        if tag >> 16 in (0x0000, 0x0002) or not dictionary_has_tag(tag):
            continue
        vr = _vr(tag)
        if vr == "SQ":
            ds.add(DataElement(tag, "SQ", Sequence([_nested_item()])))
        else:
            ds.add(DataElement(tag, vr, _value(tag, vr)))
        present.append((tag, vr))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Modality = "CT"
    ds.Rows = 2
    ds.add_new(0x00091010, "LO", "private value")
    ds.private_block(0x0011, "ACME 1.0", create=True).add_new(0x01, "LO", "private in block")
    return ds, present


def _expected(code: str, row: dict[str, str], vr: str) -> str:
    """The action the default options (modified dates, clean descriptors) must take."""
    if row.get("retain_long_modif_dates") == "C" and vr in _DATES | {"TM"}:
        return "SHIFT"
    if row.get("clean_desc") == "C" and vr in _TEXT:
        return "C"
    choices = code.split("/")
    for choice in ("U*", "D", "Z", "X", "K", "U"):
        if choice in choices:
            return choice
    raise AssertionError(code)


def _check(
    want: str, vr: str, before: object, after: object, *, present: bool, pseudonym: str, days: int
) -> bool:
    if want == "X":
        return not present
    if want == "Z":
        return present and (after in (None, "", b"") or (vr == "SQ" and not after))
    if want == "D":
        return present and after != before and (vr != "UI" or str(after).startswith("2.25."))
    if want == "U":
        return after == values.uid_hash(VAULT, str(before))
    if want == "K":
        return after == before
    if want == "C":
        return isinstance(after, str) and bool(after)
    if want == "SHIFT":
        if vr == "TM":
            return after == before
        return after == (values.shift_da if vr == "DA" else values.shift_dt)(str(before), days)
    if want == "SEQ":
        return present and isinstance(after, Sequence) and len(after) == 1
    if want == "PSEUDONYM":
        return str(after) == pseudonym and len(pseudonym) == 32
    raise AssertionError(want)


@pytest.fixture(scope="module")
def result() -> tuple[Dataset, Dataset, list[tuple[int, str]], list[tuple[int, str, dict[str, str]]]]:
    rows = _rows()
    ds, present = _full_dataset(rows)
    out = deidentify_dataset(ds, VAULT).dataset
    return ds, out, present, rows


def test_table_has_all_rows() -> None:
    rows = _rows()
    assert len(rows) == 619 + 33  # 623 rows minus the 3 ranges and the private row, plus additions


def test_generated_table_is_current() -> None:
    spec = Path(shared_file("spec", "ps3.15_table_E.1-1.csv")).parent
    generated = Path(make_profile_table.__file__).with_name("profile_table.py").read_text(encoding="utf-8")
    assert make_profile_table.render(spec) == generated, "run python -m deid.dicom.make_profile_table"


def test_every_attribute_gets_its_action(result) -> None:  # type: ignore[no-untyped-def]
    original, out, present, rows = result
    codes = {tag: (code, row) for tag, code, row in rows}
    issuer = str(original[0x00100021].value)  # IssuerOfPatientID is in the table, so present
    days = VAULT.date_shift_days(VAULT.pseudonym(issuer, str(original[0x00100020].value)))
    checked: dict[str, int] = {}
    failures = []
    for tag, vr in present:
        code, row = codes[tag]
        want = _expected(code, row, vr)
        if vr == "SQ" and (want not in ("X", "Z") or row.get("clean_desc") == "C"):
            want = "SEQ"
        if tag in (0x00100010, 0x00100020):
            want = "PSEUDONYM"
        checked[want] = checked.get(want, 0) + 1
        before = original[tag].value
        after = out[tag].value if tag in out else None
        ok = _check(want, vr, before, after, present=tag in out, pseudonym=str(out.PatientID), days=days)
        if not ok:
            failures.append(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {code} {vr}: wanted {want}")
    assert not failures, failures
    # Every kind of action was exercised.
    assert {"X", "Z", "D", "U", "C", "SHIFT", "SEQ", "PSEUDONYM"} <= set(checked), checked
    assert sum(checked.values()) > 550


def test_resolver_agrees_with_expectation(result) -> None:  # type: ignore[no-untyped-def]
    _original, _out, present, rows = result
    codes = {tag: (code, row) for tag, code, row in rows}
    for tag, vr in present:
        code, row = codes[tag]
        want = _expected(code, row, vr)
        got = resolve_action(tag, vr, DicomOptions(), can_shift=True)
        if vr == "SQ":
            # A cleaned or dummied sequence keeps its items and has the profile applied inside.
            cleaned = row.get("clean_desc") == "C" or want not in ("X", "Z")
            assert got == ("RECURSE" if cleaned else want), f"{tag:08X} {code}"
            continue
        want = {"U*": "RECURSE"}.get(want, want)
        if want == "C" and vr not in _TEXT:
            want = _expected(code, {}, vr)
        assert got == want, f"{tag:08X} {code} {vr}"


def test_nested_identifiers_and_private_tags(result) -> None:  # type: ignore[no-untyped-def]
    _original, out, _present, _ = result
    blob = io.BytesIO()
    pydicom.dcmwrite(blob, out, enforce_file_format=True)
    data = blob.getvalue()
    for leaked in (b"Nested^Person", b"NESTED-ID-77", b"Nested General Hospital", b"1.2.3.99.1", b"private"):
        assert leaked not in data, leaked
    for leaked in (b"Doe^John", b"20200315"):
        assert leaked not in data, leaked

    def walk(ds: Dataset) -> None:
        for elem in ds:
            assert not elem.tag.is_private
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)

    walk(out)


def test_output_is_valid_dicom(result) -> None:  # type: ignore[no-untyped-def]
    _original, out, _present, _ = result
    blob = io.BytesIO()
    pydicom.dcmwrite(blob, out, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(blob.getvalue()))
    assert back.PatientIdentityRemoved == "YES"
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.SOPInstanceUID == values.uid_hash(VAULT, f"1.2.3.{0x00080018}")
    codes = [item.CodeValue for item in back.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107", "113105"]
    assert back.LongitudinalTemporalInformationModified == "MODIFIED"
    for elem in back.iterall():
        if elem.VR == "UI" and elem.value and elem.tag != 0x00020010:
            for uid in elem.value if isinstance(elem.value, list) else [elem.value]:
                assert len(str(uid)) <= 64


def test_input_is_untouched(result) -> None:  # type: ignore[no-untyped-def]
    original, _out, _present, _ = result
    assert str(original.PatientName).startswith("Doe^John")
    assert 0x00091010 in original


def test_patient_characteristics_option() -> None:
    ds = Dataset()
    ds.PatientID = "P1"
    ds.PatientAge = "095Y"
    ds.PatientSex = "F"
    ds.PatientWeight = "70"
    kept = deidentify_dataset(ds, VAULT, DicomOptions(retain_patient_characteristics=True)).dataset
    assert kept.PatientAge == "090Y"
    assert kept.PatientSex == "F"
    assert kept.PatientWeight == 70
    plain = deidentify_dataset(ds, VAULT).dataset
    assert "PatientAge" not in plain and "PatientWeight" not in plain
    assert plain.PatientSex == ""
    codes = [
        i.CodeValue
        for i in deidentify_dataset(
            ds, VAULT, DicomOptions(retain_patient_characteristics=True)
        ).dataset.DeidentificationMethodCodeSequence
    ]
    assert "113108" in codes


def test_without_options_dates_are_not_shifted() -> None:
    ds = Dataset()
    ds.PatientID = "P1"
    ds.StudyDate = "20200315"  # Z
    ds.AcquisitionDate = "20200315"  # X/Z -> Z
    ds.ContentDate = "20200315"  # Z/D -> D
    ds.StudyDescription = "CT for Smith"  # X, clean_desc C
    ds.PatientName = "Smith^Anna"
    opts = DicomOptions(retain_longitudinal_modified_dates=False, clean_descriptors=False)
    out = deidentify_dataset(ds, VAULT, opts).dataset
    assert out.StudyDate == ""
    assert out.AcquisitionDate == ""
    assert out.ContentDate == values.DUMMY_BY_VR["DA"]
    assert "StudyDescription" not in out
    assert "LongitudinalTemporalInformationModified" not in out
    cleaned = deidentify_dataset(ds, VAULT).dataset
    assert "Smith" not in cleaned.StudyDescription and cleaned.StudyDescription.startswith("CT for")


def test_retain_safe_private() -> None:
    ds = Dataset()
    ds.PatientID = "P1"
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", "1000")
    block.add_new(0x08, "LO", "free text")
    other = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    other.add_new(0x10, "OB", b"\x00" * 4)
    out = deidentify_dataset(ds, VAULT, DicomOptions(retain_safe_private=True)).dataset
    kept = sorted(int(t) for t in out.keys() if t.is_private)  # noqa: SIM118
    assert kept == [0x00190010, 0x0019100C]
    assert "113111" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert not any(t.is_private for t in deidentify_dataset(ds, VAULT).dataset.keys())  # noqa: SIM118


@pytest.mark.parametrize(
    ("value", "days", "want"),
    [
        ("20200315", 3, "20200318"),
        ("20201231", 1, "20210101"),
        ("2020.03.15", -15, "20200229"),
        ("20200101-20200201", 1, "20200102-20200202"),
        ("nonsense", 1, None),
        ("20201340", 1, None),
    ],
)
def test_shift_da(value: str, days: int, want: str | None) -> None:
    assert values.shift_da(value, days) == want


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("2020", "2020"),
        ("202003", "202003"),
        ("20200315", "20200317"),
        ("20200315101112.123+0100", "20200317101112.123+0100"),
        ("2020031510", "2020031710"),
        ("x", None),
    ],
)
def test_shift_dt(value: str, want: str | None) -> None:
    assert values.shift_dt(value, 2) == want


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("089Y", "089Y"),
        ("090Y", "090Y"),
        ("102Y", "090Y"),
        ("999M", "999M"),
        ("120Y", "090Y"),
        ("030W", "030W"),
        ("bad", ""),
    ],
)
def test_generalise_age(value: str, want: str) -> None:
    assert values.generalise_age(value) == want
