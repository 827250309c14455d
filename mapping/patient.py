"""PID -> Patient (IG PID[Patient]), shared by every message type that carries a PID."""

from __future__ import annotations

from mapping import ids, people_vocab, vocab
from mapping.context import Context, PatientRef
from mapping.hl7.datatypes import (
    Json,
    authority,
    cx_identifier,
    distinct,
    resource,
    xad_address,
    xpn_name,
    xtn_contact,
)
from mapping.hl7.dtm import to_date, to_date_time
from mapping.hl7.parse import Composite, Segment
from mapping.model import PatientKey


def primary_key(pid: Segment) -> PatientKey | None:
    """The identifier a Patient id derives from: the PID-3 repetition typed MR, else the first
    PID-3 with a value; failing that PID-2, then PID-4 (both pre-v2.5 habits). None when the
    PID identifies nobody (see ``ids.scoped_key``)."""
    candidates = [cx for cx in pid.repetitions(3) if cx.get(1)]
    chosen: Composite | None = next((cx for cx in candidates if cx.get(5).upper() == "MR"), None)
    if chosen is None and candidates:
        chosen = candidates[0]
    if chosen is None:
        for field_no in (2, 4):
            cx = pid.first(field_no)
            if cx.get(1):
                chosen = cx
                break
    if chosen is None:
        return None
    return PatientKey(authority=authority(chosen), value=chosen.get(1))


def _identifiers(pid: Segment, ctx: Context) -> list[Json]:
    return distinct(pid, (2, 3, 4), lambda cx: cx_identifier(cx, ctx.zone))  # IG: identifier[1..3]


def _names(pid: Segment, ctx: Context) -> list[Json]:
    names = []
    for field_no in (5, 9):  # PID-9 (alias) is IG name[2]
        for xpn in pid.repetitions(field_no):
            name = xpn_name(xpn, ctx.zone)
            if name is not None:
                names.append(name)
    return names


def _telecoms(pid: Segment) -> list[Json]:
    telecoms = []
    for field_no, default_use in ((13, "home"), (14, "work")):
        for xtn in pid.repetitions(field_no):
            contact = xtn_contact(xtn, default_use)
            if contact is not None and contact not in telecoms:
                telecoms.append(contact)
    return telecoms


def _deceased(pid: Segment, ctx: Context) -> Json:
    death = to_date_time(pid.value(29), ctx.zone)
    if death:
        return {"deceasedDateTime": death}
    indicator = vocab.YES_NO.get(pid.value(30).upper())
    return {} if indicator is None else {"deceasedBoolean": indicator}


# Top-level elements and the PID fields they come from: an explicit null in one of them,
# with nothing else mapped to the element, deletes the stored value (mapping.updates).
# Identifiers are not among them: PID-3 names the patient.
_SOURCES = {
    "name": (5, 9),
    "birthDate": (7,),
    "gender": (8,),
    "address": (11,),
    "telecom": (13, 14),
    "deceased": (29, 30),
    "communication": (15,),
    "maritalStatus": (16,),
}


RELIGION_EXTENSION = "http://hl7.org/fhir/StructureDefinition/patient-religion"


def _language_marital_religion(pid: Segment) -> Json:
    """PID-15 -> communication.language, PID-16 -> maritalStatus, PID-17 -> the patient-religion
    extension (IG PID[Patient] with its PrimaryLanguage, MaritalStatus and Religion maps)."""
    language = people_vocab.language_concept(pid.first(15))
    religion = people_vocab.translated_concept(pid.first(17), people_vocab.RELIGION, "HL70006")
    return {
        "communication": [{"language": language}] if language is not None else [],
        "maritalStatus": people_vocab.translated_concept(
            pid.first(16), people_vocab.MARITAL_STATUS, "HL70002"
        ),
        "extension": [{"url": RELIGION_EXTENSION, "valueCodeableConcept": religion}] if religion else [],
    }


def map_pid(pid: Segment, ctx: Context) -> PatientRef:
    """Add the Patient for ``pid`` (once per message) and return what later segments refer to."""
    # No identifier: a patient scoped to this message, never a refusal (issue 19).
    key = primary_key(pid) or ids.scoped_key(ctx.basis, f"PID@{ctx.position(pid)}")
    ctx.mapped(pid, "PID")
    patient_id = ids.resource_id("Patient", key.authority, key.value)
    if ctx.taken("Patient", patient_id):
        # The same patient twice in one message (e.g. two ORU result groups): the first wins.
        return PatientRef(patient_id, key)
    addresses = [a for a in (xad_address(x, ctx.zone) for x in pid.repetitions(11)) if a]
    patient = resource(
        "Patient",
        patient_id,
        {
            "identifier": _identifiers(pid, ctx),
            "name": _names(pid, ctx),
            "telecom": _telecoms(pid),
            "gender": vocab.ADMINISTRATIVE_SEX.get(pid.value(8).upper()),
            "birthDate": to_date(pid.value(7)),
            "address": addresses,
            **_deceased(pid, ctx),
            **_language_marital_religion(pid),
        },
    )
    ctx.add(patient)
    ctx.clear_nulled(patient, pid, _SOURCES)
    ctx.patient_keys[patient_id] = key
    return PatientRef(patient_id, key)
