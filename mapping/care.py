"""The patient's care team: PD1 -> Patient (IG PD1[Patient]) and a ROL after PID -> Patient
.generalPractitioner (IG ROL[Patient-GeneralPractitioner]).

Both add to the Patient of the PID before them. The message maps (ADT_A01 and friends) take a
patient-level ROL as the general practitioner only when ROL-3 is "PP" of HL7 table 0443; other
roles join the patient's CareTeam (IG ROL[CareTeam], ``mapping.rol``). PD1-7, the living will,
becomes an Observation of the patient (IG PD1[Observation-LivingWill]).
"""

from __future__ import annotations

from typing import Final

from mapping import ids, people_vocab, visit_vocab
from mapping.context import Context, PatientRef
from mapping.hl7.datatypes import Json, append_new, cwe_concept, resource
from mapping.hl7.parse import Composite, Segment
from mapping.rol import care_team_member, rol_role
from mapping.staff import organization, xcn_practitioner

__all__ = [
    "CONGREGATION_EXTENSION",
    "DISABILITY_EXTENSION",
    "LIVING_WILL_CODE",
    "ROLE_CARE_TEAM",
    "ROLE_PATIENT",
    "is_general_practitioner",
    "map_patient_rol",
    "map_pd1",
]

ROLE_PATIENT: Final = "ROL:Patient"
ROLE_CARE_TEAM: Final = "ROL:CareTeam"
LIVING_WILL_CODE: Final = {"system": "http://loinc.org", "code": "75320-2", "display": "Advance directive"}
DISABILITY_EXTENSION: Final = "http://hl7.org/fhir/StructureDefinition/patient-disability"
CONGREGATION_EXTENSION: Final = "http://hl7.org/fhir/StructureDefinition/patient-congregation"


def _xon_string(xon: Composite) -> str:
    """XON[string]: XON.1, else XON.10."""
    return " ".join((xon.get(1) or xon.get(10)).split())


def _general_practitioners(pd1: Segment, ctx: Context) -> list[Json]:
    """PD1-3 (facility, Organization) then PD1-4 (provider, Practitioner): generalPractitioner[1], [2]."""
    found = []
    for xon in pd1.repetitions(3):
        org_id = organization(xon, ctx)
        if org_id is not None:
            found.append(ids.reference("Organization", org_id))
    for xcn in pd1.repetitions(4):
        reference = xcn_practitioner(xcn, ctx)
        if reference is not None:
            found.append(reference)
    return found


def _pd1_extensions(pd1: Segment) -> list[Json]:
    found = []
    handicap = cwe_concept(pd1.first(6))
    if handicap is not None:
        found.append({"url": DISABILITY_EXTENSION, "valueCodeableConcept": handicap})
    congregation = _xon_string(pd1.first(14))
    if congregation:
        found.append({"url": CONGREGATION_EXTENSION, "valueString": congregation})
    return found


def map_pd1(pd1: Segment, patient: PatientRef | None, ctx: Context) -> bool:
    """Add PD1-3/4 (generalPractitioner), PD1-6 (disability) and PD1-14 (congregation) to the
    Patient of the PID before it, and PD1-7 as the living-will Observation; False when there is
    no Patient."""
    target = ctx.find("Patient", patient.resource_id) if patient is not None else None
    if target is None or patient is None or not pd1.has_content():
        return False
    ctx.mapped(pd1, "PD1")
    append_new(target, "generalPractitioner", _general_practitioners(pd1, ctx))
    append_new(target, "extension", _pd1_extensions(pd1))
    _living_will(pd1, patient, ctx)
    return True


def _living_will(pd1: Segment, patient: PatientRef, ctx: Context) -> None:
    """PD1-7 -> an Observation of the patient (LOINC 75320-2), one per patient: the latest
    message's answer replaces the earlier one."""
    value = people_vocab.translated_concept(pd1.first(7), visit_vocab.LIVING_WILL, "HL70315")
    if value is None:
        return
    observation_id = ids.resource_id("Observation", patient.key.authority, patient.key.value, "living-will")
    if ctx.taken("Observation", observation_id):
        return
    ctx.add(
        resource(
            "Observation",
            observation_id,
            {
                "status": "final",
                "code": {"coding": [dict(LIVING_WILL_CODE)]},
                "subject": patient.subject,
                "valueCodeableConcept": value,
            },
        )
    )


def is_general_practitioner(rol: Segment) -> bool:
    """IG ADT_A01: IF ROL-3.1 EQUALS "PP" AND ROL-3.3 EQUALS "HL70443". An empty ROL-3.3 is taken
    as table 0443 too, as ``people_vocab.translated_concept`` does for every table."""
    return rol.value(3).strip().upper() == "PP" and rol.value(3, 3).strip().upper() in ("HL70443", "")


def map_patient_rol(rol: Segment, patient: PatientRef | None, ctx: Context) -> bool:
    """A ROL after PID: the primary care provider -> a PractitionerRole (code ROL-3, practitioner
    ROL-4, period ROL-5/6, organisation ROL-14, ...) in Patient.generalPractitioner; any other
    role -> a participant of the patient's CareTeam. False when there is no Patient or the ROL
    names no one."""
    target = ctx.find("Patient", patient.resource_id) if patient is not None else None
    if target is None or patient is None:
        return False
    if not is_general_practitioner(rol):
        if not care_team_member(rol, patient, ctx):
            return False
        ctx.mapped(rol, ROLE_CARE_TEAM)
        return True
    role = rol_role(rol, ctx, with_period=True)
    if role is None:
        return False
    append_new(target, "generalPractitioner", [role])
    ctx.mapped(rol, ROLE_PATIENT)
    return True
