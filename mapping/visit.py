"""The rest of a visit: PV1's places, staff and hospitalization (IG PV1[Encounter]), PV2 on the
same Encounter (IG PV2[Encounter]) and a ROL after PV1 as a participant (IG
ROL[Encounter-PractitionerRole], built by ``mapping.rol``).

Staff become shared Practitioner / PractitionerRole resources (``mapping.staff``), places shared
Locations (``mapping.location``); the Encounter holds references to them.
"""

from __future__ import annotations

import html
from decimal import Decimal, InvalidOperation
from typing import Final

from mapping import people_vocab, visit_vocab
from mapping.context import Context, PatientRef
from mapping.hl7.datatypes import Json, append_new, cwe_concept, cx_identifier, prune
from mapping.hl7.dtm import to_date_time
from mapping.hl7.parse import Composite, Segment
from mapping.location import dld_location, pl_location
from mapping.rol import rol_role, role_concept
from mapping.staff import xcn_practitioner

__all__ = [
    "LOCATION_CLASSIFICATION",
    "MODE_OF_ARRIVAL_EXTENSION",
    "PLANNED_END_EXTENSION",
    "PLANNED_START_EXTENSION",
    "ROLE_ENCOUNTER",
    "hospitalization",
    "map_encounter_rol",
    "map_pv2",
    "participants",
    "pv1_locations",
]

ROLE_ENCOUNTER: Final = "ROL:Encounter"
LOCATION_CLASSIFICATION: Final = "http://hl7.org/fhir/StructureDefinition/subject-locationClassification"
PLANNED_START_EXTENSION: Final = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedStartDate"
)
PLANNED_END_EXTENSION: Final = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedEndDate"
)
MODE_OF_ARRIVAL_EXTENSION: Final = "http://hl7.org/fhir/StructureDefinition/encounter-modeOfArrival"
_UCUM: Final = "http://unitsofmeasure.org"

# PV1 XCN fields -> Encounter.participant.type (IG PV1[Encounter] assigned v3-ParticipationType codes).
_PV1_STAFF: Final = ((7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"),
                     (17, "ADM", "admitter"), (52, "PART", "Participation"))  # fmt: skip


def _participation(code: str, display: str) -> Json:
    return {"coding": [{"system": visit_vocab.PARTICIPATION_TYPE, "code": code, "display": display}],
            "text": display}  # fmt: skip


def _staff(segment: Segment, field_no: int, code: str, display: str, ctx: Context) -> list[Json]:
    found = []
    for xcn in segment.repetitions(field_no):
        individual = xcn_practitioner(xcn, ctx)
        if individual is not None:
            found.append({"type": [_participation(code, display)], "individual": individual})
    return found


def participants(pv1: Segment, ctx: Context) -> list[Json]:
    """PV1-7/8/9/17/52 -> participant[1..5], each repetition one Practitioner."""
    return [p for field_no, code, display in _PV1_STAFF for p in _staff(pv1, field_no, code, display, ctx)]


def _located(reference: Json | None, status: str, extension: Json | None = None) -> list[Json]:
    if reference is None:
        return []
    return [prune({"extension": [extension] if extension else None, "location": reference, "status": status})
            or {}]  # fmt: skip


def _bed_status(pv1: Segment) -> Json | None:
    concept = people_vocab.translated_concept(pv1.first(40), visit_vocab.BED_STATUS, "HL70116")
    return concept["coding"][-1] if concept and concept.get("coding") else None


def pv1_locations(pv1: Segment, ctx: Context) -> list[Json]:
    """PV1-3 (assigned; planned for a pre-admit), 6 (prior), 11 (temporary), 42 (pending)."""
    temporary = {
        "url": LOCATION_CLASSIFICATION,
        "valueCodeableConcept": {
            "coding": [{"system": "http://hl7.org/fhir/ValueSet/subject-location", "code": "temporary"}]
        },
    }
    assigned_status = "planned" if pv1.value(2).strip().upper() == "P" else "active"
    return [
        *_located(pl_location(pv1.first(3), ctx, bed_status=_bed_status(pv1)), assigned_status),
        *_located(pl_location(pv1.first(6), ctx), "completed"),
        *_located(pl_location(pv1.first(11), ctx), "active", temporary),
        *_located(pl_location(pv1.first(42), ctx), "reserved"),
    ]


def _concepts(
    segment: Segment, field_no: int, table: dict[str, tuple[str, str, str]] | None, name: str
) -> list[Json]:
    found = []
    for cwe in segment.repetitions(field_no):
        concept = people_vocab.translated_concept(cwe, table, name) if table else cwe_concept(cwe)
        if concept is not None and concept not in found:
            found.append(concept)
    return found


def _first(items: list[Json]) -> Json | None:
    return items[0] if items else None


def hospitalization(pv1: Segment, ctx: Context) -> Json | None:
    """PV1-5, 13, 14, 15, 16, 36, 37, 38 -> Encounter.hospitalization."""
    return prune(
        {
            "preAdmissionIdentifier": cx_identifier(pv1.first(5), ctx.zone),
            "admitSource": cwe_concept(pv1.first(14)),
            "reAdmission": _first(_concepts(pv1, 13, visit_vocab.READMISSION, "HL70092")),
            "dietPreference": _concepts(pv1, 38, None, ""),
            "specialCourtesy": _concepts(pv1, 16, None, ""),
            "specialArrangement": _concepts(pv1, 15, visit_vocab.AMBULATORY_STATUS, "HL70009"),
            "destination": dld_location(pv1.first(37), ctx),
            "dischargeDisposition": cwe_concept(pv1.first(36)),
        }
    )


# -- PV2 ------------------------------------------------------------------------------------


def _length_of_stay(text: str) -> Json | None:
    """NM[Quantity-LengthOfStay]: a positive number of days; anything else is not a length."""
    try:
        days = Decimal(text.strip())
    except InvalidOperation:
        return None
    if not days.is_finite() or days <= 0:
        return None
    value: int | float = int(days) if days == days.to_integral_value() else float(days)
    return {"value": value, "unit": "days", "system": _UCUM, "code": "d"}


def _mode_of_arrival(cwe: Composite) -> Json | None:
    concept = people_vocab.translated_concept(cwe, visit_vocab.MODE_OF_ARRIVAL, "HL70430")
    if concept is None or not concept.get("coding"):
        return None
    return {"url": MODE_OF_ARRIVAL_EXTENSION, "valueCoding": concept["coding"][-1]}


def _pv2_extensions(pv2: Segment, ctx: Context) -> list[Json]:
    found = []
    for field_no, url in ((8, PLANNED_START_EXTENSION), (9, PLANNED_END_EXTENSION)):
        when = to_date_time(pv2.value(field_no), ctx.zone)
        if when:
            found.append({"url": url, "valueDateTime": when})
    arrival = _mode_of_arrival(pv2.first(38))
    return [*found, arrival] if arrival else found


def _narrative(text: str) -> Json | None:
    """PV2-12 visit description -> text.div: the sender's words, escaped, as the narrative."""
    words = " ".join(text.split())
    if not words:
        return None
    return {
        "status": "additional",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{html.escape(words)}</div>',
    }


def _set(encounter: Json, element: str, value: Json | str | None) -> None:
    if value and element not in encounter:
        encounter[element] = value


def map_pv2(pv2: Segment, patient: PatientRef | None, ctx: Context) -> bool:
    """Add PV2 to the Encounter of the PV1 before it; False when there is none."""
    encounter = ctx.find("Encounter", patient.encounter_id) if patient and patient.encounter_id else None
    if encounter is None or not pv2.has_content():
        return False
    ctx.mapped(pv2, "PV2")
    append_new(encounter, "extension", _pv2_extensions(pv2, ctx))
    _set(encounter, "text", _narrative(pv2.text(12)))
    protection = visit_vocab.YES_NO.get(pv2.value(22).strip().upper())
    if protection is not None:
        security = encounter.setdefault("meta", {}).setdefault("security", [])
        security.append({"system": protection[0], "code": protection[1]})
    _set(
        encounter,
        "priority",
        people_vocab.translated_concept(pv2.first(25), visit_vocab.ENCOUNTER_PRIORITY, "HL70217"),
    )
    append_new(encounter, "reasonCode", _concepts(pv2, 3, None, ""))
    append_new(encounter, "participant", _staff(pv2, 13, "REF", "referrer", ctx))
    _set(encounter, "length", _length_of_stay(pv2.value(11)))
    append_new(encounter, "location", _located(pl_location(pv2.first(1), ctx), "planned"))
    return True


# -- ROL ------------------------------------------------------------------------------------


def map_encounter_rol(rol: Segment, patient: PatientRef | None, ctx: Context) -> bool:
    """A ROL after PV1 -> Encounter.participant (type ROL-3, the PractitionerRole, period
    ROL-5/6); False when there is no Encounter or no one named."""
    encounter = ctx.find("Encounter", patient.encounter_id) if patient and patient.encounter_id else None
    if encounter is None:
        return False
    individual = rol_role(rol, ctx, with_period=False)
    if individual is None:
        return False
    concept = role_concept(rol)
    period = prune(
        {"start": to_date_time(rol.value(5), ctx.zone), "end": to_date_time(rol.value(6), ctx.zone)}
    )
    entry = prune({"type": [concept] if concept else None, "individual": individual, "period": period}) or {}
    append_new(encounter, "participant", [entry])
    ctx.mapped(rol, ROLE_ENCOUNTER)
    return True
