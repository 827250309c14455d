"""VXU^V04: RXA (+ RXR, ORC) -> Immunization (IG RXA[Immunization], RXR[Immunization]); OBX after
an RXA -> Observation partOf that Immunization; OBX before any RXA -> Observation of the patient;
NK1 after a PID -> RelatedPerson of that patient (IG NK1[RelatedPerson]; one before any PID is reported).

Staff: ORC-12 ordering provider (PractitionerRole, function OP) and RXA-10 administering
provider (Practitioner, function AP) -> Immunization.performer (IG ORC/RXA[Immunization]).
PD1 -> the Patient, PV2 -> the Encounter (mapping.care, mapping.visit).

Not mapped (reported): GT1, IN1, PRT, TQ1 and the other people of ORC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mapping import ids, staff, workflow_vocab
from mapping.context import Context, PatientRef
from mapping.hl7.datatypes import Json, code_key, cwe_concept, data_absent_concept, ei_identifier, resource
from mapping.hl7.dtm import to_date, to_date_time
from mapping.hl7.numeric import parse_number, quantity
from mapping.hl7.parse import Segment
from mapping.observation import add_note, build_observation
from mapping.related import map_nk1
from mapping.subject import Subjects

_UNKNOWN_AMOUNT = "999"  # CDC IIS guide: amount not recorded
PERFORMER_FUNCTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0443"


@dataclass
class _Dose:
    rxa: Segment
    orc: Segment | None
    patient: PatientRef
    resource_id: str
    route: list[Segment] = field(default_factory=list)


def _status(rxa: Segment) -> str:
    if rxa.value(21).upper() == "D":
        return "entered-in-error"
    return workflow_vocab.COMPLETION_STATUS.get(rxa.value(20).upper(), "completed")


def _dose_quantity(rxa: Segment) -> Json | None:
    amount = rxa.value(6)
    number = parse_number(amount)
    if number is None or amount == _UNKNOWN_AMOUNT:
        return None
    return quantity(number, rxa.first(7))


def _performer(actor: Json | None, function: str) -> Json | None:
    if actor is None:
        return None
    return {"function": {"coding": [{"system": PERFORMER_FUNCTION_SYSTEM, "code": function}]}, "actor": actor}


def _performers(rxa: Segment, orc: Segment | None, ctx: Context) -> list[Json]:
    """ORC-12 -> performer OP (ordering provider, XCN[PractitionerRole]); RXA-10 -> performer AP
    (administering provider, XCN[Practitioner])."""
    ordering = [staff.xcn_role(x, ctx) for x in orc.repetitions(12)] if orc is not None else []
    found = [_performer(a, "OP") for a in ordering]
    found += [_performer(staff.xcn_practitioner(x, ctx), "AP") for x in rxa.repetitions(10)]
    return [p for p in found if p is not None]


def _immunization_id(rxa: Segment, orc: Segment | None, ctx: Context) -> str:
    preferred = None
    if orc is not None:
        for role, no in (("filler", 3), ("placer", 2)):
            ei = orc.first(no)
            if ei.get(1):
                preferred = ids.resource_id(
                    "Immunization", role, ei.get(2), ei.get(1), code_key(rxa.first(5))
                )
                break
    return ctx.unique_id("Immunization", preferred, "rxa", str(ctx.position(rxa)))


def _add_immunization(dose: _Dose, ctx: Context) -> None:
    rxa, orc = dose.rxa, dose.orc
    ctx.mapped(rxa, "RXA")
    if orc is not None:
        ctx.mapped(orc, "ORC:Immunization")
    occurrence = to_date_time(rxa.value(3), ctx.zone)
    identifiers = []
    if orc is not None:
        identifiers = [
            i for i in (ei_identifier(orc.first(2), "PLAC"), ei_identifier(orc.first(3), "FILL")) if i
        ]
    route = dose.route[0] if dose.route else None
    if route is not None:
        ctx.mapped(route, "RXR")
    recorded = to_date_time(rxa.value(22), ctx.zone) if rxa.value(21).upper() == "A" else None
    immunization = resource(
        "Immunization",
        dose.resource_id,
        {
            "identifier": identifiers,
            "status": _status(rxa),
            "statusReason": cwe_concept(rxa.first(18)),
            "vaccineCode": cwe_concept(rxa.first(5)) or data_absent_concept(),
            "patient": dose.patient.subject,
            "encounter": dose.patient.encounter,
            **({"occurrenceDateTime": occurrence} if occurrence else {"occurrenceString": "unknown"}),
            "recorded": recorded,
            "performer": _performers(rxa, orc, ctx),
            "lotNumber": rxa.value(15),
            "expirationDate": to_date(rxa.value(16)),
            "route": cwe_concept(route.first(1)) if route is not None else None,
            "site": cwe_concept(route.first(2)) if route is not None else None,
            "doseQuantity": _dose_quantity(rxa),
            "reasonCode": [c for c in (cwe_concept(r) for r in rxa.repetitions(19)) if c],
        },
    )
    ctx.add(immunization)


def map_vxu(ctx: Context) -> None:
    subjects = Subjects(ctx, "an immunization message")
    orc: Segment | None = None
    dose: _Dose | None = None
    last_observation: Json | None = None
    obx_count = 0

    def close() -> None:
        nonlocal dose
        if dose is not None:
            _add_immunization(dose, ctx)
            dose = None

    for seg in ctx.message.segments[1:]:
        name = seg.name
        if name == "PID":
            close()
            subjects.take_pid(seg)
            orc, last_observation = None, None
        elif name in ("PV1", "PD1", "PV2") and subjects.take(seg):
            last_observation = None
        elif name == "ORC":
            close()
            orc, last_observation = seg, None
        elif name == "RXA":
            close()
            patient = subjects.current()
            dose = _Dose(seg, orc, patient, _immunization_id(seg, orc, ctx))
            orc, last_observation = None, None
        elif name == "RXR" and dose is not None and not dose.route:
            dose.route.append(seg)
        elif name == "OBX" and (seg.value(3) or seg.raw(5)):
            obx_count += 1
            patient = dose.patient if dose is not None else subjects.current()
            observation_id = ctx.unique_id("Observation", None, "vxu-obx", str(obx_count))
            observation = build_observation(seg, observation_id, patient, ctx)
            if dose is not None:
                observation["partOf"] = [ids.reference("Immunization", dose.resource_id)]
            ctx.add(observation)
            ctx.mapped(seg, "OBX:Observation")
            last_observation = observation
        elif name == "NTE" and last_observation is not None and add_note(last_observation, seg):
            ctx.mapped(seg, "NTE")
        elif (
            name == "NK1"
            and subjects.patient is not None
            and map_nk1(seg, subjects.patient, ctx.position(seg), ctx)
        ):
            last_observation = None  # IG VXU_V04 NK1[RelatedPerson] of the PID before it
        else:
            ctx.skip(seg)
            last_observation = None
    close()
