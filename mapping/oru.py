"""ORU^R01 (and R30-R33, same result structure): Patient, Encounter, one DiagnosticReport per
OBR (IG OBR[DiagnosticReport]) and one Observation per OBX under it.

Text reports (radiology, pathology): when every OBX under an OBR is a text line (TX/FT/ST, no
number), the DiagnosticReport also gets the joined text as ``presentedForm`` (text/plain) and
``conclusion`` (see ``mapping.text_report``); the per-line Observations stay, as the IG maps them.

NK1 -> RelatedPerson of the PID before it (IG ORU_R01 PATIENT.NK1[RelatedPerson]); an NK1 before
any PID has no patient of its own and is reported.

NTE placement: an NTE right after an OBX (or after that OBX's earlier NTEs) becomes a note on
that Observation, as the IG's NTE[Observation] says. An NTE after an OBR describes the whole
order, and R4's DiagnosticReport has no ``note`` (the IG does not map it; ``conclusion`` would
misstate it as the report's finding), so it is left in ``unmapped_segments`` for now, as is an
NTE after PID or any other segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mapping import ids, staff, vocab
from mapping.care import map_pd1
from mapping.context import Context, PatientRef
from mapping.encounter import map_pv1
from mapping.hl7.datatypes import (
    Json,
    code_key,
    cwe_concept,
    data_absent_concept,
    ei_identifier,
    resource,
)
from mapping.hl7.dtm import to_date_time, to_instant
from mapping.hl7.parse import Segment
from mapping.observation import attach_note, build_observation
from mapping.patient import map_pid
from mapping.related import map_nk1
from mapping.subject import detach, unlinked_subject
from mapping.text_report import TextReport
from mapping.visit import map_pv2

RESULT_TRIGGERS = frozenset({"R01", "R30", "R31", "R32", "R33", ""})


@dataclass
class _Report:
    """One OBR and the Observations collected under it until the next OBR/PID."""

    obr: Segment
    index: int
    patient: PatientRef
    resource_id: str
    basis: str | None  # the order's own identity, when it has one (see _report_identity)
    results: list[dict[str, str]] = field(default_factory=list)
    text: TextReport = field(default_factory=TextReport)


def _report_identity(obr: Segment) -> str | None:
    """Filler (else placer) order number with its namespace, plus the OBR-4 code: stable across
    every message about this order (preliminary, final, corrected)."""
    for field_no, role in ((3, "filler"), (2, "placer")):
        ei = obr.first(field_no)
        if ei.get(1):
            return "\x1f".join((role, ei.get(2) or ei.get(3), ei.get(1), code_key(obr.first(4))))
    return None


def _unique_id(resource_type: str, preferred: str | None, positional: tuple[str, ...], ctx: Context) -> str:
    """``preferred`` unless already used in this message (a sender repeating an order or a code),
    then the positional id; positional parts are unique within a message by construction."""
    if preferred is not None and not ctx.taken(resource_type, preferred):
        return preferred
    return ids.resource_id(resource_type, ctx.basis, *positional)


def _open_report(obr: Segment, index: int, patient: PatientRef, ctx: Context) -> _Report:
    basis = _report_identity(obr)
    preferred = ids.resource_id("DiagnosticReport", basis) if basis else None
    set_id = obr.value(1) or str(index)
    report_id = _unique_id("DiagnosticReport", preferred, ("obr", set_id, str(index)), ctx)
    return _Report(obr, index, patient, report_id, basis)


PERFORMER_FUNCTION = "http://hl7.org/fhir/StructureDefinition/event-performerFunction"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
# OBR-34 technician -> SPRF (secondary performer), OBR-35 transcriptionist -> TRANS (IG rows).
_PERFORMER_FIELDS = ((34, "SPRF"), (35, "TRANS"))


def _performers(obr: Segment, ctx: Context) -> list[Json]:
    """OBR-34/35 (NDL, repeating) -> performer PractitionerRoles with their performerFunction."""
    found = []
    for number, function in _PERFORMER_FIELDS:
        for ndl in obr.repetitions(number):
            role = staff.ndl_role(ndl, ctx)
            if role is not None:
                concept = {"coding": [{"system": PARTICIPATION_TYPE, "code": function}]}
                found.append(
                    {**role, "extension": [{"url": PERFORMER_FUNCTION, "valueCodeableConcept": concept}]}
                )
    return found


def _close_report(report: _Report, ctx: Context) -> None:
    obr = report.obr
    ctx.mapped(obr, "OBR:DiagnosticReport")
    start, end = obr.value(7), obr.value(8)
    effective: Json = {}
    if end and to_date_time(end, ctx.zone):
        effective["effectivePeriod"] = {
            k: v
            for k, v in (("start", to_date_time(start, ctx.zone)), ("end", to_date_time(end, ctx.zone)))
            if v
        }
    elif start:
        effective["effectiveDateTime"] = to_date_time(start, ctx.zone)
    identifiers = [
        i for i in (ei_identifier(obr.first(2), "PLAC"), ei_identifier(obr.first(3), "FILL")) if i is not None
    ]
    report_resource = resource(
        "DiagnosticReport",
        report.resource_id,
        {
            "identifier": identifiers,
            **vocab.result_status(obr.value(25), vocab.REPORT_STATUS, vocab.V2_0123),
            "code": cwe_concept(obr.first(4)) or data_absent_concept(),
            "subject": report.patient.subject,
            "encounter": report.patient.encounter,
            **effective,
            "issued": to_instant(obr.value(22), ctx.zone),
            "performer": _performers(obr, ctx),
            # OBR-32 principal result interpreter (IG OBR[DiagnosticReport]).
            "resultsInterpreter": [r for r in (staff.ndl_role(n, ctx) for n in obr.repetitions(32)) if r],
            "result": report.results,
            **report.text.members(),
        },
    )
    ctx.add(report_resource)


def _observation_id(obx: Segment, report: _Report | None, obx_index: int, ctx: Context) -> str:
    obr_index = str(report.index) if report else "0"
    preferred = None
    code = code_key(obx.first(3))
    if report is not None and report.basis is not None and code:
        preferred = ids.resource_id("Observation", report.basis, code, obx.value(4))
    return _unique_id("Observation", preferred, ("obx", obr_index, str(obx_index)), ctx)


def map_oru(ctx: Context) -> None:
    segments = ctx.message.segments[1:]
    first_pid = next((s for s in segments if s.name == "PID"), None)

    patient: PatientRef | None = None
    report: _Report | None = None
    last_observation: Json | None = None
    obr_count = obx_count = 0

    def current_patient() -> PatientRef:
        # Results before the first PID (out-of-order senders) belong to the message's patient;
        # without any PID (reference-lab and public-health feeds) they go without subject.
        if patient is not None:
            return patient
        return map_pid(first_pid, ctx) if first_pid is not None else unlinked_subject(ctx)

    for seg in segments:
        name = seg.name
        if name == "PID":
            if report is not None:
                _close_report(report, ctx)
                report = None
            patient = map_pid(seg, ctx)
            last_observation = None
        elif name == "PV1" and patient is not None and patient.encounter_id is None and seg.has_content():
            map_pv1(seg, patient, ctx)
            last_observation = None
        elif name == "PD1" and map_pd1(seg, patient, ctx):
            last_observation = None  # IG ORU_R01 PATIENT.PD1: PD1[Patient]
        elif name == "PV2" and map_pv2(seg, patient, ctx):
            last_observation = None  # IG ORU_R01 VISIT.PV2: PV2[Encounter]
        elif name == "OBR":
            if report is not None:
                _close_report(report, ctx)
            obr_count += 1
            obx_count = 0
            report = _open_report(seg, obr_count, current_patient(), ctx)
            last_observation = None
        elif name == "OBX":
            obx_count += 1
            if not seg.value(3) and not seg.raw(5):
                ctx.skip(seg)  # neither a code nor a value: nothing to say
                last_observation = None
                continue
            owner = report.patient if report is not None else current_patient()
            observation = build_observation(
                seg,
                _observation_id(seg, report, obx_count, ctx),
                owner,
                ctx,
                report_time=report.obr.value(7) if report is not None else "",
            )
            ctx.add(observation)
            ctx.mapped(seg, "OBX:Observation")
            if report is not None:
                report.results.append(ids.reference("Observation", observation["id"]))
                report.text.add(seg)
            last_observation = observation
        elif name == "NTE" and last_observation is not None:
            attach_note(last_observation, seg, ctx)
        elif name == "NK1" and patient is not None and map_nk1(seg, patient, ctx.position(seg), ctx):
            last_observation = None  # IG ORU_R01 PATIENT.NK1: NK1[RelatedPerson] of the PID before it
        else:
            ctx.skip(seg)
            last_observation = None
    if report is not None:
        _close_report(report, ctx)
    if first_pid is None:
        detach(unlinked_subject(ctx), ctx)
