"""ADT^* (every trigger event): a Patient per PID and an Encounter per PV1 that follows it.

A17 (swap) carries two PID/PV1 pairs; A40 and friends pair each PID with an MRG, which becomes
the merged-away Patient with ``replaces`` / ``replaced-by`` links (see ``mapping.merge``).
OBX -> Observation, NK1 -> RelatedPerson, IN1 -> Coverage (with its payer Organization), AL1 ->
AllergyIntolerance, DG1 -> Condition (listed in the Encounter's diagnosis) and PR1 -> Procedure of
the current patient (IG ADT_A01 OBX[Observation], NK1[RelatedPerson], IN1[Coverage],
AL1[AllergyIntolerance], DG1[Condition], DG1[Encounter], PR1[Procedure]). PD1 adds to the
Patient, PV2 to the Encounter; a ROL right after PID/PD1 names the general practitioner, one
right after PV1/PV2 a participant of the visit (``mapping.care``, ``mapping.visit``). Other
segments (IN2, GT1, ...) are listed in ``unmapped_segments``.
"""

from __future__ import annotations

from mapping.care import map_patient_rol, map_pd1
from mapping.clinical import map_al1, map_dg1, map_pr1
from mapping.context import Context, PatientRef
from mapping.encounter import map_pv1
from mapping.hl7.parse import Segment
from mapping.insurance import map_in1
from mapping.merge import map_mrg
from mapping.observation import build_observation
from mapping.patient import map_pid
from mapping.related import map_nk1
from mapping.subject import detach, unlinked_subject
from mapping.visit import map_encounter_rol, map_pv2

# Segments of the PID and PV1 groups that keep a following ROL at the patient or visit level
# (IG ADT_A01: PID, PD1, ARV, ROL, PRT ... PV1, PV2, ARV, ROL, PRT).
_GROUP_MEMBERS = frozenset({"PD1", "PV2", "ARV", "ROL", "PRT"})


def _map_rol(seg: Segment, level: str | None, patient: PatientRef | None, ctx: Context) -> bool:
    """ROL after PID -> ROL[Patient-GeneralPractitioner], after PV1 -> ROL[Encounter-PractitionerRole];
    a ROL of a procedure or an insurance is left to the report."""
    if level == "PID":
        return map_patient_rol(seg, patient, ctx)
    if level == "PV1":
        return map_encounter_rol(seg, patient, ctx)
    return False


# IG ADT_A01 ALLERGY (AL1), DIAGNOSIS (DG1), PROCEDURE (PR1): resources of the current patient.
_CLINICAL = {"AL1": map_al1, "DG1": map_dg1, "PR1": map_pr1}


def map_adt(ctx: Context) -> None:
    patient: PatientRef | None = None
    # No PID at all (a bed-status A20, a test feed): its visit and observations map without
    # subject, under a patient scoped to the message (issue 19); MRG and NK1 need a Patient.
    has_pid = any(s.name == "PID" for s in ctx.message.segments[1:])
    unlinked = None if has_pid else unlinked_subject(ctx)
    obx_count = 0
    level: str | None = None  # the group (PID or PV1) a ROL belongs to
    for seg in ctx.message.segments[1:]:
        if seg.name in ("PID", "PV1"):
            level = seg.name
        elif seg.name not in _GROUP_MEMBERS:
            level = None
        if seg.name == "PID":
            # A bare "PID|1" (seen in real A17 swaps) names nobody: there is no patient to
            # map and nothing to pseudonymise, so it and its PV1 go to the report instead of
            # failing the whole message.
            patient = map_pid(seg, ctx) if seg.has_content() else None
            if patient is None:
                ctx.skip_always(seg)
        elif (
            seg.name == "OBX" and (owner := patient or unlinked) is not None and (seg.value(3) or seg.raw(5))
        ):
            obx_count += 1
            observation_id = ctx.unique_id("Observation", None, "adt-obx", str(obx_count))
            ctx.add(build_observation(seg, observation_id, owner, ctx))
            ctx.mapped(seg, "OBX:Observation")
        elif seg.name == "MRG" and patient is not None and map_mrg(seg, patient, ctx):
            pass
        elif (
            seg.name == "PV1"
            and (owner := patient or unlinked) is not None
            and owner.encounter_id is None
            and seg.has_content()
        ):
            map_pv1(seg, owner, ctx)
        elif seg.name == "PD1" and map_pd1(seg, patient, ctx):
            pass  # IG ADT_A01 PD1[Patient]
        elif seg.name == "PV2" and map_pv2(seg, patient or unlinked, ctx):
            pass  # IG ADT_A01 PV2[Encounter]
        elif seg.name == "ROL" and _map_rol(seg, level, patient or unlinked, ctx):
            pass
        elif seg.name == "NK1" and patient is not None and map_nk1(seg, patient, ctx.position(seg), ctx):
            pass  # IG ADT_A01 NEXT_OF_KIN: NK1[RelatedPerson]
        elif seg.name == "IN1" and patient is not None and map_in1(seg, patient, ctx.position(seg), ctx):
            pass  # IG ADT_A01 INSURANCE: IN1[Coverage]
        elif seg.name in _CLINICAL and patient is not None and _CLINICAL[seg.name](seg, patient, ctx):
            pass
        else:
            ctx.skip(seg)
    if unlinked is not None:
        detach(unlinked, ctx)
