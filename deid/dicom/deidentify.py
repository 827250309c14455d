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
  removes or replaces as a known identifier (names, ids, dates, addresses...). Cleaning a
  sequence means applying the profile inside it; a non-text value falls back to the
  basic action.
- Inside a sequence whose basic action is D (Content Sequence, Graphic Annotation
  Sequence...), unlisted free text (an SR Text Value) is cleaned, unlisted names replaced.
- Curve (50xx) and overlay (60xx) groups are removed whole: overlay data is X, and an
  overlay plane without its data is not valid. Group lengths are removed (stale).
- AS values that are kept are pooled above 89 years ("090Y", as HIPAA Safe Harbor does).
- The file meta keeps only what a reader needs; the file name and the 128-byte preamble
  (which can hold a TIFF header) of a ``FileDataset`` are reset.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final, TypeVar

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from core.errors import DeidError

from ..scrub import Scrubber
from ..vault import Vault
from . import values
from .private import is_safe_private
from .profile_table import ACTIONS, OPTION_COLUMNS, PRIVATE, RANGES

__all__ = ["DicomDeidResult", "DicomOptions", "burned_in_risk", "deidentify_dataset", "resolve_action"]


@dataclass(frozen=True)
class DicomOptions:
    """Which PS3.15 options apply on top of the Basic Profile."""

    retain_longitudinal_modified_dates: bool = True
    """Shift dates by the patient's vault shift instead of removing them."""
    retain_patient_characteristics: bool = False
    """Keep sex, age (over 89 pooled to 090Y), size, weight, smoking and pregnancy status..."""
    clean_descriptors: bool = True
    """Descriptions through the text scrubber instead of removal where the table says C."""
    retain_safe_private: bool = False
    """Keep private attributes on ``private.SAFE_PRIVATE``; all others are removed anyway."""
    allow_burned_in: bool = False
    """Site rule: release images that may carry burned-in text (see ``burned_in_risk``)."""


@dataclass(frozen=True)
class DicomDeidResult:
    dataset: Dataset
    """The de-identified copy; the input is untouched."""
    patient: str | None
    """The patient's pseudonym; None when the dataset has no PatientID."""
    quarantined: str | None
    """Why the image must not leave (burned-in text risk); then ``dataset`` is not for release."""


# Resolved actions. SHIFT = move the date by the patient's offset; RECURSE = keep a
# sequence and apply the profile to its items.
X, Z, D, K, C, U, SHIFT, RECURSE = "X", "Z", "D", "K", "C", "U", "SHIFT", "RECURSE"

_COL = {name: i + 1 for i, name in enumerate(OPTION_COLUMNS)}
_TEXT_VRS: Final = frozenset(values.TEXT_MAX)
_DATE_VRS: Final = frozenset({"DA", "DT", "TM"})
_FREE_TEXT_VRS: Final = frozenset({"ST", "LT", "UT", "UC"})
_PATIENT_ID = 0x00100020
_ISSUER = 0x00100021
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


def _row(tag: int) -> tuple[str, ...] | None:
    row = ACTIONS.get(tag)
    if row is not None:
        return row
    for mask, value, codes in RANGES:
        if tag & mask == value:
            return codes
    return None


def _pick(code: str) -> str:
    """One action out of a (possibly combined) basic-profile code; see the module doc."""
    choices = code.split("/")
    for choice in ("U*", D, Z, X, K, C, U):
        if choice in choices:
            return RECURSE if choice == "U*" else choice
    raise DeidError(f"unknown profile action code {code!r}")


def resolve_action(tag: int, vr: str, options: DicomOptions, *, can_shift: bool) -> str:
    """The action for a public attribute: X, Z, D, K, C, U, SHIFT or RECURSE.

    ``can_shift``: the patient has a date shift and the modified-dates option is on.
    Option columns override the basic profile; among enabled options a K for patient
    characteristics comes first, then date modification, then description cleaning.
    """
    row = _row(tag)
    if row is None:
        return RECURSE if vr == "SQ" else K
    chars = row[_COL["retain_patient_chars"]] if options.retain_patient_characteristics else ""
    dates = row[_COL["retain_long_modif_dates"]]
    desc = row[_COL["clean_desc"]] if options.clean_descriptors else ""
    if chars == K:
        action = K
    elif dates == C and options.retain_longitudinal_modified_dates and can_shift and vr in _DATE_VRS:
        action = SHIFT
    elif C in (chars, desc):
        action = C
    else:
        action = _pick(row[0])
    if vr == "SQ":
        # A sequence is never "dummied" or "cleaned" as a whole: its items go through
        # the profile. Z empties it; X removes it.
        return action if action in (X, Z) else RECURSE
    if action == C and vr in _DATE_VRS:
        return SHIFT if can_shift else _pick(row[0])
    if action == C and vr not in _TEXT_VRS:
        # Nothing to clean in a number or a binary blob (Exif maker notes): the basic
        # action applies.
        action = _pick(row[0])
    if action == U and vr != "UI":
        return D
    if action == SHIFT and vr not in _DATE_VRS:
        return _pick(row[0])
    return action


def burned_in_risk(ds: Dataset) -> str | None:
    """Why the pixels may carry burned-in identifying text, or None.

    BurnedInAnnotation (0028,0301) "YES" is a risk for any image; for modalities and SOP
    classes that usually carry text, anything but an explicit "NO" (missing too) is.
    """
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation (0028,0301) is YES"
    if flag == "NO" or not any(tag in ds for tag in _PIXEL_TAGS):
        return None
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if modality in _BURNED_IN_MODALITIES:
        return f"Modality (0008,0060) {modality} often has burned-in text and (0028,0301) is not NO"
    if sop_class.startswith(_BURNED_IN_SOP_PREFIXES):
        return "SOP Class (0008,0016) often has burned-in text and (0028,0301) is not NO"
    return None


def _strings(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def _set_strings(elem: DataElement, items: list[str]) -> None:
    elem.value = items[0] if len(items) == 1 else items


class _Run:
    """One dataset's de-identification: the patient, the shift and the scrubber."""

    def __init__(self, vault: Vault, options: DicomOptions, pseudonym: str | None) -> None:
        self.vault = vault
        self.options = options
        self.pseudonym = pseudonym
        self.days = vault.date_shift_days(pseudonym) if pseudonym else None
        self.can_shift = options.retain_longitudinal_modified_dates and self.days is not None
        self.scrubber = Scrubber({})
        self.kept_private = False
        self.dummy_depth = 0  # how many enclosing sequences have D in the basic profile

    def action(self, elem: DataElement) -> str:
        return resolve_action(int(elem.tag), elem.VR, self.options, can_shift=self.can_shift)

    # -- phi values for the scrubber -------------------------------------------------

    def collect_phi(self, ds: Dataset) -> dict[str, str]:
        """Values the profile removes or replaces, as scrubber phi values.

        A description that is cleaned rather than removed must not repeat a name or id
        that is removed elsewhere in the same object, so every such value is looked for.
        """
        phi: dict[str, str] = {}

        def visit(data: Dataset) -> None:
            for tag in list(data.keys()):
                if tag.is_private or _skip_group(tag):
                    continue
                try:
                    elem = data[tag]
                    if elem.VR == "SQ":
                        for item in elem.value or []:
                            visit(item)
                        continue
                    kind = _phi_kind(elem, self.action(elem))
                    texts = _strings(elem.value) if kind else []
                except DeidError:
                    raise
                except Exception:
                    # pydicom's messages quote values, so the cause is not chained.
                    raise DeidError(f"cannot read {Tag(tag)}") from None
                for text in texts:
                    text = text.strip()
                    if text and kind:
                        phi.setdefault(text, kind)

        visit(ds)
        return phi

    # -- the walk --------------------------------------------------------------------

    def walk(self, ds: Dataset) -> None:
        for tag in list(ds.keys()):
            try:
                self.element(ds, tag)
            except DeidError:
                raise
            except Exception as exc:
                # pydicom's messages quote values, so the cause is not chained.
                raise DeidError(f"cannot de-identify {Tag(tag)}: {type(exc).__name__}") from None

    def element(self, ds: Dataset, tag: BaseTag) -> None:
        if tag.is_private:
            # The table's private row says C (keep if safe) under Retain Safe Private.
            safe_option = self.options.retain_safe_private and PRIVATE[_COL["retain_safe_private"]] == C
            if not (safe_option and self._safe_private(ds, tag)):
                del ds[tag]
            return
        if _skip_group(tag):
            # Group lengths go stale once anything changes; curves (50xx) and overlays
            # (60xx) go whole, since overlay data without its plane is not valid either.
            del ds[tag]
            return
        elem = ds[tag]
        action = self.action(elem)
        if action == K and self.dummy_depth and _row(int(tag)) is None:
            # Inside a sequence the profile says to replace (D: Content Sequence, Graphic
            # Annotation Sequence...), unlisted free text such as an SR Text Value
            # (0040,A160) is report prose: cleaned like a descriptor, or replaced.
            if elem.VR in _FREE_TEXT_VRS:
                action = C if self.options.clean_descriptors else D
            elif elem.VR == "PN":
                action = D
        self._handlers[action](self, ds, elem)

    def _safe_private(self, ds: Dataset, tag: BaseTag) -> bool:
        if tag.is_private_creator:
            # A creator stays if any element of its block stays.
            block = tag.element << 8
            keep = any(
                int(t) >> 16 == tag.group and block <= (int(t) & 0xFFFF) <= block + 0xFF
                for t in ds.keys()  # noqa: SIM118 - iterating a Dataset yields elements, not tags
                if t.is_private and not t.is_private_creator and self._safe_private(ds, t)
            )
            return keep
        creator_tag = Tag(tag.group, tag.element >> 8)
        if tag.element < 0x1000 or creator_tag not in ds:
            return False
        creator = ds[creator_tag].value
        if not isinstance(creator, str) or not is_safe_private(creator, tag.group, tag.element):
            return False
        self.kept_private = True
        return True

    def _remove(self, ds: Dataset, elem: DataElement) -> None:
        del ds[elem.tag]

    def _empty(self, ds: Dataset, elem: DataElement) -> None:
        elem.value = Sequence() if elem.VR == "SQ" else elem.empty_value

    def _dummy(self, ds: Dataset, elem: DataElement) -> None:
        vr = elem.VR
        if vr == "UI":
            self._uid(ds, elem)
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
        limit = values.TEXT_MAX[elem.VR]
        cleaned = []
        for text in _strings(elem.value):
            out = self.scrubber.scrub(text, self.days)
            cleaned.append(out if limit is None else out[:limit])
        if cleaned:
            _set_strings(elem, cleaned)

    def _uid(self, ds: Dataset, elem: DataElement) -> None:
        self.uid(elem)

    def uid(self, elem: DataElement) -> None:
        uids = [values.uid_hash(self.vault, v) for v in _strings(elem.value) if v.strip("\x00 ")]
        elem.value = (uids[0] if len(uids) == 1 else uids) if uids else elem.empty_value

    def _shift(self, ds: Dataset, elem: DataElement) -> None:
        if elem.VR == "TM" or self.days is None:
            # Whole-day shifts leave the time of day as it was.
            return
        shift = values.shift_da if elem.VR == "DA" else values.shift_dt
        moved = [shift(v, self.days) for v in _strings(elem.value) if v.strip()]
        if all(m is not None for m in moved):
            if moved:
                _set_strings(elem, [m for m in moved if m is not None])
            return
        # Not a readable date: fall back to what the profile does without the option.
        fallback = resolve_action(int(elem.tag), elem.VR, self.options, can_shift=False)
        self._handlers[fallback](self, ds, elem)

    def _recurse(self, ds: Dataset, elem: DataElement) -> None:
        row = _row(int(elem.tag))
        replaced = row is not None and D in row[0].split("/")
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


_D = TypeVar("_D", bound=Dataset)


def _clone(ds: _D) -> _D:
    """A copy of ``ds`` that de-identification can change without touching ``ds``.

    ``copy.deepcopy`` took two thirds of the run time. This copies only what the walk may
    change in place: the element dicts and the sequences. Values are shared, which is
    safe because the walk only ever assigns new values to its own elements; not-yet-read
    raw elements (immutable tuples) are shared and parsed on first access.
    """
    out = copy.copy(ds)  # keeps the encoding, preamble, file name... as attributes
    out._dict = {}
    out._private_blocks = {}
    meta = ds.__dict__.get("file_meta")  # any Dataset may carry one, not only FileDataset
    if isinstance(meta, FileMetaDataset):
        out.file_meta = _clone(meta)
    for tag in ds.keys():  # noqa: SIM118 - a Dataset iterates over converted elements
        elem = ds.get_item(tag)
        if isinstance(elem, DataElement):
            new = copy.copy(elem)
            if elem.VR == "SQ" and elem.value is not None:
                new.value = Sequence([_clone(item) for item in elem.value])
            out[tag] = new
        else:
            out[tag] = elem
    return out


def _skip_group(tag: int) -> bool:
    group, element = tag >> 16, tag & 0xFFFF
    return element == 0 or (group & 0xFF01) in (0x5000, 0x6000)


def _phi_kind(elem: DataElement, action: str) -> str | None:
    if action in (K, C, SHIFT, RECURSE, U):
        return None
    if elem.VR == "PN":
        return "NAME"
    if elem.VR in ("DA", "DT"):
        return "DATE"
    # CS is left out: coded values ("M", "ALTERED") are vocabulary, not identifiers, and
    # would only blank ordinary words in descriptions.
    if elem.VR in _TEXT_VRS or elem.VR in ("AE", "UR"):
        keyword = elem.keyword.lower()
        if "telephone" in keyword or "telecom" in keyword:
            return "PHONE"
        if "address" in keyword:
            return "ADDRESS"
        return "ID"
    return None


def _patient_key(ds: Dataset, authority: str) -> tuple[str, str] | None:
    patient_id = ds.get(_PATIENT_ID)
    value = str(patient_id.value or "").strip() if patient_id is not None else ""
    if not value:
        return None
    issuer = ds.get(_ISSUER)
    issuer_text = str(issuer.value or "").strip() if issuer is not None else ""
    return (issuer_text or authority, value)


def _stamp(out: Dataset, run: _Run, options: DicomOptions) -> None:
    """PatientID/Name := pseudonym, and record what was done (PS3.15 E.1.1 and CID 7050)."""
    pseudonym = run.pseudonym or ""
    out.PatientID = pseudonym
    out.PatientName = pseudonym
    out.PatientIdentityRemoved = "YES"
    applied = ["basic"]
    if run.can_shift:
        applied.append("dates")
        out.LongitudinalTemporalInformationModified = "MODIFIED"
    if options.retain_patient_characteristics:
        applied.append("chars")
    if options.clean_descriptors:
        applied.append("desc")
    if run.kept_private:
        applied.append("private")
    out.DeidentificationMethod = [_METHOD_CODES[key][1][:64] for key in applied]
    codes = Sequence()
    for key in applied:
        item = Dataset()
        item.CodeValue, item.CodeMeaning = _METHOD_CODES[key]
        item.CodingSchemeDesignator = "DCM"
        codes.append(item)
    out.DeidentificationMethodCodeSequence = codes


def _sync_meta(out: Dataset, run: _Run) -> None:
    meta = getattr(out, "file_meta", None)
    if not isinstance(meta, FileMetaDataset):
        return
    for tag in list(meta.keys()):
        if int(tag) not in _META_KEEP:
            del meta[tag]
    if _SOP_INSTANCE_UID in out:
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    elif _MEDIA_SOP_INSTANCE_UID in meta:
        run.uid(meta[_MEDIA_SOP_INSTANCE_UID])


_DEFAULT_OPTIONS: Final = DicomOptions()


def deidentify_dataset(
    ds: Dataset, vault: Vault, options: DicomOptions = _DEFAULT_OPTIONS, *, authority: str = ""
) -> DicomDeidResult:
    """A de-identified copy of ``ds``; see the module doc for the rules.

    Raises DeidError (naming the tag, never a value) when an attribute cannot be handled.
    """
    if not isinstance(ds, Dataset):
        raise DeidError("deidentify_dataset needs a pydicom Dataset")
    if not isinstance(options, DicomOptions):
        raise DeidError("options must be DicomOptions")
    try:
        out = _clone(ds)
    except Exception:
        raise DeidError("dataset cannot be copied") from None
    try:
        key = _patient_key(out, authority)
    except Exception:
        raise DeidError("cannot read (0010,0020) Patient ID or (0010,0021) Issuer of Patient ID") from None
    pseudonym = vault.pseudonym(*key) if key else None
    run = _Run(vault, options, pseudonym)
    run.scrubber = Scrubber(run.collect_phi(out))
    quarantined = None if options.allow_burned_in else burned_in_risk(out)

    run.walk(out)
    _stamp(out, run, options)
    _sync_meta(out, run)
    if isinstance(out, pydicom.FileDataset):
        # The file name and preamble are not data elements but travel with the object;
        # both can name the patient (and a preamble can hold a whole TIFF header).
        out.filename = None
        out.preamble = b"\x00" * 128
    return DicomDeidResult(dataset=out, patient=pseudonym, quarantined=quarantined)
