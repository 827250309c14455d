"""PV1 -> Encounter (IG PV1[Encounter]): class, status, admission type, hospital service, visit
number, period, subject; the places, staff and hospitalization details come from
``mapping.visit``, the financial class, prior temporary location and service episode from
``mapping.visit_links``."""

from __future__ import annotations

from mapping import ids, people_vocab, vocab
from mapping.context import Context, PatientRef
from mapping.hl7.datatypes import Json, authority, clean_code, cx_identifier, resource
from mapping.hl7.dtm import to_date_time
from mapping.hl7.parse import Segment
from mapping.visit import hospitalization, participants, pv1_locations
from mapping.visit_links import map_pv1_links


def _class(pv1: Segment) -> Json:
    code = pv1.value(2).upper()
    known = vocab.PATIENT_CLASS.get(code)
    if known is None and code:
        # Not in HL7 table 0004: keep the sender's code without claiming a code system.
        return {"code": clean_code(pv1.value(2))}
    system, fhir_code, display = known or vocab.UNKNOWN_CLASS
    return {"system": system, "code": fhir_code, "display": display}


def encounter_status(pv1: Segment, trigger: str) -> str:
    """The trigger event when it fixes the status, else PV1-45 (discharged -> finished), else
    the patient class (IG PatientClass[EncounterStatus]), else in-progress."""
    by_event = vocab.EVENT_ENCOUNTER_STATUS.get(trigger)
    if by_event:
        return by_event
    if pv1.value(45):
        return "finished"
    return vocab.PATIENT_CLASS_STATUS.get(pv1.value(2).upper(), "in-progress")


def _identifiers(pv1: Segment, ctx: Context) -> list[Json]:
    found = []
    visit = cx_identifier(pv1.first(19), ctx.zone)
    if visit is not None:
        visit["type"] = {
            "coding": [{"system": vocab.V2_0203, "code": "VN"}],
            "text": "visit number",
        }
        found.append(visit)
    for cx in pv1.repetitions(50):  # alternate visit id
        alternate = cx_identifier(cx, ctx.zone)
        if alternate is not None and alternate not in found:
            found.append(alternate)
    return found


def _encounter_id(pv1: Segment, patient: PatientRef, ctx: Context) -> str:
    key = (patient.key.authority, patient.key.value)
    visit = pv1.first(19)
    if visit.get(1):
        return ids.resource_id("Encounter", *key, "visit", authority(visit), visit.get(1))
    admitted = pv1.value(44)
    if admitted:
        return ids.resource_id("Encounter", *key, "admit", admitted)
    return ids.resource_id("Encounter", ctx.basis, *key)


# Top-level elements and their PV1 fields, for deletion by an explicit null (mapping.updates).
_SOURCES = {"period": (44, 45), "type": (4,), "serviceType": (10,)}


def _listed(concept: Json | None) -> list[Json]:
    return [concept] if concept is not None else []


def map_pv1(pv1: Segment, patient: PatientRef, ctx: Context) -> None:
    """Add the Encounter for ``pv1`` and remember it on ``patient``; a bare ``PV1|1`` maps nothing."""
    if not pv1.has_content():
        return
    encounter_id = _encounter_id(pv1, patient, ctx)
    ctx.mapped(pv1, "PV1")
    if ctx.taken("Encounter", encounter_id):
        patient.encounter_id = encounter_id
        return
    period = {
        "start": to_date_time(pv1.value(44), ctx.zone),
        "end": to_date_time(pv1.value(45), ctx.zone),
    }
    encounter = resource(
        "Encounter",
        encounter_id,
        {
            "identifier": _identifiers(pv1, ctx),
            "status": encounter_status(pv1, ctx.trigger),
            "class": _class(pv1),
            # PV1-4 admission type -> type, PV1-10 hospital service -> serviceType (IG PV1[Encounter]).
            "type": _listed(
                people_vocab.translated_concept(pv1.first(4), people_vocab.ADMISSION_TYPE, "HL70007")
            ),
            "serviceType": people_vocab.translated_concept(
                pv1.first(10), people_vocab.HOSPITAL_SERVICE, "HL70069"
            ),
            "subject": patient.subject,
            "participant": participants(pv1, ctx),
            "period": {k: v for k, v in period.items() if v},
            "hospitalization": hospitalization(pv1, ctx),
            "location": pv1_locations(pv1, ctx),
        },
    )
    ctx.add(encounter)
    map_pv1_links(pv1, patient, encounter, ctx)
    # A source field sent as the explicit null deletes the stored element (PV1-44 and -45 both
    # null, or one null and one empty: the visit's dates).
    ctx.clear_nulled(encounter, pv1, _SOURCES)
    patient.encounter_id = encounter_id
