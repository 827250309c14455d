"""Acceptance on pydicom's own test files: nothing the profile removes or replaces survives.

Some of pydicom's test files are broken on purpose; those that ``dcmread`` refuses are
skipped and counted. For each readable file, every value of an attribute whose resolved
action is X, Z, D or U is looked for in the serialised output (pixel data left out, where
short values match by chance). Values too trivial to identify anyone (empty, "0", single
characters), and values the profile legitimately keeps in another attribute of the same
file or inside one (a removed InstitutionName "TOSHIBA" beside a kept Manufacturer
"TOSHIBA_MEC"), are not counted as leaks.
"""

from __future__ import annotations

import copy
import io
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from deid.dicom import DicomOptions, deidentify_dataset
from deid.dicom.actions import RECURSE, resolve_action
from deid.dicom.private import is_safe_private
from deid.dicom.values import DUMMY_BY_VR
from deid.vault import Vault
from tests.corpus import pydicom_shipped_files

VAULT = Vault(b"corpus-test-secret-0123456789")
_REMOVED = {"X", "Z", "D", "U"}
_PIXELS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_DUMMIES = {str(v) for v in DUMMY_BY_VR.values()}


def _readable() -> tuple[list[tuple[Path, Dataset]], int]:
    files: list[tuple[Path, Dataset]] = []
    broken = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in pydicom_shipped_files():
            try:
                files.append((name, pydicom.dcmread(name)))
            except Exception:
                broken += 1
    return files, broken


def _elements(ds: Dataset) -> Iterator[pydicom.DataElement]:
    for tag in list(ds.keys()):  # tags, so private values are never decoded
        if tag.is_private or tag.group in (0x0000,) or tag.element == 0:
            continue
        if tag.group & 0xFF01 in (0x5000, 0x6000):
            continue
        elem = ds[tag]
        yield elem
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _elements(item)


def _texts(value: object) -> list[str]:
    if isinstance(value, bytes | bytearray) or value is None:
        return []
    items = value if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
    return [str(v).strip(" \x00") for v in items]


def _protected_and_kept(ds: Dataset, can_shift: bool) -> tuple[dict[str, str], set[str]]:
    protected: dict[str, str] = {}
    kept: set[str] = set()
    for elem in _elements(ds):
        if elem.VR == "SQ":
            continue
        action = resolve_action(int(elem.tag), elem.VR, DicomOptions(), can_shift=can_shift)
        target = protected if action in _REMOVED else None
        for text in _texts(elem.value):
            if target is not None:
                target.setdefault(text, str(elem.tag))
            elif action != RECURSE:
                kept.add(text)
    # The file meta keeps the implementation's class UID, which software also writes as
    # InstanceCreatorUID (a product, not a person).
    meta = getattr(ds, "file_meta", None)
    for elem in meta or []:
        if elem.tag != 0x00020003:
            kept.update(_texts(elem.value))
    return protected, kept


def _occurs(value: bytes, data: bytes) -> bool:
    # Bounded by non-alphanumerics, so accession number "428" is not found inside the
    # digits of a hashed 2.25 UID; values are padded with spaces or NULs or stand alone.
    pattern = rb"(?<![0-9A-Za-z.])" + re.escape(value) + rb"(?![0-9A-Za-z])"
    return re.search(pattern, data) is not None


def _serialise(ds: Dataset) -> bytes:
    blob = io.BytesIO()
    pydicom.dcmwrite(blob, ds)
    return blob.getvalue()


@pytest.fixture(scope="module")
def corpus() -> tuple[list[tuple[Path, Dataset]], int]:
    files, broken = _readable()
    if not files:
        pytest.skip("pydicom test files not available")
    return files, broken


def test_no_removed_value_survives(corpus) -> None:  # type: ignore[no-untyped-def]
    files, broken = corpus
    leaks: list[str] = []
    checked_values = written = quarantined = 0
    for path, ds in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = deidentify_dataset(ds, VAULT)
            out = result.dataset
            quarantined += result.quarantined is not None
            # Valid DICOM: writes and reads back.
            back = pydicom.dcmread(io.BytesIO(_serialise(out)), force=True)
            assert back.PatientIdentityRemoved == "YES", path.name
            written += 1
            stripped = copy.copy(out)
            for pixel_tag in _PIXELS:
                if pixel_tag in stripped:
                    del stripped[pixel_tag]
            data = _serialise(stripped)
            protected, kept = _protected_and_kept(ds, can_shift=result.patient is not None)
            # Reading the output decodes what the de-identification left raw (odd values warn).
            for elem in out.iterall():
                assert not elem.tag.is_private, f"{path.name}: private {elem.tag} kept"
        for text, where in protected.items():
            if len(text) < 2 or text == "0" or text in _DUMMIES or any(text in k for k in kept):
                # A removed InstitutionName "TOSHIBA" is not leaked by a kept Manufacturer
                # "TOSHIBA_MEC".
                continue
            checked_values += 1
            encoded = {text.encode("utf-8", "ignore"), text.encode("latin-1", "ignore")}
            if any(e and _occurs(e, data) for e in encoded):
                leaks.append(f"{path.name}: {where}")
    print(
        f"\npydicom test files: {len(files)} de-identified, written and re-read; {broken} unreadable"
        f" (skipped); {checked_values} removed values checked; {quarantined} quarantined"
    )
    assert not leaks, leaks
    assert written == len(files)
    assert len(files) > 100


def test_safe_private_only(corpus) -> None:  # type: ignore[no-untyped-def]
    files, _broken = corpus
    for path, ds in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = deidentify_dataset(ds, VAULT, DicomOptions(retain_safe_private=True)).dataset
        for tag in list(out.keys()):
            if tag.is_private and not tag.is_private_creator:
                creator = out[(tag.group << 16) | (tag.element >> 8)].value
                assert is_safe_private(str(creator), tag.group, tag.element), f"{path.name} {tag}"


def test_input_files_untouched(corpus) -> None:  # type: ignore[no-untyped-def]
    files, _broken = corpus
    for path, _ds in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fresh = pydicom.dcmread(path)  # raw, not yet parsed elements: the clone's hard case
            deidentify_dataset(fresh, VAULT, DicomOptions(retain_safe_private=True))
            deidentify_dataset(fresh, VAULT)
            try:
                reference = _serialise(pydicom.dcmread(path))
            except Exception:
                # pydicom cannot write some of its test files back as read (SC_rgb_jpeg.dcm
                # says explicit VR but is implicit); the values are compared instead.
                expected = pydicom.dcmread(path)
                assert [str(e.value) for e in fresh] == [str(e.value) for e in expected], path.name
                continue
            assert _serialise(fresh) == reference, path.name


def _canonical(ds: Dataset) -> list[tuple[int, str, object]]:
    out: list[tuple[int, str, object]] = []
    for elem in ds:
        if elem.VR == "SQ":
            out.append((int(elem.tag), "SQ", [_canonical(item) for item in elem.value]))
        else:
            out.append((int(elem.tag), elem.VR, repr(elem.value)))
    return out


def _decode_all(ds: Dataset) -> None:
    for elem in ds:  # iterating decodes every element, sequences and their items too
        if elem.VR == "SQ":
            for item in elem.value:
                _decode_all(item)


@pytest.mark.parametrize("options", [DicomOptions(), DicomOptions(retain_safe_private=True)])
def test_raw_and_decoded_input_give_the_same_output(corpus, options: DicomOptions) -> None:  # type: ignore[no-untyped-def]
    """The walk keeps raw elements raw and writes values of its own as raw bytes; from an
    input the caller has decoded throughout it takes the decoding path everywhere. Both
    must give the same object, read back from its serialised form."""
    files, _broken = corpus
    for path, _ds in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = pydicom.dcmread(path)
            decoded = pydicom.dcmread(path)
            _decode_all(decoded)
            outputs = []
            for source in (raw, decoded):
                result = deidentify_dataset(source, VAULT, options)
                try:
                    data = _serialise(result.dataset)
                except Exception:
                    continue  # pydicom cannot write this one back (see test_input_files_untouched)
                back = pydicom.dcmread(io.BytesIO(data), force=True)
                outputs.append((result.patient, result.quarantined, _canonical(back)))
        if len(outputs) == 2:
            assert outputs[0] == outputs[1], path.name


def test_the_corpus_is_what_pydicom_ships_and_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 22: get_testdata_files() also looks for pydicom's online extras and, without
    # `requests`, sleeps through download retries; the corpus must not depend on either.
    import pydicom.data.data_manager as manager

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the DICOM corpus asked pydicom to fetch files")

    monkeypatch.setattr(manager, "fetch_data_files", refuse)
    monkeypatch.setitem(sys.modules, "requests", None)
    files, broken = _readable()
    assert len(files) > 100 and broken < len(files)
