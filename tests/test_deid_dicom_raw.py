"""The pydicom internals the DICOM de-identification relies on (deid/dicom/raw.py), checked
against the installed pydicom, so that an upgrade that moves them fails here, by name, before
it shows as a subtle change in de-identified files."""

from __future__ import annotations

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag

from deid.dicom.raw import character_set, elements, file_meta, replace_elements, shallow_copy

PATIENT_NAME = Tag(0x0010, 0x0010)


def _ct() -> Dataset:
    return dcmread(str(get_testdata_file("CT_small.dcm")))


def test_a_file_read_keeps_its_elements_raw_until_asked() -> None:
    ds = _ct()
    assert isinstance(elements(ds)[PATIENT_NAME], RawDataElement)
    _ = ds.PatientName
    assert isinstance(elements(ds)[PATIENT_NAME], DataElement)  # pydicom stores the conversion back


def test_replacing_the_element_dict_swaps_what_the_dataset_holds() -> None:
    ds = _ct()
    old = replace_elements(ds, {})
    assert PATIENT_NAME in old and PATIENT_NAME not in ds and len(ds) == 0
    block = ds.private_block(0x0009, "SIDECAR TEST", create=True)  # the private-block cache was reset
    block.add_new(0x01, "LO", "x")
    assert ds[0x0009, 0x1001].value == "x"
    replace_elements(ds, dict(old))
    assert str(ds.PatientName) == str(_ct().PatientName)


def test_a_shallow_copy_shares_the_elements_and_keeps_the_file_attributes() -> None:
    ds = _ct()
    copied = shallow_copy(ds)
    assert elements(copied) is elements(ds)
    assert copied.preamble == ds.preamble and copied.original_encoding == ds.original_encoding
    replace_elements(copied, {})
    assert len(copied) == 0 and len(ds) > 0  # its own dict now; the input untouched


def test_character_set_and_file_meta() -> None:
    ds = _ct()  # SpecificCharacterSet ISO_IR 100
    assert list(character_set(ds)) == ["latin_1"]  # as the file declared it
    assert isinstance(file_meta(ds), FileMetaDataset)
    fresh = Dataset()
    fresh.SpecificCharacterSet = "ISO_IR 192"
    assert list(character_set(fresh)) == ["UTF8"]  # never read from a file: what pydicom settled on
    assert file_meta(fresh) is None
