"""PID/PV1 handling shared by the order, document, schedule and immunization maps."""

from __future__ import annotations

from core.errors import MappingError
from mapping.context import Context, PatientRef
from mapping.encounter import map_pv1
from mapping.hl7.parse import Segment
from mapping.patient import map_pid


class Subjects:
    """The patient (and visit) that later segments of a message belong to."""

    def __init__(self, ctx: Context, what: str) -> None:
        self._ctx = ctx
        first = next((s for s in ctx.message.segments[1:] if s.name == "PID"), None)
        if first is None:
            raise MappingError(f"no PID segment in {what}")
        self._first_pid = first
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

    def current(self) -> PatientRef:
        """The current patient; segments before the first PID belong to the message's patient."""
        if self.patient is None:
            return self.take_pid(self._first_pid)
        return self.patient
