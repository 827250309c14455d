"""One DICOM instance -> FHIR R4 ImagingStudy (plus a Patient stub): a pure function.

An instance carries its whole study header, so each instance maps to the study's
ImagingStudy holding the one series and the one instance it belongs to. The ImagingStudy
id derives from the StudyInstanceUID alone, so every instance of a study maps to the same
resource; putting the series and instances of successive instances together is
``merge_studies``' job (the pipeline merges with what it stored before, see
docs/intake.md). The Patient stub id derives from (issuer, PatientID) exactly like the
HL7 mapper's Patient id from PID-3, so both routes name the same Patient.

Like ``map_message``, the result carries the patient key and every identifying value of
the header (names, ids, UIDs, birth date, addresses...) so that ``deid.deidentify`` can
pseudonymise, shift and check for leaks. Errors name tags, never values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from core.errors import MappingError
from core.fhir import FhirValidationError, validate_resource
from mapping import ids
from mapping.model import PatientKey

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
UID_SYSTEM = "urn:dicom:uid"
SOP_CLASS_SYSTEM = "urn:ietf:rfc:3986"
ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
_SEX = {"M": "male", "F": "female", "O": "other"}
_UID = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")
_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
_TM = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?")
_OFFSET = re.compile(r"([+-])(\d{2})(\d{2})")

# Attributes whose values identify someone: reported to de-identification (kind per
# deid.policy.PHI_KINDS) so they are scrubbed from text and checked for leaks.
_PHI_KEYWORDS: dict[str, str] = {
    "PatientID": "ID",
    "IssuerOfPatientID": "ID",
    "OtherPatientIDs": "ID",
    "AccessionNumber": "ID",
    "StudyID": "ID",
    "StudyInstanceUID": "ID",
    "SeriesInstanceUID": "ID",
    "SOPInstanceUID": "ID",
    "FrameOfReferenceUID": "ID",
    "MedicalRecordLocator": "ID",
    "PatientBirthDate": "DATE",
    "PatientAddress": "ADDRESS",
    "PatientTelephoneNumbers": "PHONE",
}
# Where the images were made: removed from the object and scrubbed from FHIR text, but not
# about a person, and often part of kept vendor strings (an institution "TOSHIBA" inside
# Manufacturer "TOSHIBA_MEC"), so not searched for in the de-identified object.
_SITE_KEYWORDS: dict[str, str] = {
    "InstitutionAddress": "ADDRESS",
    "InstitutionName": "NAME",
    "StationName": "NAME",
    "DeviceSerialNumber": "ID",
}


@dataclass(frozen=True)
class MappedStudy:
    resources: list[dict[str, Any]]
    """[Patient stub, ImagingStudy] (no stub when the instance has no PatientID)."""
    patient_keys: dict[str, PatientKey]
    phi_values: dict[str, str]
    """Identified data: never log it."""
    modality: str
    site_values: frozenset[str] = frozenset()
    """The values of ``phi_values`` that name the site or device, not a person."""

    @property
    def study(self) -> dict[str, Any]:
        return self.resources[-1]

    def __repr__(self) -> str:
        return f"MappedStudy(resources={len(self.resources)}, modality={self.modality!r})"


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception as exc:
        raise MappingError(f"DICOM {keyword} cannot be read") from exc
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value).strip(" \x00")
    return str(value).strip(" \x00")


def _int(ds: Dataset, keyword: str) -> int | None:
    text = _text(ds, keyword)
    try:
        return int(text) if text else None
    except ValueError:
        return None  # an IS we cannot read is left out, not guessed


def _uid(ds: Dataset, keyword: str, *, required: bool) -> str:
    uid = _text(ds, keyword)
    if uid and not (_UID.fullmatch(uid) and len(uid) <= 64):
        raise MappingError(f"DICOM {keyword} is not a valid UID")
    if required and not uid:
        raise MappingError(f"DICOM {keyword} is missing")
    return uid


def _zone(ds: Dataset, default_timezone: str) -> tzinfo:
    offset = _OFFSET.fullmatch(_text(ds, "TimezoneOffsetFromUTC"))
    if offset:
        sign = -1 if offset[1] == "-" else 1
        return timezone(sign * timedelta(hours=int(offset[2]), minutes=int(offset[3])))
    try:
        return ZoneInfo(default_timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise MappingError("site timezone is not a known IANA zone") from exc


def fhir_datetime(da: str, tm: str, zone: tzinfo) -> str | None:
    """DICOM DA (+ TM) -> FHIR date or dateTime (with the offset FHIR requires); None if unreadable."""
    day = _DA.fullmatch(da.strip())
    if day is None:
        return None
    try:
        date = datetime(int(day[1]), int(day[2]), int(day[3]))
    except ValueError:
        return None
    time = _TM.fullmatch(tm.strip()) if tm.strip() else None
    if time is None:
        return date.date().isoformat()
    hour, minute, second = int(time[1]), int(time[2] or 0), int(time[3] or 0)
    if hour > 23 or minute > 59 or second > 59:
        return date.date().isoformat()
    local = date.replace(hour=hour, minute=minute, second=second, tzinfo=zone)
    return local.isoformat()


def _coding(system: str, code: str) -> dict[str, str] | None:
    return {"system": system, "code": code} if code else None


def _prune(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v not in (None, "", [], {})}


def patient_key(ds: Dataset, authority: str) -> PatientKey | None:
    """(IssuerOfPatientID, else the feed's configured authority; PatientID), as deid.dicom keys it."""
    value = _text(ds, "PatientID")
    if not value:
        return None
    return PatientKey(authority=_text(ds, "IssuerOfPatientID") or authority, value=value)


def _values(ds: Dataset, keywords: dict[str, str]) -> dict[str, str]:
    phi: dict[str, str] = {}
    for keyword, kind in keywords.items():
        for part in _text(ds, keyword).split("\\"):
            if part.strip():
                phi[part.strip()] = kind
    return phi


def _phi_values(ds: Dataset) -> dict[str, str]:
    phi = _values(ds, _PHI_KEYWORDS)
    # Every person name at the top level (patient, referrer, operators, performers...).
    for element in ds.iterall():
        if element.VR == "PN" and element.value:
            values = element.value if element.VM > 1 else [element.value]
            for name in values:
                text = str(name).strip(" \x00")
                for part in [text, *re.split(r"[\^=]+", text)]:
                    if len(part.strip()) > 1:
                        phi[part.strip()] = "NAME"
    return phi


def map_dataset(ds: Dataset, *, authority: str = "", default_timezone: str = "UTC") -> MappedStudy:
    """One instance -> [Patient stub, ImagingStudy]; raises MappingError (naming tags only)."""
    if not isinstance(ds, Dataset):
        raise MappingError("map_dataset needs a pydicom Dataset")
    study_uid = _uid(ds, "StudyInstanceUID", required=True)
    series_uid = _uid(ds, "SeriesInstanceUID", required=True)
    sop_uid = _uid(ds, "SOPInstanceUID", required=True)
    sop_class = _uid(ds, "SOPClassUID", required=True)
    zone = _zone(ds, default_timezone)
    modality = _text(ds, "Modality")

    key = patient_key(ds, authority)
    resources: list[dict[str, Any]] = []
    keys: dict[str, PatientKey] = {}
    subject = None
    if key is not None:
        patient_id = ids.resource_id("Patient", key.authority, key.value)
        keys[patient_id] = key
        subject = ids.reference("Patient", patient_id)
        name = _text(ds, "PatientName")
        resources.append(
            _prune(
                {
                    "resourceType": "Patient",
                    "id": patient_id,
                    "identifier": [
                        _prune(
                            {
                                "value": key.value,
                                "assigner": {"display": key.authority} if key.authority else None,
                            }
                        )
                    ],
                    "name": [{"text": name}] if name else None,
                    "gender": _SEX.get(_text(ds, "PatientSex").upper()),
                    "birthDate": fhir_datetime(_text(ds, "PatientBirthDate"), "", zone),
                }
            )
        )

    instance = _prune(
        {
            "uid": sop_uid,
            "sopClass": {"system": SOP_CLASS_SYSTEM, "code": f"urn:oid:{sop_class}"},
            "number": _int(ds, "InstanceNumber"),
        }
    )
    series = _prune(
        {
            "uid": series_uid,
            "number": _int(ds, "SeriesNumber"),
            "modality": _coding(DCM_SYSTEM, modality) or {"system": DCM_SYSTEM, "code": "OT"},
            "description": _text(ds, "SeriesDescription"),
            "numberOfInstances": 1,
            "bodySite": _prune({"display": _text(ds, "BodyPartExamined")}) or None,
            "started": fhir_datetime(_text(ds, "SeriesDate"), _text(ds, "SeriesTime"), zone),
            "instance": [instance],
        }
    )
    accession = _text(ds, "AccessionNumber")
    referrer = _text(ds, "ReferringPhysicianName")
    study = _prune(
        {
            "resourceType": "ImagingStudy",
            "id": ids.resource_id("ImagingStudy", study_uid),
            "identifier": [
                {"system": UID_SYSTEM, "value": f"urn:oid:{study_uid}"},
                *([{"type": ACSN, "value": accession}] if accession else []),
            ],
            "status": "available",
            "modality": [series["modality"]],
            "subject": subject or {"display": "unknown patient"},
            "started": fhir_datetime(_text(ds, "StudyDate"), _text(ds, "StudyTime"), zone),
            "referrer": {"display": referrer} if referrer else None,
            "numberOfSeries": 1,
            "numberOfInstances": 1,
            "description": _text(ds, "StudyDescription"),
            "series": [series],
        }
    )
    resources.append(study)
    for resource in resources:
        try:
            validate_resource(resource)
        except FhirValidationError as exc:
            raise MappingError(f"{resource['resourceType']} does not validate: {exc}") from exc
    site = _values(ds, _SITE_KEYWORDS)
    people = _phi_values(ds)
    return MappedStudy(resources, keys, site | people, modality, frozenset(site.keys() - people.keys()))


def _by_uid(items: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(item.get("uid")): item for item in items}


def _order(item: dict[str, Any]) -> tuple[int, str]:
    number = item.get("number")
    return (number if isinstance(number, int) else 2**31, str(item.get("uid")))


def merge_studies(stored: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The study as known so far: ``new``'s study-level fields, the series and instances of both.

    Order-independent (series and instances sorted by number, then UID), so instances
    arriving in any order, or again, give the same resource; the stored version is only
    rewritten when something changed. Works on identified or de-identified resources alike
    (both sides must come from the same side of the line).
    """
    if stored is None or stored.get("id") != new.get("id"):
        return new
    series = _by_uid(stored.get("series", []))
    for incoming in new.get("series", []):
        uid = str(incoming.get("uid"))
        old = series.get(uid)
        instances = _by_uid(old.get("instance", [])) if old else {}
        instances.update(_by_uid(incoming.get("instance", [])))
        merged = {**(old or {}), **incoming}
        merged["instance"] = sorted(instances.values(), key=_order)
        merged["numberOfInstances"] = len(instances)
        series[uid] = merged
    ordered = sorted(series.values(), key=_order)
    modalities = {(m.get("system"), m.get("code")): m for m in stored.get("modality", [])}
    modalities.update({(m.get("system"), m.get("code")): m for m in new.get("modality", [])})
    out = {k: v for k, v in new.items() if k != "meta"}
    if "meta" in stored or "meta" in new:
        out["meta"] = new.get("meta", stored.get("meta"))
    out["series"] = ordered
    out["modality"] = sorted(modalities.values(), key=lambda m: str(m.get("code")))
    out["numberOfSeries"] = len(ordered)
    out["numberOfInstances"] = sum(len(s.get("instance", [])) for s in ordered)
    return out
