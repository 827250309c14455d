"""AL1 -> AllergyIntolerance, DG1 -> Condition (and Encounter.diagnosis), PR1 -> Procedure.

After the IG's segment maps AL1[AllergyIntolerance], DG1[Condition], DG1[Encounter] and
PR1[Procedure]; used by the ADT message map (``mapping.adt``) and the segment-driven map
(``mapping.generic``). Each builder adds its resource (and the Practitioners it names) and
returns it, or returns None when the segment says nothing the resource could hold, so the
caller reports it.

Not mapped (reported when valued): AL1-4 as reaction.severity (the IG's alternative to
criticality, taken when AL1-4 is used as criticality, as HL7 v2 defines it), DG1[EpisodeOfCare]
(no EpisodeOfCare here), PR1-2 (deprecated coding method), PR1-23 (PL -> Location: no Location
builder yet), and every field the IG gives no target.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from mapping import ids, people_vocab
from mapping.context import Context, PatientRef
from mapping.hl7.datatypes import Json, clean_code, code_key, cwe_concept, ei_identifier, prune, resource
from mapping.hl7.dtm import parse_dtm, to_date_time
from mapping.hl7.numeric import POSITIVE_INT_MAX, parse_number
from mapping.hl7.parse import Composite, Segment
from mapping.location import pl_location
from mapping.staff import xcn_practitioner

__all__ = [
    "ALLERGY_CATEGORY",
    "ALLERGY_CATEGORY_ORIGINAL",
    "ALLERGY_TYPE",
    "ALTERNATE_CODES",
    "ASSERTED_DATE",
    "CRITICALITY",
    "CRITICALITY_ORIGINAL",
    "DIAGNOSIS_TYPE",
    "DUE_TO",
    "PERFORMER_FUNCTIONS",
    "ROLE_DG1",
    "ROLE_DG1_NO_ENCOUNTER",
    "map_al1",
    "map_dg1",
    "map_pr1",
]

ALTERNATE_CODES: Final = "http://hl7.org/fhir/StructureDefinition/alternate-codes"
ASSERTED_DATE: Final = "http://hl7.org/fhir/StructureDefinition/condition-assertedDate"
DUE_TO: Final = "http://hl7.org/fhir/StructureDefinition/condition-dueTo"
_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
_V2_0127: Final = "http://terminology.hl7.org/CodeSystem/v2-0127"
_V2_0128: Final = "http://terminology.hl7.org/CodeSystem/v2-0128"
_CONDITION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
_VERIFICATION_STATUS: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_DIAGNOSIS_ROLE: Final = "http://terminology.hl7.org/CodeSystem/diagnosis-role"
_SNOMED: Final = "http://snomed.info/sct"

# IG concept map AllergenType[AllergyIntoleranceCategory] (HL7 table 0127 -> category).
ALLERGY_CATEGORY: Final[dict[str, str]] = {
    "DA": "medication",
    "FA": "food",
    "EA": "environment",
    "AA": "biologic",
    "PA": "environment",
    "LA": "environment",
}
# IG concept map AllergenType[AllergyIntoleranceOriginalCategory]: the v2 code, kept beside it.
ALLERGY_CATEGORY_ORIGINAL: Final[dict[str, str]] = {
    "DA": "Drug allergy",
    "FA": "Food allergy",
    "MA": "Miscellaneous allergy",
    "MC": "Miscellaneous contraindication",
    "EA": "Environmental allergy",
    "AA": "Animal allergy",
    "PA": "Plant allergy",
    "LA": "Pollen allergy",
}
# IG concept map AllergyType (table 0127 -> type): every allergen type but MC is an allergy.
ALLERGY_TYPE: Final[dict[str, str]] = {code: "allergy" for code in ALLERGY_CATEGORY_ORIGINAL if code != "MC"}
# IG concept map AllergySeverity[AllergyIntolerance.criticality] (HL7 table 0128).
CRITICALITY: Final[dict[str, str]] = {"SV": "high", "MI": "low"}
# IG concept map AllergySeverity[AllergyIntolerance.criticality-original].
CRITICALITY_ORIGINAL: Final[dict[str, str]] = {"SV": "Severe", "MO": "Moderate", "MI": "Mild", "U": "Unknown"}
# IG concept map DiagnosisType (HL7 table 0052 -> Encounter.diagnosis.use): only "A" has a target.
DIAGNOSIS_TYPE: Final[dict[str, tuple[str, str, str]]] = {
    "A": (_DIAGNOSIS_ROLE, "AD", "Admission Diagnosis"),
}
# IG PR1[Procedure] performer[n].function: PR1-8 anesthesiologist, PR1-11 surgeon, PR1-12 none.
PERFORMER_FUNCTIONS: Final[dict[int, str | None]] = {8: "88189002", 11: "304292004", 12: None}

ROLE_DG1: Final = "DG1"
ROLE_DG1_NO_ENCOUNTER: Final = "DG1:Condition"
"""The report's rule set for a DG1 without an Encounter: DG1-6 and DG1-15 then go nowhere."""

# PR1 status by message type: the IG leaves it to the message context, "unknown" when unclear.
# A billing message (DFT, BAR) charges for procedures that were done.
_PROCEDURE_STATUS: Final[dict[str, str]] = {"DFT": "completed", "BAR": "completed"}


# -- shared pieces ---------------------------------------------------------------------------


def _alternate(system: str, code: str, display: str) -> Json:
    """The alternate-codes extension (IG: a primitive's original v2 code)."""
    coding = {"system": system, "code": code, "display": display}
    return {"extension": [{"url": ALTERNATE_CODES, "valueCodeableConcept": {"coding": [coding]}}]}


def _plain_identifier(ei: Composite) -> Json | None:
    """EI -> Identifier (IG EI[Identifier-Extension]): EI.1 value, EI.2-4 its system."""
    return ei_identifier(ei, None)


def _logical_reference(resource_type: str, ei: Composite) -> Json | None:
    """A reference by identifier (IG EI[Condition], EI[Procedure]): the target's identifier is the EI."""
    identifier = _plain_identifier(ei)
    return {"type": resource_type, "identifier": identifier} if identifier else None


def _preferred_id(resource_type: str, patient: PatientRef, *parts: str) -> str:
    return ids.resource_id(resource_type, patient.key.authority, patient.key.value, *parts)


def _identity(ei: Composite) -> str:
    """An EI as a key (assigning authority and value), "" when it has no value."""
    value = ei.get(1).strip()
    return "|".join((ei.get(2).strip() or ei.get(3).strip(), value)) if value else ""


def _set_id(seg: Segment, ctx: Context) -> str:
    """The set ID orders the segments of a visit; the position stands in when missing."""
    return seg.value(1).strip() or f"at{ctx.position(seg)}"


def _visit_scoped_id(resource_type: str, seg: Segment, patient: PatientRef, ctx: Context, tag: str) -> str:
    """The segment's own identifier keys the resource; else its set ID within the visit, so a
    re-sent visit (A08 after A01) updates it; else (no visit) it is scoped to the message."""
    own = _identity(seg.first({"DG1": 20, "PR1": 19}[seg.name]))
    preferred = None
    if own:
        preferred = _preferred_id(resource_type, patient, tag, "id", own)
    elif patient.encounter_id is not None:
        preferred = _preferred_id(resource_type, patient, tag, patient.encounter_id, _set_id(seg, ctx))
    return ctx.unique_id(resource_type, preferred, tag, str(ctx.position(seg)))


def _encounter(patient: PatientRef, ctx: Context) -> Json | None:
    """The Encounter resource of the patient's current PV1, already added to this message."""
    if patient.encounter_id is None:
        return None
    return ctx.find("Encounter", patient.encounter_id)


def _positive_int(text: str) -> int | None:
    number = parse_number(text)
    if number is None or number != int(number) or not 1 <= number <= POSITIVE_INT_MAX:
        return None
    return int(number)


# -- AL1 -> AllergyIntolerance ---------------------------------------------------------------


def _allergy_category(al1: Segment) -> Json:
    code = clean_code(al1.value(2)).upper()
    category = ALLERGY_CATEGORY.get(code)
    members: Json = {"type": ALLERGY_TYPE.get(code)}
    if category is not None:
        members["category"] = [category]
        members["_category"] = [_alternate(_V2_0127, code, ALLERGY_CATEGORY_ORIGINAL[code])]
    return members


def _criticality(al1: Segment) -> Json:
    """AL1-4 as criticality (IG: "if severity was used equivalent to criticality"), with the v2
    code as its alternate code: Moderate has no criticality but keeps its code that way."""
    code = clean_code(al1.value(4)).upper()
    members: Json = {"criticality": CRITICALITY.get(code)}
    if code in CRITICALITY_ORIGINAL:
        members["_criticality"] = _alternate(_V2_0128, code, CRITICALITY_ORIGINAL[code])
    return members


def map_al1(al1: Segment, patient: PatientRef, ctx: Context) -> Json | None:
    """Add the AllergyIntolerance of ``al1``; None when AL1-3 names no allergen."""
    code = cwe_concept(al1.first(3))
    if code is None:
        return None
    # One allergen is one AllergyIntolerance of the patient, whichever message repeats it.
    preferred = _preferred_id("AllergyIntolerance", patient, "al1", code_key(al1.first(3)))
    reactions = [{"text": t} for t in al1.texts(5) if t]
    built = resource(
        "AllergyIntolerance",
        ctx.unique_id("AllergyIntolerance", preferred, "al1", str(ctx.position(al1))),
        {
            "clinicalStatus": {"coding": [{"system": _CLINICAL, "code": "active"}]},
            **_allergy_category(al1),
            **_criticality(al1),
            "code": code,
            "patient": patient.subject,
            "onsetDateTime": to_date_time(al1.value(6), ctx.zone),
            "reaction": [{"manifestation": reactions}] if reactions else None,
        },
    )
    ctx.add(built)
    ctx.mapped(al1, "AL1")
    return built


# -- DG1 -> Condition, Encounter.diagnosis ---------------------------------------------------


def _diagnosis_code(dg1: Segment) -> Json | None:
    """DG1-3 (IG code[1]) with DG1-4 as its text (IG code[1].text)."""
    code = cwe_concept(dg1.first(3))
    description = dg1.value(4).strip()
    if description:
        code = {**(code or {}), "text": description}
    return code


def _condition_extensions(dg1: Segment, ctx: Context) -> list[Json]:
    found: list[Json] = []
    asserted = to_date_time(dg1.value(19), ctx.zone)
    if asserted:
        found.append({"url": ASSERTED_DATE, "valueDateTime": asserted})
    parent = _logical_reference("Condition", dg1.first(22))
    if parent:
        found.append({"url": DUE_TO, "valueReference": parent})
    return found


def _add_diagnosis(dg1: Segment, condition_id: str, encounter: Json) -> None:
    """IG DG1[Encounter]: the Condition as an Encounter.diagnosis with DG1-6 use, DG1-15 rank."""
    entry: Json = {"condition": ids.reference("Condition", condition_id)}
    entry |= (
        prune(
            {
                "use": people_vocab.translated_concept(dg1.first(6), DIAGNOSIS_TYPE, "HL70052"),
                "rank": _positive_int(dg1.value(15)),
            }
        )
        or {}
    )
    diagnoses: list[Json] = encounter.setdefault("diagnosis", [])
    diagnoses.append(entry)


def map_dg1(dg1: Segment, patient: PatientRef, ctx: Context) -> Json | None:
    """Add the Condition of ``dg1`` and list it on the patient's current Encounter; None when
    DG1-3 and DG1-4 name no diagnosis."""
    code = _diagnosis_code(dg1)
    if code is None:
        return None
    condition_id = _visit_scoped_id("Condition", dg1, patient, ctx, "dg1")
    identifier = _plain_identifier(dg1.first(20))
    deleted = clean_code(dg1.value(21)).upper() == "D"  # IG: DG1-21 "D" (delete) -> entered-in-error
    built = resource(
        "Condition",
        condition_id,
        {
            "extension": _condition_extensions(dg1, ctx),
            "identifier": [identifier] if identifier else None,
            "verificationStatus": {"coding": [{"system": _VERIFICATION_STATUS, "code": "entered-in-error"}]}
            if deleted
            else None,
            "category": [{"coding": [{"system": _CONDITION_CATEGORY, "code": "encounter-diagnosis"}]}],
            "code": code,
            "subject": patient.subject,
            "encounter": patient.encounter,
            "onsetDateTime": to_date_time(dg1.value(5), ctx.zone),
            "recordedDate": to_date_time(dg1.value(19), ctx.zone),
            "asserter": xcn_practitioner(dg1.first(16), ctx),
        },
    )
    ctx.add(built)
    encounter = _encounter(patient, ctx)
    if encounter is not None:
        _add_diagnosis(dg1, condition_id, encounter)
    ctx.mapped(dg1, ROLE_DG1 if encounter is not None else ROLE_DG1_NO_ENCOUNTER)
    return built


# -- PR1 -> Procedure ------------------------------------------------------------------------


def _procedure_code(pr1: Segment) -> Json | None:
    """PR1-3 (IG code[1]); PR1-4 as text when PR1-3.9 is empty; PR1-16 modifiers joined to the
    code as "code:modifier" (IG code[1].value, after the CPT modifier syntax)."""
    code = cwe_concept(pr1.first(3))
    description = pr1.value(4).strip()
    if description and not pr1.value(3, 9).strip():
        code = {**(code or {}), "text": description}
    modifiers = [m.get(1).strip() for m in pr1.repetitions(16) if m.get(1).strip()]
    if code is not None and modifiers and code.get("coding"):
        first = dict(code["coding"][0])
        first["code"] = ":".join([first["code"], *modifiers])
        code = {**code, "coding": [first, *code["coding"][1:]]}
    return code


def _performed(pr1: Segment, ctx: Context) -> Json:
    """PR1-5 as performedDateTime; with PR1-7 minutes and a PR1-5 precise to the minute, a
    performedPeriod from PR1-5 to PR1-5 + PR1-7 (IG PR1-5 and PR1-7 rows)."""
    start = to_date_time(pr1.value(5), ctx.zone)
    if start is None:
        return {}
    parsed = parse_dtm(pr1.value(5))
    minutes = parse_number(pr1.value(7))
    if parsed is None or parsed.minute is None or minutes is None or minutes < 0:
        return {"performedDateTime": start}
    try:
        end = datetime.fromisoformat(start) + timedelta(minutes=minutes)
    except OverflowError:  # minutes beyond the calendar: the start is all that is known
        return {"performedDateTime": start}
    return {"performedPeriod": {"start": start, "end": end.isoformat()}}


def _performers(pr1: Segment, ctx: Context) -> list[Json]:
    found = []
    for field_no, function in PERFORMER_FUNCTIONS.items():
        for xcn in pr1.repetitions(field_no):
            actor = xcn_practitioner(xcn, ctx)
            if actor is None:
                continue
            performer: Json = {"actor": actor}
            if function is not None:
                performer = {"function": {"coding": [{"system": _SNOMED, "code": function}]}, **performer}
            found.append(performer)
    return found


def map_pr1(pr1: Segment, patient: PatientRef, ctx: Context) -> Json | None:
    """Add the Procedure of ``pr1``; None when PR1-3 and PR1-4 name no procedure."""
    code = _procedure_code(pr1)
    if code is None:
        return None
    identifier = _plain_identifier(pr1.first(19))
    part_of = _logical_reference("Procedure", pr1.first(25))
    reason = cwe_concept(pr1.first(15))
    built = resource(
        "Procedure",
        _visit_scoped_id("Procedure", pr1, patient, ctx, "pr1"),
        {
            "identifier": [identifier] if identifier else None,
            "partOf": [part_of] if part_of else None,
            "status": _PROCEDURE_STATUS.get(ctx.message.msh.value(9, 1).upper(), "unknown"),
            "category": cwe_concept(pr1.first(6)),
            "code": code,
            "subject": patient.subject,
            "encounter": patient.encounter,
            **_performed(pr1, ctx),
            "performer": _performers(pr1, ctx),
            # PR1-23 repeats; the IG maps one treating unit (Procedure.location is 0..1).
            "location": pl_location(pr1.first(23), ctx),
            "reasonCode": [reason] if reason else None,
        },
    )
    ctx.add(built)
    ctx.mapped(pr1, "PR1")
    return built
