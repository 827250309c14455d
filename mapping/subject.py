"""PID/PV1 handling shared by the order, document, schedule and immunization maps, and the
patient of a message without PID (issue 19: identity is not a precondition for mapping).

A PID without identifier gets a Patient scoped to its message (``mapping.patient.map_pid``).
A message without PID maps what it carries: result and ADT messages without subject (R4 lets
Observation, DiagnosticReport and Encounter go without one), the others under an empty Patient
scoped to the message (ServiceRequest.subject and Immunization.patient are required). Either
way the message has a patient key (``ids.scoped_key``) that de-identification keys dates and
ids with, and that ``sidecar stats`` counts as ``unlinked``.
"""

from __future__ import annotations

from mapping import ids
from mapping.care import map_pd1
from mapping.context import Context, PatientRef
from mapping.encounter import map_pv1
from mapping.hl7.datatypes import resource
from mapping.hl7.parse import Segment
from mapping.model import MappedMessage
from mapping.patient import map_pid
from mapping.visit import map_pv2

__all__ = [
    "NO_IDENTIFIER_REASON",
    "NO_PID_REASON",
    "Subjects",
    "detach",
    "scoped_patient",
    "unlinked_reasons",
    "unlinked_subject",
]

NO_IDENTIFIER_REASON = "PID without identifier: patient scoped to this message"
NO_PID_REASON = "no PID: patient scoped to this message"


def unlinked_subject(ctx: Context) -> PatientRef:
    """The patient of a message without PID, which no resource names (``detach``): what its
    resources are de-identified under (dates shifted, ids keyed). No Patient resource is made."""
    key = ids.scoped_key(ctx.basis, ids.NO_PID)
    patient_id = ids.resource_id("Patient", key.authority, key.value)
    ctx.patient_keys[patient_id] = key
    return PatientRef(patient_id, key)


def scoped_patient(ctx: Context) -> PatientRef:
    """``unlinked_subject`` with an empty Patient, for resources R4 lets not go without one."""
    patient = unlinked_subject(ctx)
    if not ctx.taken("Patient", patient.resource_id):
        ctx.add(resource("Patient", patient.resource_id, {}))
    return patient


def detach(patient: PatientRef, ctx: Context) -> None:
    """Drop the references to ``unlinked_subject``: it has no Patient resource to point at."""
    subject = patient.subject
    for mapped in ctx.resources:
        if mapped.get("subject") == subject:
            del mapped["subject"]


def unlinked_reasons(mapped: MappedMessage) -> list[str]:
    """The mapping report's lines for the patients scoped to the message, one per patient
    (what ``sidecar stats`` counts as ``unlinked``); they name no value."""
    return [
        NO_PID_REASON if key.value.endswith("|" + ids.NO_PID) else NO_IDENTIFIER_REASON
        for key in mapped.patient_keys.values()
        if key.authority == ids.MESSAGE_SCOPE_AUTHORITY
    ]


class Subjects:
    """The patient (and visit) that later segments of a message belong to."""

    def __init__(self, ctx: Context, what: str) -> None:
        """``what``: the kind of message, e.g. "an order message" (kept for the callers)."""
        self._ctx = ctx
        self.what = what
        # None: the message has no PID, and maps under a patient scoped to it (issue 19).
        self._first_pid = next((s for s in ctx.message.segments[1:] if s.name == "PID"), None)
        self.patient: PatientRef | None = None
        self.all: list[PatientRef] = []

    def take_pid(self, pid: Segment) -> PatientRef:
        self.patient = map_pid(pid, self._ctx)
        if all(p.resource_id != self.patient.resource_id for p in self.all):
            self.all.append(self.patient)
        return self.patient

    def take_pv1(self, pv1: Segment) -> bool:
        """Map a PV1 for the current patient; False when it does not belong to one."""
        patient = self.patient
        if patient is None or patient.encounter_id is not None or not pv1.has_content():
            return False
        map_pv1(pv1, patient, self._ctx)
        return True

    def take(self, seg: Segment) -> bool:
        """PV1 -> the current patient's Encounter, PD1 -> added to the Patient (IG PD1[Patient]),
        PV2 -> added to the Encounter (IG PV2[Encounter]); False when they have none to go to."""
        if seg.name == "PV1":
            return self.take_pv1(seg)
        if seg.name == "PD1":
            return map_pd1(seg, self.patient, self._ctx)
        return seg.name == "PV2" and map_pv2(seg, self.patient, self._ctx)

    def current(self) -> PatientRef:
        """The current patient; segments before the first PID belong to the message's patient."""
        if self.patient is not None:
            return self.patient
        if self._first_pid is not None:
            return self.take_pid(self._first_pid)
        self.patient = scoped_patient(self._ctx)
        self.all.append(self.patient)
        return self.patient
