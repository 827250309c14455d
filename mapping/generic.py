"""The segment-driven map: every message type without a message map of its own.

The message structure is not known here, so segments are mapped wherever they appear, each by
its segment map, and whatever has no segment map goes into the mapping report (nothing is
dropped silently):

* PID -> Patient, PV1 -> Encounter of the current patient (IG PID[Patient], PV1[Encounter]);
* ORC opens an order group; the detail segment that follows decides what the group becomes:
  OBR -> ServiceRequest (IG ORC/OBR[ServiceRequest]); RXO/RXE -> MedicationRequest (IG
  RXO[MedicationRequest]; RXE read the same way); RXD -> MedicationDispense; RXA ->
  MedicationAdministration (one per RXA); an ORC without a detail -> ServiceRequest;
  RXR -> the route/site of the group's medication resources; RXO-14 (else ORC-12) ->
  MedicationRequest.requester, ORC-12 -> MedicationAdministration.performer (function OP, IG
  ORC[MedicationAdministration]);
* OBX -> Observation (IG OBX[Observation]); NTE -> note of the resource it follows;
* SPM -> Specimen (IG SPM[Specimen]); the OBX after it (until the next SPM or PID) point at it;
* PRB -> Condition (problem-list-item); DG1 -> Condition and Encounter.diagnosis, AL1 ->
  AllergyIntolerance, PR1 -> Procedure (IG DG1[Condition], DG1[Encounter],
  AL1[AllergyIntolerance], PR1[Procedure]; built by ``mapping.clinical``, as in ADT); FT1 ->
  ChargeItem (no IG segment map; FT1-7 code, FT1-4 date, FT1-10 quantity), IN1 -> Coverage
  and its payer Organization (IG IN1[Coverage]; DFT and BAR carry it).

Segments that need a patient (everything clinical) are reported, not mapped, when the message
has no usable PID: a QRY, RSP or ERP then yields no resources and a full report, not an error.
Segments before the first PID belong to the message's (first) patient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from core.errors import MappingError
from mapping import ids, staff, workflow_vocab
from mapping.care import map_pd1
from mapping.clinical import map_al1, map_dg1, map_pr1
from mapping.context import Context, PatientRef
from mapping.encounter import map_pv1
from mapping.hl7.datatypes import Json, cwe_concept, data_absent_concept, ei_identifier, resource
from mapping.hl7.dtm import to_date_time
from mapping.hl7.numeric import POSITIVE_INT_MAX, parse_number, quantity
from mapping.hl7.parse import Composite, Segment
from mapping.insurance import map_in1
from mapping.observation import attach_note, build_observation, note_text
from mapping.orders import Order, build_service_request
from mapping.patient import map_pid
from mapping.visit import map_pv2

_CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_VERIFICATION_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

# ServiceRequest-style order status -> MedicationRequest.status.
_MEDICATION_REQUEST_STATUS = {
    "active": "active",
    "on-hold": "on-hold",
    "revoked": "cancelled",
    "completed": "completed",
    "entered-in-error": "entered-in-error",
    "draft": "draft",
}
# RXA-20 completion status (HL7 table 0322) -> MedicationAdministration.status.
_ADMINISTRATION_STATUS = {"CP": "completed", "PA": "completed", "RE": "not-done", "NA": "not-done"}

_DETAILS = frozenset({"OBR", "RXO", "RXE", "RXD", "RXA"})


@dataclass
class _Group:
    """One ORC and/or the detail segments under it."""

    patient: PatientRef | None
    index: int
    orc: Segment | None = None
    obr: Segment | None = None
    rxo: Segment | None = None
    rxe: Segment | None = None
    rxd: Segment | None = None
    rxa: list[Segment] = field(default_factory=list)
    rxr: Segment | None = None
    notes: list[str] = field(default_factory=list)
    supporting: list[dict[str, str]] = field(default_factory=list)

    def accepts(self, name: str) -> bool:
        """Whether detail segment ``name`` belongs to this group (else it opens a new one)."""
        if self.obr is not None or self.rxd is not None:
            return False
        if name == "OBR":
            return self.rxo is None and self.rxe is None and not self.rxa
        if name == "RXO":
            return self.rxo is None and self.rxe is None and not self.rxa
        if name == "RXE":
            return self.rxe is None and not self.rxa
        return True  # RXD, RXA after the order detail


def _eip_identifiers(eip: Composite) -> list[Json]:
    """EIP (placer^filler, each an EI in subcomponents) -> PLAC and FILL identifiers."""
    found = []
    for component, type_code in ((1, "PLAC"), (2, "FILL")):
        ei = Composite(
            (
                (eip.get(component, 1),),
                (eip.get(component, 2),),
                (eip.get(component, 3),),
                (eip.get(component, 4),),
            )
        )
        identifier = ei_identifier(ei, type_code)
        if identifier is not None:
            found.append(identifier)
    return found


def _quantity(amount: str, units: Composite) -> Json | None:
    number = parse_number(amount)
    return quantity(number, units) if number is not None else None


def _unsigned(number: float | None) -> int | None:
    """A FHIR unsignedInt (refills: RXE-12, RXO-13); None for a negative or oversized count."""
    if number is None or not 0 <= number <= POSITIVE_INT_MAX:
        return None
    return int(number)


def _order_identifiers(orc: Segment | None) -> list[Json]:
    if orc is None:
        return []
    return [i for i in (ei_identifier(orc.first(2), "PLAC"), ei_identifier(orc.first(3), "FILL")) if i]


def _order_status(orc: Segment | None) -> str:
    if orc is None:
        return "unknown"
    status = workflow_vocab.ORDER_STATUS.get(orc.value(5).upper()) or workflow_vocab.ORDER_CONTROL_STATUS.get(
        orc.value(1).upper(), "unknown"
    )
    return _MEDICATION_REQUEST_STATUS.get(status, "unknown")


PERFORMER_FUNCTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0443"


def _medication_requester(group: _Group, ctx: Context) -> Json | None:
    """RXO-14 ordering provider (IG RXO[MedicationRequest] requester(Practitioner)); else ORC-12,
    the same person in the ORC, read as ORC[ServiceRequest] reads it for other orders."""
    if group.rxo is not None:
        found = staff.xcn_practitioner(group.rxo.first(14), ctx)
        if found is not None:
            return found
    return staff.xcn_practitioner(group.orc.first(12), ctx) if group.orc is not None else None


def _administration_performers(group: _Group, ctx: Context) -> list[Json]:
    """ORC-12 -> MedicationAdministration.performer, function OP (IG ORC[MedicationAdministration])."""
    if group.orc is None:
        return []
    function = {"coding": [{"system": PERFORMER_FUNCTION_SYSTEM, "code": "OP"}]}
    actors = (staff.xcn_practitioner(x, ctx) for x in group.orc.repetitions(12))
    return [{"function": function, "actor": actor} for actor in actors if actor is not None]


def _group_id(resource_type: str, group: _Group, ctx: Context, *extra: str) -> str:
    preferred = None
    if group.orc is not None:
        for role, no in (("filler", 3), ("placer", 2)):
            ei = group.orc.first(no)
            if ei.get(1):
                preferred = ids.resource_id(resource_type, role, ei.get(2) or ei.get(3), ei.get(1), *extra)
                break
    return ctx.unique_id(resource_type, preferred, "group", str(group.index), *extra)


class _Walker:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.first_pid = next((s for s in ctx.message.segments[1:] if s.name == "PID"), None)
        self.patient: PatientRef | None = None
        self.group: _Group | None = None
        self.groups = 0
        self.last: Json | None = None  # the resource a following NTE annotates
        self.specimen_id: str | None = None  # the last SPM's, until the next SPM or PID
        # OUL^R22/R24 put the ORC after its OBR (SPECIMEN/ORDER: OBR, [ORC]); elsewhere ORC leads.
        self.orc_follows_obr = ctx.message.msh.value(9, 1).upper() == "OUL"

    # -- subjects ---------------------------------------------------------------------------

    def take_pid(self, pid: Segment) -> None:
        if not pid.has_content():
            self.ctx.skip_always(pid)
            return
        try:
            self.patient = map_pid(pid, self.ctx)
        except MappingError:
            self.ctx.skip(pid)  # unreadable PID: reported, and nothing hangs off it

    def current(self) -> PatientRef | None:
        if self.patient is None and self.first_pid is not None:
            first, self.first_pid = self.first_pid, None
            self.take_pid(first)
        return self.patient

    # -- order groups ---------------------------------------------------------------------------

    def open(self, orc: Segment | None) -> _Group:
        self.close()
        self.groups += 1
        self.group = _Group(self.current(), self.groups, orc=orc)
        return self.group

    def close(self) -> None:
        group, self.group = self.group, None
        if group is None:
            return
        segments = [s for s in (group.orc, group.obr, group.rxo, group.rxe, group.rxd, *group.rxa) if s]
        if group.patient is None:
            for seg in [*segments, *([group.rxr] if group.rxr else [])]:
                self.ctx.skip(seg)
            return
        if group.rxo is None and group.rxe is None and group.rxd is None and not group.rxa:
            order = Order(group.orc, group.obr, group.patient, group.index)
            order.notes, order.supporting = group.notes, group.supporting
            build_service_request(order, self.ctx)
            return
        self._medication(group, group.patient)

    def _medication(self, group: _Group, patient: PatientRef) -> None:
        ctx = self.ctx
        if group.orc is not None:
            ctx.mapped(group.orc, "ORC:Medication")
        route = cwe_concept(group.rxr.first(1)) if group.rxr is not None else None
        site = cwe_concept(group.rxr.first(2)) if group.rxr is not None else None
        if group.rxr is not None:
            ctx.mapped(group.rxr, "RXR")
        code: Json | None = None
        request_id: str | None = None
        notes = [{"text": n} for n in group.notes]
        if group.rxe is not None or group.rxo is not None:
            rxe, rxo = group.rxe, group.rxo
            if rxe is not None:
                ctx.mapped(rxe, "RXE")
                code = cwe_concept(rxe.first(2))
                dose = _quantity(rxe.value(3), rxe.first(5))
                dispense = _quantity(rxe.value(10), rxe.first(11))
                repeats = parse_number(rxe.value(12))
            if rxo is not None:
                ctx.mapped(rxo, "RXO")
                code = code or cwe_concept(rxo.first(1))
                if rxe is None:
                    dose = _quantity(rxo.value(2), rxo.first(4))
                    dispense = _quantity(rxo.value(11), rxo.first(12))
                    repeats = parse_number(rxo.value(13))
            dosage = {
                k: v
                for k, v in (
                    ("route", route),
                    ("site", site),
                    ("doseAndRate", [{"doseQuantity": dose}] if dose else None),
                )
                if v
            }
            request_id = _group_id("MedicationRequest", group, ctx)
            ctx.add(
                resource(
                    "MedicationRequest",
                    request_id,
                    {
                        "identifier": _order_identifiers(group.orc),
                        "status": _order_status(group.orc),
                        "intent": "order",
                        "medicationCodeableConcept": code or data_absent_concept(),
                        "subject": patient.subject,
                        "encounter": patient.encounter,
                        "authoredOn": to_date_time(group.orc.value(9), ctx.zone) if group.orc else None,
                        "requester": _medication_requester(group, ctx),
                        "note": notes,
                        "dosageInstruction": [dosage] if dosage else None,
                        "dispenseRequest": {
                            k: v
                            for k, v in (
                                ("quantity", dispense),
                                ("numberOfRepeatsAllowed", _unsigned(repeats)),
                            )
                            if v is not None
                        },
                    },
                )
            )
            notes = []
        if group.rxd is not None:
            rxd = group.rxd
            ctx.mapped(rxd, "RXD")
            ctx.add(
                resource(
                    "MedicationDispense",
                    _group_id("MedicationDispense", group, ctx),
                    {
                        "identifier": _order_identifiers(group.orc) if request_id is None else None,
                        "status": "completed",
                        "medicationCodeableConcept": cwe_concept(rxd.first(2))
                        or code
                        or data_absent_concept(),
                        "subject": patient.subject,
                        "context": patient.encounter,
                        "authorizingPrescription": [ids.reference("MedicationRequest", request_id)]
                        if request_id
                        else None,
                        "quantity": _quantity(rxd.value(4), rxd.first(5)),
                        "whenHandedOver": to_date_time(rxd.value(3), ctx.zone),
                        "note": notes,
                    },
                )
            )
            notes = []
        for number, rxa in enumerate(group.rxa, 1):
            ctx.mapped(rxa, "RXA:MedicationAdministration")
            start, end = to_date_time(rxa.value(3), ctx.zone), to_date_time(rxa.value(4), ctx.zone)
            effective: Json
            if start and end and end != start:
                effective = {"effectivePeriod": {"start": start, "end": end}}
            elif start:
                effective = {"effectiveDateTime": start}
            else:
                effective = {"effectivePeriod": {"end": end}} if end else {}
            if not effective:
                ctx.skip(rxa)  # FHIR requires effective[x]; nothing to say when it happened
                continue
            dosage = {
                k: v
                for k, v in (
                    ("route", route),
                    ("site", site),
                    ("dose", _quantity(rxa.value(6), rxa.first(7))),
                )
                if v
            }
            ctx.add(
                resource(
                    "MedicationAdministration",
                    _group_id("MedicationAdministration", group, ctx, str(number)),
                    {
                        "status": _ADMINISTRATION_STATUS.get(rxa.value(20).upper(), "completed"),
                        "medicationCodeableConcept": cwe_concept(rxa.first(5))
                        or code
                        or data_absent_concept(),
                        "subject": patient.subject,
                        "context": patient.encounter,
                        **effective,
                        "performer": _administration_performers(group, ctx),
                        "request": ids.reference("MedicationRequest", request_id) if request_id else None,
                        "note": notes,
                        "dosage": dosage,
                    },
                )
            )
            notes = []

    # -- single segments ---------------------------------------------------------------------------

    def _add(self, seg: Segment, role: str, built: Json) -> None:
        self.ctx.add(built)
        self.ctx.mapped(seg, role)
        self.last = built

    def specimen(self, spm: Segment, patient: PatientRef) -> None:
        ctx = self.ctx
        start = to_date_time(spm.value(17, 1), ctx.zone)
        end = to_date_time(spm.value(17, 2), ctx.zone)
        collected: Json = {}
        if start and end and start != end:
            collected = {"collectedPeriod": {"start": start, "end": end}}
        elif start or end:
            collected = {"collectedDateTime": start or end}
        collection = {
            k: v
            for k, v in (
                *collected.items(),
                ("method", cwe_concept(spm.first(7))),
                ("bodySite", cwe_concept(spm.first(8))),
            )
            if v
        }
        specimen_id = ctx.unique_id("Specimen", None, "spm", str(ctx.position(spm)))
        built = resource(
            "Specimen",
            specimen_id,
            {
                "identifier": _eip_identifiers(spm.first(2)),
                "type": cwe_concept(spm.first(4)),
                "subject": patient.subject,
                "receivedTime": to_date_time(spm.value(18), ctx.zone),
                "collection": collection,
                "condition": [c for c in (cwe_concept(r) for r in spm.repetitions(24)) if c],
            },
        )
        if set(built) <= {"resourceType", "id", "subject", "identifier"}:
            ctx.skip(spm)  # no type, no times: a Specimen would say nothing
            return
        self._add(spm, "SPM", built)
        self.specimen_id = specimen_id

    def problem(self, prb: Segment, patient: PatientRef) -> None:
        """PRB -> Condition (problem-list-item)."""
        ctx = self.ctx
        code = cwe_concept(prb.first(3))
        if code is None:
            ctx.skip(prb)
            return
        # PRB-1 action code DE (delete): the problem was recorded in error.
        deleted = prb.value(1).upper() == "DE"
        built = resource(
            "Condition",
            ctx.unique_id("Condition", None, "prb", str(ctx.position(prb))),
            {
                "category": [{"coding": [{"system": _CONDITION_CATEGORY, "code": "problem-list-item"}]}],
                "code": code,
                "subject": patient.subject,
                "verificationStatus": {
                    "coding": [{"system": _VERIFICATION_STATUS, "code": "entered-in-error"}]
                }
                if deleted
                else None,
                "onsetDateTime": to_date_time(prb.value(16), ctx.zone),
                "recordedDate": to_date_time(prb.value(2), ctx.zone),
            },
        )
        self._add(prb, "PRB", built)

    def clinical(self, seg: Segment, patient: PatientRef) -> None:
        """AL1, DG1, PR1 by their shared builders (``mapping.clinical``)."""
        build = {"AL1": map_al1, "DG1": map_dg1, "PR1": map_pr1}[seg.name]
        built = build(seg, patient, self.ctx)
        if built is None:
            self.ctx.skip(seg)
            return
        self.last = built

    def charge(self, ft1: Segment, patient: PatientRef) -> None:
        """FT1 -> ChargeItem (DFT^P03): FT1-7 transaction code, FT1-4 date, FT1-10 quantity."""
        ctx = self.ctx
        code = cwe_concept(ft1.first(7))
        if code is None:
            ctx.skip(ft1)
            return
        start, end = to_date_time(ft1.value(4, 1), ctx.zone), to_date_time(ft1.value(4, 2), ctx.zone)
        occurrence: Json = {}
        if start and end and start != end:
            occurrence = {"occurrencePeriod": {"start": start, "end": end}}
        elif start:
            occurrence = {"occurrenceDateTime": start}
        count = parse_number(ft1.value(10))
        built = resource(
            "ChargeItem",
            ctx.unique_id("ChargeItem", None, "ft1", str(ctx.position(ft1))),
            {
                "status": "billable",
                "code": code,
                "subject": patient.subject,
                "context": patient.encounter,
                **occurrence,
                "quantity": {"value": count} if count is not None else None,
            },
        )
        self._add(ft1, "FT1", built)

    def observation(self, obx: Segment, patient: PatientRef) -> None:
        ctx = self.ctx
        group = self.group
        observation_id = ctx.unique_id("Observation", None, "generic-obx", str(ctx.position(obx)))
        observation = build_observation(obx, observation_id, patient, ctx)
        if self.specimen_id is not None:
            observation["specimen"] = ids.reference("Specimen", self.specimen_id)
        if group is not None:
            group.supporting.append(ids.reference("Observation", observation_id))
        self._add(obx, "OBX:Observation", observation)

    def note(self, nte: Segment) -> None:
        if self.last is not None:
            attach_note(self.last, nte, self.ctx)
            return
        if self.group is not None and self.group.patient is not None:
            text = note_text(nte)
            if text:
                self.group.notes.append(text)
                self.ctx.mapped(nte, "NTE")
                return
        self.ctx.skip(nte)

    # -- the walk ---------------------------------------------------------------------------

    def walk(self) -> None:
        for seg in self.ctx.message.segments[1:]:
            self.step(seg)
        self.close()

    def step(self, seg: Segment) -> None:
        if seg.name != "NTE":
            self.last = None  # a note belongs to the segment right before it
        if (take := _SEGMENT_STEPS.get(seg.name)) is not None:
            take(self, seg)
        elif (bound := _PATIENT_SEGMENTS.get(seg.name)) is not None:
            patient = self.current()
            if patient is None or bound(self, seg, patient) is False:
                self.ctx.skip(seg)
        else:
            self.ctx.skip(seg)

    def pid(self, seg: Segment) -> None:
        self.close()
        self.first_pid = None
        self.specimen_id = None
        self.take_pid(seg)

    def pv1(self, seg: Segment) -> None:
        patient = self.patient
        if patient is not None and patient.encounter_id is None and seg.has_content():
            map_pv1(seg, patient, self.ctx)
        else:
            self.ctx.skip(seg)

    def visit_detail(self, seg: Segment) -> None:
        mapper = map_pd1 if seg.name == "PD1" else map_pv2
        if not mapper(seg, self.patient, self.ctx):
            self.ctx.skip(seg)

    def orc(self, seg: Segment) -> None:
        group = self.group
        if self.orc_follows_obr and group is not None and group.obr is not None and group.orc is None:
            group.orc = seg
        else:
            self.open(seg)

    def rxr(self, seg: Segment) -> None:
        group = self.group
        if group is not None and group.rxr is None and group.obr is None:
            group.rxr = seg
        else:
            self.ctx.skip(seg)

    def detail(self, seg: Segment) -> None:
        group = self.group
        if group is None or not group.accepts(seg.name):
            group = self.open(None)
        if seg.name == "RXA":
            group.rxa.append(seg)
        else:
            setattr(group, seg.name.lower(), seg)  # obr, rxo, rxe, rxd

    def observation_segment(self, obx: Segment, patient: PatientRef) -> bool:
        if not (obx.value(3) or obx.raw(5)):
            return False
        self.observation(obx, patient)
        return True

    def insurance(self, in1: Segment, patient: PatientRef) -> bool:
        return map_in1(in1, patient, self.ctx.position(in1), self.ctx)


# How the walk takes each segment it maps: the segments that shape the walk (patient, visit,
# order groups) ...
_SEGMENT_STEPS: dict[str, Callable[[_Walker, Segment], None]] = {
    "NTE": _Walker.note,
    "PID": _Walker.pid,
    "PV1": _Walker.pv1,
    "PD1": _Walker.visit_detail,
    "PV2": _Walker.visit_detail,
    "ORC": _Walker.orc,
    "RXR": _Walker.rxr,
    **dict.fromkeys(_DETAILS, _Walker.detail),
}
# ... and those mapped under the current patient (skipped without one, or when the map
# answers False: nothing in the segment to map).
_PATIENT_SEGMENTS: dict[str, Callable[[_Walker, Segment, PatientRef], bool | None]] = {
    "OBX": _Walker.observation_segment,
    "SPM": _Walker.specimen,
    "PRB": _Walker.problem,
    "AL1": _Walker.clinical,
    "DG1": _Walker.clinical,
    "PR1": _Walker.clinical,
    "FT1": _Walker.charge,
    "IN1": _Walker.insurance,
}


def map_generic(ctx: Context) -> None:
    """Map every segment that has a segment map, wherever it appears; report the rest."""
    _Walker(ctx).walk()
