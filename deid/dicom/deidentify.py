"""DICOM de-identification after PS3.15 Annex E (Basic Application Confidentiality Profile).

``deidentify_dataset`` returns a de-identified copy of a pydicom dataset. The actions come
from Table E.1-1 (compiled into ``profile_table``); attributes the table does not list are
kept, except private ones, which are removed unless on the safe list (``private``).

Patient identity. The pseudonym is ``vault.pseudonym(authority, PatientID)`` where the
authority is IssuerOfPatientID (0010,0021) when present, else the ``authority`` argument.
The HL7 side keys a patient on (CX.4.1 namespace id, else CX.4.2 universal id; CX.1);
``Vault`` compares authorities case- and whitespace-insensitively. So the same patient
arriving by both routes gets the same pseudonym (and the same date shift) only if the
modality/PACS writes the HL7 namespace id into IssuerOfPatientID, or the DICOM feed is
configured with ``authority`` equal to that namespace id.

Combined codes (X/Z, X/D, X/Z/D, Z/D, X/Z/U*) depend on the attribute's Type in the IOD
(PS3.15 E.3.1), which is not known here without an IOD-aware validator. We always take the
least removing choice: D over Z over X, and U* (keep the sequence, replace the UIDs in it)
over both. A dummy, an empty value or a shifted date leaks nothing, and that choice is
valid whatever the Type is (Type 1 needs D, Type 2 needs at least Z).

Further rules, each on the conservative side of what the table leaves open:

- Dates (Retain Longitudinal Temporal Information with Modified Dates): DA and DT move by
  the patient's ``vault.date_shift_days``, the same offset the HL7/FHIR side uses; TM is
  kept, since a whole-day shift leaves the time of day as it was. A date that cannot be
  read falls back to the basic action. Without a PatientID there is no pseudonym and so
  no shift: dates get the basic action (removed, emptied or a dummy).
- C (clean) passes text through ``deid.scrub.Scrubber`` with every value this object
  removes or replaces (and the caller's ``known`` values for the patient, what other
  feeds reported) as a known identifier (names, ids, dates, addresses...). Cleaning a
  sequence means applying the profile inside it; a non-text value falls back to the
  basic action.
- Inside a sequence whose basic action is D (Content Sequence, Graphic Annotation
  Sequence...), unlisted free text (an SR Text Value) is cleaned, unlisted names replaced.
- Curve (50xx) and overlay (60xx) groups are removed whole: overlay data is X, and an
  overlay plane without its data is not valid. Group lengths are removed (stale).
- AS values that are kept are pooled above 89 years ("090Y", as HIPAA Safe Harbor does).
- The file meta keeps only what a reader needs; the file name and the 128-byte preamble
  (which can hold a TIFF header) of a ``FileDataset`` are reset.

Cost (``bench/deid_dicom.py``). The output shares with the input what it keeps: each
dataset gets a new element dict, and elements pydicom has not decoded yet (most of a
file read from disk, pixel data included) are neither decoded nor copied, and are
written back byte for byte. Removed values are not decoded unless some text is cleaned;
replacements (dummies, hashed UIDs, shifted dates) are encoded straight into raw
elements, and a sequence whose items hold raw elements only is encoded in one go. The
actions are resolved once per (tag, VR) and options. The scrubber of the last few phi
sets is reused, since the instances of a series arrive together with the same values.
"""

from __future__ import annotations

import copy
import io
import struct
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import ClassVar, Final, TypeVar, cast

import pydicom
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from core.errors import DeidError

from ..scrub import Scrubber
from ..vault import Vault
from . import values
from .actions import (
    COL,
    RECURSE,
    SHIFT,
    C,
    D,
    DicomOptions,
    K,
    Plan,
    U,
    X,
    Z,
    pick,
    plan_for,
    plan_table,
    resolve_action,
    row_of,
)
from .private import is_safe_private
from .profile_table import PRIVATE
from .raw import character_set, elements, file_meta, replace_elements, shallow_copy

__all__ = ["DicomDeidResult", "DicomOptions", "burned_in_risk", "deidentify_dataset", "resolve_action"]


@dataclass(frozen=True)
class DicomDeidResult:
    dataset: Dataset
    """The de-identified copy; the input is untouched."""
    patient: str | None
    """The patient's pseudonym; None when the dataset has no PatientID."""
    quarantined: str | None
    """Why the image must not leave (burned-in text risk); then ``dataset`` is not for release."""


_CHARSET = 0x00080005
_SOP_CLASS_UID = 0x00080016
_MODALITY = 0x00080060
_BURNED_IN_ANNOTATION = 0x00280301
_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_ISSUER = 0x00100021
_IDENTITY_REMOVED = 0x00120062
_METHOD = 0x00120063
_METHOD_CODE_SEQUENCE = 0x00120064
_TEMPORAL_MODIFIED = 0x00280303
_SOP_INSTANCE_UID = 0x00080018
_MEDIA_SOP_INSTANCE_UID = 0x00020003
_PIXEL_TAGS: Final = (0x7FE00010, 0x7FE00008, 0x7FE00009)

# Modalities and SOP classes whose pixels commonly carry burned-in text (ultrasound
# measurements, screen captures, scanned documents, photographs with labels).
_BURNED_IN_MODALITIES: Final = frozenset({"US", "IVUS", "SC", "OT", "XC", "ES", "GM", "SM", "DOC", "VL"})
_BURNED_IN_SOP_PREFIXES: Final = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture, incl. the multi-frame ones (.7.1 - .7.4)
    "1.2.840.10008.5.1.4.1.1.6.",  # Ultrasound Image (and retired variants)
    "1.2.840.10008.5.1.4.1.1.3.",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.77.1.",  # VL images (endoscopic, photographic, slide...)
)

_METHOD_CODES: Final = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "chars": ("113108", "Retain Patient Characteristics Option"),
    "desc": ("113105", "Clean Descriptors Option"),
    "private": ("113111", "Retain Safe Private Option"),
}
# File meta elements worth keeping; the rest (source AE titles, private information) is
# dropped because it names sending systems.
_META_KEEP: Final = frozenset({0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013})


def burned_in_risk(ds: Dataset) -> str | None:
    """Why the pixels may carry burned-in identifying text, or None.

    BurnedInAnnotation (0028,0301) "YES" is a risk for any image; for modalities and SOP
    classes that usually carry text, anything but an explicit "NO" (missing too) is.
    """
    flag = _text(ds, _BURNED_IN_ANNOTATION).upper()
    if flag == "YES":
        return "BurnedInAnnotation (0028,0301) is YES"
    if flag == "NO" or not any(tag in elements(ds) for tag in _PIXEL_TAGS):
        return None
    modality = _text(ds, _MODALITY).upper()
    sop_class = _text(ds, _SOP_CLASS_UID)
    if modality in _BURNED_IN_MODALITIES:
        return f"Modality (0008,0060) {modality} often has burned-in text and (0028,0301) is not NO"
    if sop_class.startswith(_BURNED_IN_SOP_PREFIXES):
        return "SOP Class (0008,0016) often has burned-in text and (0028,0301) is not NO"
    return None


_D = TypeVar("_D", bound=Dataset)


def _strings(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def _set_strings(elem: DataElement, items: list[str]) -> None:
    elem.value = items[0] if len(items) == 1 else items


_DICT_VR: dict[int, str] = {}


def _raw_vr(raw: RawDataElement) -> str:
    """The VR pydicom gives ``raw`` when it converts it (implicit VR; UN of a known tag)."""
    vr = raw.VR
    if vr is not None and vr != "UN":
        return vr
    if vr == "UN" and not (
        pydicom.config.replace_un_with_known_vr and (raw.value is None or len(raw.value) < 0xFFFF)
    ):
        return vr
    known = _DICT_VR.get(raw.tag)
    if known is None:
        try:
            known = dictionary_VR(raw.tag)
        except KeyError:
            known = "UN"
        _DICT_VR[raw.tag] = known
    return known


class _Cleaner:
    """A Scrubber for one set of phi values, with the texts it has cleaned.

    The instances of a series or study arrive one after another, remove the same names,
    ids and dates and carry the same descriptions, so they would build the same scrubber
    and clean the same texts over and over. A Scrubber keeps no state between ``scrub``
    calls, so a result depends only on the text and the shift.
    """

    __slots__ = ("done", "scrubber")

    def __init__(self, phi: dict[str, str]) -> None:
        self.scrubber = Scrubber(phi)
        self.done: dict[tuple[str, int | None], str] = {}

    def scrub(self, text: str, days: int | None) -> str:
        key = (text, days)
        out = self.done.get(key)
        if out is None:
            out = self.scrubber.scrub(text, days)
            if len(self.done) < _CLEANED_MAX:
                self.done[key] = out
        return out


# The most recent cleaners, newest first, by phi values and by the raw removed elements
# those values are decoded from (so a repeat decodes nothing). Only a few: this serves
# objects of the same patient and study arriving together (the instances of a series,
# a few associations at once), not a store of every patient seen.
_RECENT: list[tuple[object, _Cleaner]] = []
_RECENT_MAX: Final = 8
_CLEANED_MAX: Final = 256
_SOURCE_KEY_MAX_BYTES: Final = 1 << 16


def _recent(key: object) -> _Cleaner | None:
    for known, cleaner in list(_RECENT):  # a copy: other threads may change the list
        if known == key:
            return cleaner
    return None


def _remember(key: object, cleaner: _Cleaner) -> None:
    _RECENT.insert(0, (key, cleaner))
    del _RECENT[_RECENT_MAX:]


# An element of a dataset's dict: pydicom's raw tuple until someone reads it.
_Element = DataElement | RawDataElement
_Elements = MutableMapping[BaseTag, _Element]


def _peek(ds: Dataset, elems: _Elements, tag: int) -> DataElement | None:
    """``elems[tag]`` as a DataElement, converted if raw but not stored back.

    ``Dataset.__getitem__`` would store the conversion in the dict, which may be the
    caller's input; ``ds`` gives the character set.
    """
    elem = elems.get(tag)  # type: ignore[call-overload]
    if elem is None or isinstance(elem, DataElement):
        return elem
    if elem.value is None and elem.length and elems is elements(ds):
        return ds[tag]  # deferred read (dcmread's defer_size): pydicom reads the file
    encoding = default_encoding if tag == _CHARSET else character_set(ds)
    return convert_raw_data_element(elem, encoding=encoding, ds=ds)


def _same_encoding(raw: RawDataElement, encoding: tuple[object, object]) -> bool:
    return (raw.is_implicit_VR, raw.is_little_endian) == encoding


def _raw_texts(raw: RawDataElement) -> list[str]:
    """The values of a raw UI, DA or DT element, as pydicom decodes them (ASCII)."""
    return (raw.value or b"").decode(default_encoding).rstrip(" \x00").split("\\")


def _text(ds: Dataset, tag: int) -> str:
    """The stripped text of an attribute, "" when absent; ``ds`` is not changed."""
    elem = _peek(ds, elements(ds), tag)
    return str(elem.value or "").strip() if elem is not None else ""


def _valid_kept(raw: RawDataElement | None, elem: _Element, vr: str) -> bool:
    """Whether a kept value is what its VR allows; a value pydicom already decoded into a
    number or a date is valid by construction."""
    if raw is not None:
        return raw.value is None or values.valid_for_vr(vr, raw.value)
    value = cast(DataElement, elem).value
    if value is None or value == "":
        return True
    return all(not isinstance(v, str) or values.valid_for_vr(vr, v) for v in _values(value))


def _values(value: object) -> list[object]:
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _new(tag: int, vr: str, value: object) -> DataElement:
    """An element with a value of ours, valid by construction."""
    return DataElement(tag, vr, value, validation_mode=pydicom.config.IGNORE)


# VRs whose values of ours (dummies, UIDs, dates, empty) are ASCII text, and the width of
# one value of the binary VRs whose dummy is zero.
_ASCII_VRS: Final = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_ZERO_WIDTH: Final = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "FD": 8, "SV": 8, "UV": 8}


def _encoded(tag: BaseTag, vr: str, value: object, encoding: tuple[object, object]) -> _Element:
    """A new element for a value of ours, already encoded when the dataset's encoding is known.

    A raw element costs a tuple here and a copy when written, where a DataElement costs
    validation here and encoding when written; pydicom decodes it if anyone reads it.
    The values are dummies, hashed UIDs, shifted dates or empty: ASCII text, or zeros,
    which read the same in either byte order.
    """
    implicit, little = encoding
    if not isinstance(implicit, bool) or not isinstance(little, bool):
        return _new(tag, vr, value)  # not read from a file: no encoding to follow
    if vr in _ASCII_VRS:
        if not value:  # "", None or an empty PersonName
            data = b""
        else:
            text = value if isinstance(value, str) else "\\".join(cast(list[str], value))
            if not text.isascii():
                return _new(tag, vr, value)  # not one of ours after all: pydicom encodes it
            data = text.encode("ascii")
            if len(data) % 2:
                data += b"\x00" if vr == "UI" else b" "
    elif vr == "SQ" and isinstance(value, Sequence) and not value:
        data = b""
    elif vr in _ZERO_WIDTH and value in (0, 0.0):
        data = b"\x00" * _ZERO_WIDTH[vr]
    elif vr in values.BINARY_VRS and value == values.DUMMY_BINARY:
        data = values.DUMMY_BINARY
    else:
        return _new(tag, vr, value)
    return RawDataElement(tag, None if implicit else vr, len(data), data, 0, implicit, little)


_ITEM = b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00"  # (FFFE,E000) little, big endian
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"
_LONG_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


def _encode_sequence(tag: BaseTag, elem: DataElement, encoding: tuple[object, object]) -> _Element | None:
    """``elem`` (a walked sequence) as one raw element, or None if an item holds decoded
    elements or anything this short encoder does not cover.

    pydicom writes a decoded sequence element by element, item by item, at a cost per
    element far above copying bytes; after the walk most items hold only raw elements
    (kept as read, or values of ours encoded in the item's encoding), which need nothing
    but their header. Follows PS3.5 7.1 (element), 7.5 (items, here of defined length).
    """
    implicit, little = encoding
    if not isinstance(implicit, bool) or not isinstance(little, bool):
        return None
    order = "<" if little else ">"
    item_tag, sequence_end = _ITEM[0 if little else 1], _SEQUENCE_END[0 if little else 1]
    out = bytearray()
    for item in elem.value or []:
        body = bytearray()
        for item_elem_tag, item_elem in sorted(elements(item).items(), key=lambda pair: int(pair[0])):
            if not isinstance(item_elem, RawDataElement) or not _same_encoding(item_elem, encoding):
                return None
            value = item_elem.value
            if value is None or item_elem_tag & 0xFFFF == 0:
                return None  # deferred, or a group length (removed by the walk anyway)
            undefined = item_elem.length == 0xFFFFFFFF
            length = 0xFFFFFFFF if undefined else len(value)
            body += struct.pack(f"{order}HH", item_elem_tag >> 16, item_elem_tag & 0xFFFF)
            if implicit:
                body += struct.pack(f"{order}L", length)
            elif item_elem.VR in _LONG_VRS:
                body += item_elem.VR.encode("ascii") + struct.pack(f"{order}HL", 0, length)
            elif undefined or length > 0xFFFF or not item_elem.VR or len(item_elem.VR) != 2:
                return None
            else:
                body += item_elem.VR.encode("ascii") + struct.pack(f"{order}H", length)
            body += value
            if undefined:
                body += sequence_end
        out += item_tag + struct.pack(f"{order}L", len(body)) + body
    data = bytes(out)
    return RawDataElement(tag, None if implicit else "SQ", len(data), data, 0, implicit, little)


def _set(ds: Dataset, elem: _Element) -> None:
    """Store a new public, non-pixel element (what ``Dataset.__setitem__`` ends in)."""
    elements(ds)[elem.tag] = elem


def _shallow(ds: _D) -> _D:
    """A copy of ``ds`` sharing its element dict, for ``_Run.walk`` to replace."""
    return shallow_copy(ds)


class _Run:
    """One dataset's de-identification: the patient, the shift and the scrubber.

    Copy-on-write: ``walk`` gives each dataset it visits a new element dict and leaves
    the old one, which may be the caller's, as it was. What is kept (most of a file,
    pixel data included) or removed is neither decoded nor copied: a raw element stays
    raw and is written out byte for byte. Only elements that change are decoded, into
    new elements; an element the caller had already decoded is copied before a change.
    """

    def __init__(
        self, vault: Vault, options: DicomOptions, pseudonym: str | None, known: Mapping[str, str]
    ) -> None:
        self.vault = vault
        self.options = options
        self.pseudonym = pseudonym
        self.known = dict(known)
        # Part of every cache key: a patient's known values grow as other feeds report more.
        self.known_key = tuple(sorted(self.known.items()))
        self.days = vault.date_shift_days(pseudonym) if pseudonym else None
        self.can_shift = options.retain_longitudinal_modified_dates and self.days is not None
        self.table = plan_table(options, self.can_shift)  # read directly on the hot path
        # The table's private row says C (keep if safe) under Retain Safe Private.
        self.keep_private = options.retain_safe_private and PRIVATE[COL["retain_safe_private"]] == C
        self.kept_private = False
        self.dummy_depth = 0  # how many enclosing sequences have D in the basic profile
        # Removed or replaced values, in walk order, as (kind, dataset, element as it
        # was); decoded only if there is text to clean.
        self.phi_sources: list[tuple[str, Dataset, _Element]] = []
        self.to_clean: list[DataElement] = []
        self.uids: dict[str, str] = {}  # keyed-hash UIDs of this object
        self.changes = 0  # elements removed or replaced so far (a sequence unchanged is kept raw)

    def plan(self, tag: int, vr: str) -> Plan:
        return plan_for(tag, vr, self.options, self.can_shift)

    # -- phi values for the scrubber -------------------------------------------------

    def collect_phi(self) -> dict[str, str]:
        """Values the profile removes or replaces, as scrubber phi values.

        A description that is cleaned rather than removed must not repeat a name or id
        that is removed elsewhere in the same object, so every such value is looked for,
        inside removed sequences too.
        """
        phi: dict[str, str] = {}

        def add(value: object, kind: str) -> None:
            for text in _strings(value):
                text = text.strip()
                if text:
                    phi.setdefault(text, kind)

        def visit(data: Dataset) -> None:
            for tag, raw in list(elements(data).items()):
                if tag.is_private or _skip_group(tag):
                    continue
                try:
                    vr = raw.VR if isinstance(raw, DataElement) else _raw_vr(raw)
                    if vr != "SQ" and not self.plan(int(tag), vr).phi:
                        continue  # nothing to learn: not decoded
                    elem = _peek(data, elements(data), tag)
                    if elem is None:
                        continue
                    if elem.VR == "SQ":
                        for item in elem.value or []:
                            visit(item)
                        continue
                    kind = self.plan(int(tag), elem.VR).phi
                    if kind:
                        add(elem.value, kind)
                except DeidError:
                    raise
                except Exception:
                    # pydicom's messages quote values, so the cause is not chained.
                    raise DeidError(f"cannot read {Tag(tag)}") from None

        for kind, data, source in self.phi_sources:
            try:
                elem = _peek(data, {source.tag: source}, source.tag)
                if elem is None:
                    continue
                if kind == "SQ":
                    for item in elem.value or []:
                        visit(item)
                else:
                    add(elem.value, kind)
            except DeidError:
                raise
            except Exception:
                raise DeidError(f"cannot read {Tag(source.tag)}") from None
        return phi

    def cleaner(self) -> _Cleaner:
        """The scrubber for this object's phi values (shared with objects that have the same)."""
        source_key = self._source_key()
        cleaner = _recent(source_key) if source_key is not None else None
        if cleaner is None:
            phi = {**self.known, **self.collect_phi()}  # the object's own kinds win
            phi_key = ("phi", *phi.items())
            cleaner = _recent(phi_key)
            if cleaner is None:
                cleaner = _Cleaner(phi)
                _remember(phi_key, cleaner)
            if source_key is not None:
                _remember(source_key, cleaner)
        return cleaner

    def _source_key(self) -> tuple[object, ...] | None:
        """The phi sources as raw bytes with what decodes them, or None if one is decoded
        already (then the values themselves are the key)."""
        parts: list[object] = ["raw", self.options, self.can_shift, self.known_key]
        size = 0
        for kind, data, source in self.phi_sources:
            charset = data.original_character_set
            if not isinstance(source, RawDataElement) or source.value is None or not charset:
                return None
            size += len(source.value)
            if size > _SOURCE_KEY_MAX_BYTES:
                return None
            charsets = tuple(charset) if not isinstance(charset, str) else charset
            parts.append((kind, int(source.tag), source.VR, source.value, charsets))
        return tuple(parts)

    def clean_pending(self) -> None:
        """Clean the descriptors the walk put aside, now that every phi value is known."""
        scrubber: _Cleaner | None = None
        for elem in self.to_clean:
            try:
                texts = _strings(elem.value)
                if not texts:
                    continue
                if scrubber is None:
                    # Only now: an object with nothing to clean decodes no removed value.
                    scrubber = self.cleaner()
                limit = values.TEXT_MAX[elem.VR]
                cleaned = []
                for text in texts:
                    out = scrubber.scrub(text, self.days)
                    cleaned.append(out if limit is None else out[:limit])
                _set_strings(elem, cleaned)
            except DeidError:
                raise
            except Exception as exc:
                # pydicom's messages quote values, so the cause is not chained.
                raise DeidError(f"cannot de-identify {Tag(elem.tag)}: {type(exc).__name__}") from None

    # -- the walk --------------------------------------------------------------------

    def walk(self, ds: Dataset) -> None:
        """Apply the profile to ``ds`` under a new element dict (see the class doc)."""
        old: _Elements = replace_elements(ds, {})
        encoding = ds.original_encoding
        for tag, elem in old.items():
            try:
                self.element(ds, old, tag, elem, encoding)
            except DeidError:
                raise
            except Exception as exc:
                # pydicom's messages quote values, so the cause is not chained.
                raise DeidError(f"cannot de-identify {Tag(tag)}: {type(exc).__name__}") from None

    def element(
        self, ds: Dataset, old: _Elements, tag: BaseTag, elem: _Element, encoding: tuple[object, object]
    ) -> None:
        new: _Elements = elements(ds)
        if tag >> 16 & 1:
            if self.keep_private and self._safe_private(ds, old, tag):
                new[tag] = elem
            else:
                self.changes += 1
            return
        if _skip_group(tag):
            # Group lengths go stale once anything changes; curves (50xx) and overlays
            # (60xx) go whole, since overlay data without its plane is not valid either.
            self.changes += 1
            return
        raw: RawDataElement | None = None
        if isinstance(elem, DataElement):
            vr = elem.VR
        elif elem.value is None and elem.length:
            # Deferred read (dcmread's defer_size): pydicom reads it from the file now,
            # while the copy still has the file name; the element is this copy's.
            new[tag] = elem
            elem = ds[tag]
            vr = elem.VR
        else:
            raw, vr = elem, _raw_vr(elem)
        plan = self.table.get((int(tag), vr)) or self.plan(int(tag), vr)
        action = plan.nested if self.dummy_depth else plan.action
        if plan.phi is not None:
            self.phi_sources.append((plan.phi, ds, elem))
        if (action == K and vr != "AS") or (action == SHIFT and vr == "TM"):
            # Kept; a whole-day shift leaves the time of day as it was.
            if vr in values.CHECKED_VRS and not _valid_kept(raw, elem, vr):
                self.replace_invalid(ds, tag, vr, raw, elem, encoding)
                return
            new[tag] = elem  # as it came: a raw element is written back byte for byte
            if raw is not None and not _same_encoding(raw, encoding):
                # Read in another encoding than the dataset says (SC_rgb_jpeg.dcm: implicit
                # VR under an explicit transfer syntax): only a decoded element can be written.
                ds[tag]
                self.changes += 1
            return
        if action != RECURSE:
            self.changes += 1
        if action == X:
            new.pop(tag, None)  # a deferred element was put there to be read
            return
        if len(vr) == 2 and vr != "UN":
            # A new element straight away; the old value is not decoded (Z, D) or read
            # from its bytes (U, dates).
            if action == Z or (action == D and vr != "UI"):
                new[tag] = _encoded(tag, vr, _empty_value(vr) if action == Z else _dummy_value(vr), encoding)
                return
            if raw is not None and action in (U, D) and vr == "UI":
                new[tag] = _encoded(tag, vr, self.uid_value(_raw_texts(raw)), encoding)
                return
            if raw is not None and action == SHIFT and vr in ("DA", "DT"):
                moved = self.shifted(vr, _raw_texts(raw))
                if moved:
                    new[tag] = _encoded(tag, vr, moved, encoding)
                    return
                # No date in it, or not a readable one: as below, through pydicom.
        if raw is not None:
            new[tag] = raw
            own = ds[tag]  # pydicom converts it into the new dict
            if vr != own.VR:  # ambiguous VR resolved: plan again
                plan = self.plan(int(tag), own.VR)
                action = plan.nested if self.dummy_depth else plan.action
        else:
            own = cast(DataElement, elem)
            if new.get(tag) is not own:
                # Decoded by the caller: theirs. Changed on a copy (a sequence's items too).
                shared, own = own, copy.copy(own)
                if own.VR == "SQ" and shared.value is not None:
                    own.value = Sequence([_shallow(item) for item in shared.value])
                new[tag] = own
        if action == RECURSE:
            before = self.changes
            self._recurse(ds, own)
            unchanged = self.changes == before
            if unchanged and raw is not None and _same_encoding(raw, encoding):
                # Nothing inside changed: the sequence is written back byte for byte
                # rather than item by item.
                new[tag] = raw
                return
            # Items of raw elements only (as read, or values of ours): encoded here in
            # one go, which costs far less than pydicom writing them one by one.
            new[tag] = _encode_sequence(tag, own, encoding) or own
            if not unchanged:
                self.changes += 1
            return
        self._handlers[action](self, ds, own)

    def replace_invalid(
        self,
        ds: Dataset,
        tag: BaseTag,
        vr: str,
        raw: RawDataElement | None,
        elem: _Element,
        encoding: tuple[object, object],
    ) -> None:
        """A kept value its VR does not allow (text in a time, a number, a code): what the
        basic profile does to the attribute when it removes anything, else a dummy. The
        value is not looked at again, nor decoded: it is no time, number or code, and may
        be a name."""
        self.changes += 1
        row = row_of(int(tag))
        action = pick(row[0]) if row is not None else D
        if action == X:
            elements(ds).pop(tag, None)
        elif action == Z:
            elements(ds)[tag] = _encoded(tag, vr, _empty_value(vr), encoding)
        elif vr == "UI":
            # A UID that is not one is hashed like any other replaced UID.
            texts = _raw_texts(raw) if raw is not None else _strings(cast(DataElement, elem).value)
            elements(ds)[tag] = _encoded(tag, vr, self.uid_value(texts), encoding)
        else:
            elements(ds)[tag] = _encoded(tag, vr, _dummy_value(vr), encoding)

    def _safe_private(self, ds: Dataset, old: _Elements, tag: BaseTag) -> bool:
        if tag.is_private_creator:
            # A creator stays if any element of its block stays.
            block = tag.element << 8
            keep = any(
                t >> 16 == tag.group and block <= (t & 0xFFFF) <= block + 0xFF
                for t in old
                if t.is_private and not t.is_private_creator and self._safe_private(ds, old, t)
            )
            return keep
        if tag.element < 0x1000:
            return False
        creator_elem = _peek(ds, old, (tag.group << 16) | (tag.element >> 8))
        creator = creator_elem.value if creator_elem is not None else None
        if not isinstance(creator, str) or not is_safe_private(creator, tag.group, tag.element):
            return False
        self.kept_private = True
        return True

    # -- the actions on an element of the new dict -------------------------------------

    def _remove(self, ds: Dataset, elem: DataElement) -> None:
        del ds[elem.tag]

    def _empty(self, ds: Dataset, elem: DataElement) -> None:
        elem.value = Sequence() if elem.VR == "SQ" else elem.empty_value

    def _dummy(self, ds: Dataset, elem: DataElement) -> None:
        vr = elem.VR
        if vr == "UI":
            self.uid(elem)
        elif vr in values.BINARY_VRS:
            elem.value = values.DUMMY_BINARY
        elif vr in values.DUMMY_BY_VR:
            elem.value = values.DUMMY_BY_VR[vr]
        else:
            elem.value = elem.empty_value

    def _keep(self, ds: Dataset, elem: DataElement) -> None:
        if elem.VR == "AS" and elem.value:
            _set_strings(elem, [values.generalise_age(v) for v in _strings(elem.value)])

    def _clean(self, ds: Dataset, elem: DataElement) -> None:
        # Put aside until the walk is over: the scrubber needs every removed value.
        self.to_clean.append(elem)

    def _uid(self, ds: Dataset, elem: DataElement) -> None:
        self.uid(elem)

    def uid(self, elem: DataElement) -> None:
        elem.value = self.uid_value(_strings(elem.value)) or elem.empty_value

    def uid_value(self, texts: list[str]) -> str | list[str]:
        """The keyed-hash UIDs for the UIDs in ``texts``; "" if there are none."""
        uids = []
        for value in texts:
            if value.strip("\x00 "):
                new = self.uids.get(value)
                if new is None:
                    new = self.uids[value] = values.uid_hash(self.vault, value)
                uids.append(new)
        return (uids[0] if len(uids) == 1 else uids) if uids else ""

    def shifted(self, vr: str, texts: list[str]) -> list[str] | None:
        """The DA or DT values moved by the patient's shift; None if one is not a date."""
        if self.days is None:
            return None
        shift = values.shift_da if vr == "DA" else values.shift_dt
        moved = [shift(v, self.days) for v in texts if v.strip()]
        return None if any(m is None for m in moved) else cast(list[str], moved)

    def _shift(self, ds: Dataset, elem: DataElement) -> None:
        if elem.VR == "TM" or self.days is None:
            # Whole-day shifts leave the time of day as it was.
            return
        moved = self.shifted(elem.VR, _strings(elem.value))
        if moved is not None:
            if moved:
                _set_strings(elem, moved)
            return
        # Not a readable date: fall back to what the profile does without the option.
        fallback = resolve_action(int(elem.tag), elem.VR, self.options, can_shift=False)
        self._handlers[fallback](self, ds, elem)

    def _recurse(self, ds: Dataset, elem: DataElement) -> None:
        replaced = self.plan(int(elem.tag), elem.VR).replaced
        self.dummy_depth += replaced
        try:
            for item in elem.value or []:
                self.walk(item)
        finally:
            self.dummy_depth -= replaced

    _handlers: ClassVar[dict[str, Callable[[_Run, Dataset, DataElement], None]]] = {
        X: _remove,
        Z: _empty,
        D: _dummy,
        K: _keep,
        C: _clean,
        U: _uid,
        SHIFT: _shift,
        RECURSE: _recurse,
    }


def _empty_value(vr: str) -> object:
    return Sequence() if vr == "SQ" else empty_value_for_VR(vr)


def _dummy_value(vr: str) -> object:
    if vr in values.BINARY_VRS:
        return values.DUMMY_BINARY
    return values.DUMMY_BY_VR[vr] if vr in values.DUMMY_BY_VR else empty_value_for_VR(vr)


def _skip_group(tag: int) -> bool:
    group, element = tag >> 16, tag & 0xFFFF
    return element == 0 or (group & 0xFF01) in (0x5000, 0x6000)


def _patient_key(ds: Dataset, authority: str) -> tuple[str, str] | None:
    patient_id = _peek(ds, elements(ds), _PATIENT_ID)
    value = str(patient_id.value or "").strip() if patient_id is not None else ""
    if not value:
        return None
    issuer = _peek(ds, elements(ds), _ISSUER)
    issuer_text = str(issuer.value or "").strip() if issuer is not None else ""
    return (issuer_text or authority, value)


def _stamp(out: Dataset, run: _Run, options: DicomOptions) -> None:
    """PatientID/Name := pseudonym, and record what was done (PS3.15 E.1.1 and CID 7050)."""
    pseudonym = run.pseudonym or ""
    _set(out, _new(_PATIENT_ID, "LO", pseudonym))
    _set(out, _new(_PATIENT_NAME, "PN", pseudonym))
    applied = ["basic"]
    if run.can_shift:
        applied.append("dates")
    if options.retain_patient_characteristics:
        applied.append("chars")
    if options.clean_descriptors:
        applied.append("desc")
    if run.kept_private:
        applied.append("private")
    elements(out).update(_method_elements(tuple(applied), out.original_encoding))


# (applied methods, encoding) -> the elements that record them, encoded once
_METHOD_ELEMENTS: dict[tuple[tuple[str, ...], tuple[object, object]], dict[BaseTag, _Element]] = {}


def _method_elements(applied: tuple[str, ...], encoding: tuple[object, object]) -> dict[BaseTag, _Element]:
    """PatientIdentityRemoved, the method and its code sequence (and the modified-dates flag).

    The same few elements go into every object: they are built once per set of methods
    and encoding as raw elements, which are immutable. pydicom decodes a raw element
    into the dataset that holds it when it is read, so no two results share an object.
    """
    cached = _METHOD_ELEMENTS.get((applied, encoding))
    if cached is not None:
        return cached
    ds = Dataset()
    _set(ds, _new(_IDENTITY_REMOVED, "CS", "YES"))
    if "dates" in applied:
        _set(ds, _new(_TEMPORAL_MODIFIED, "CS", "MODIFIED"))
    _set(ds, _new(_METHOD, "LO", [_METHOD_CODES[key][1][:64] for key in applied]))
    items = []
    for key in applied:
        item = Dataset()
        code, meaning = _METHOD_CODES[key]
        _set(item, _new(0x00080100, "SH", code))
        _set(item, _new(0x00080102, "SH", "DCM"))
        _set(item, _new(0x00080104, "LO", meaning))
        items.append(item)
    _set(ds, _new(_METHOD_CODE_SEQUENCE, "SQ", Sequence(items)))
    implicit, little = encoding
    if not isinstance(implicit, bool) or not isinstance(little, bool):
        return dict(elements(ds))  # not read from a file: fresh elements, not cached
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    raw = read_dataset(io.BytesIO(fp.getvalue()), implicit, little)
    cached = _METHOD_ELEMENTS[(applied, encoding)] = dict(elements(raw))
    return cached


def _meta(meta: FileMetaDataset, out: Dataset, run: _Run) -> FileMetaDataset:
    """The file meta of the copy: what a reader needs, with the new instance UID."""
    kept = _shallow(meta)
    replace_elements(kept, {tag: elem for tag, elem in elements(meta).items() if tag in _META_KEEP})
    sop_instance = elements(out).get(_SOP_INSTANCE_UID)  # type: ignore[call-overload]
    if sop_instance is not None:
        if isinstance(sop_instance, DataElement):
            uid = sop_instance.value
        else:
            uid = "\\".join(_raw_texts(sop_instance))
        # The file meta is always explicit VR little endian (PS3.10 7.1).
        _set(kept, _encoded(BaseTag(_MEDIA_SOP_INSTANCE_UID), "UI", uid, (False, True)))
    else:
        media = _peek(kept, elements(kept), _MEDIA_SOP_INSTANCE_UID)
        if media is not None:
            media = copy.copy(media)
            run.uid(media)
            _set(kept, media)
    return kept


_DEFAULT_OPTIONS: Final = DicomOptions()


def deidentify_dataset(
    ds: Dataset,
    vault: Vault,
    options: DicomOptions = _DEFAULT_OPTIONS,
    *,
    authority: str = "",
    known: Mapping[str, str] | None = None,
) -> DicomDeidResult:
    """A de-identified copy of ``ds``; see the module doc for the rules. ``known``: value ->
    phi kind, what is known about this object's patient from elsewhere (other messages),
    for cleaning descriptions.

    Raises DeidError (naming the tag, never a value) when an attribute cannot be handled.
    """
    if not isinstance(ds, Dataset):
        raise DeidError("deidentify_dataset needs a pydicom Dataset")
    if not isinstance(options, DicomOptions):
        raise DeidError("options must be DicomOptions")
    try:
        key = _patient_key(ds, authority)
    except Exception:
        raise DeidError("cannot read (0010,0020) Patient ID or (0010,0021) Issuer of Patient ID") from None
    pseudonym = vault.pseudonym(*key) if key else None
    run = _Run(vault, options, pseudonym, known or {})
    try:
        out = _shallow(ds)
    except Exception:
        raise DeidError("dataset cannot be copied") from None
    run.walk(out)
    run.clean_pending()
    # The attributes it reads (pixel data, modality, SOP class, the flag) are kept as
    # they were, so asking the copy is asking the input, without decoding the input.
    quarantined = None if options.allow_burned_in else burned_in_risk(out)
    _stamp(out, run, options)
    meta = file_meta(ds)
    if isinstance(meta, FileMetaDataset):
        out.file_meta = _meta(meta, out, run)
    if isinstance(out, pydicom.FileDataset):
        # The file name and preamble are not data elements but travel with the object;
        # both can name the patient (and a preamble can hold a whole TIFF header).
        out.filename = None
        out.preamble = b"\x00" * 128
    return DicomDeidResult(dataset=out, patient=pseudonym, quarantined=quarantined)
