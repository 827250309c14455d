"""SIU^S12-S26: SCH (+ TQ1, AIS, NTE) -> Appointment (IG SCH[Appointment], AIS[Appointment],
NTE[Appointment-Comment]); PID -> Patient, a participant of the Appointment; PV1 -> Encounter;
OBX in the patient group -> Observation (IG OBX[Observation]).

AIG/AIL/AIP name equipment, rooms and staff: resources this map does not create, so they are
reported. When the times are incomplete, the end is the start plus the duration (SCH-9/10,
else AIS-7/8), so that a booked Appointment has both (FHIR invariant app-3).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from core.errors import MappingError
from mapping import ids, workflow_vocab
from mapping.context import Context
from mapping.hl7.datatypes import Json, cwe_concept, ei_identifier, resource
from mapping.hl7.dtm import to_instant
from mapping.hl7.numeric import POSITIVE_INT_MAX, parse_number
from mapping.hl7.parse import Segment
from mapping.observation import build_observation
from mapping.subject import Subjects

SCHEDULE_TRIGGERS = frozenset(f"S{n:02d}" for n in range(12, 27))

_MINUTES_PER_UNIT = {
    "MIN": 1.0,
    "M": 1.0,
    "H": 60.0,
    "HR": 60.0,
    "HOUR": 60.0,
    "S": 1 / 60,
    "SEC": 1 / 60,
    "D": 1440.0,
}


def _minutes(amount: str, units: str) -> int | None:
    number = parse_number(amount)
    factor = _MINUTES_PER_UNIT.get(units.upper() or "MIN")
    if number is None or factor is None or number <= 0:
        return None
    try:
        minutes = round(float(number) * factor)
    except OverflowError:  # a number beyond any float: no duration at all
        return None
    # Appointment.minutesDuration is a positiveInt (at most 2^31 - 1).
    return minutes if 1 <= minutes <= POSITIVE_INT_MAX else None


def _times(
    sch: Segment, tq1: Segment | None, ais: Segment | None, ctx: Context
) -> tuple[str | None, str | None]:
    start = to_instant(sch.value(11, 4), ctx.zone)
    end = to_instant(sch.value(11, 5), ctx.zone)
    if tq1 is not None:
        start = start or to_instant(tq1.value(7), ctx.zone)
        end = end or to_instant(tq1.value(8), ctx.zone)
    if ais is not None:
        start = start or to_instant(ais.value(4), ctx.zone)
    return start, end


def _duration(sch: Segment, ais: Segment | None) -> int | None:
    found = _minutes(sch.value(9), sch.value(10))
    if found is None and ais is not None:
        found = _minutes(ais.value(7), ais.value(8))
    return found


def _end_from(start: str | None, minutes: int | None) -> str | None:
    if start is None or minutes is None:
        return None
    try:
        begun = datetime.fromisoformat(start.replace("Z", "+00:00"))
    except ValueError:
        return None
    try:
        end = begun + timedelta(minutes=minutes)
    except OverflowError:  # past year 9999: no end rather than a failed message
        return None
    return end.isoformat().replace("+00:00", "Z")


def _status(sch: Segment, trigger: str) -> str:
    by_code = workflow_vocab.APPOINTMENT_STATUS.get(sch.value(25).upper())
    return by_code or workflow_vocab.APPOINTMENT_EVENT_STATUS.get(trigger, "booked")


def _reason_and_type(sch: Segment) -> Json:
    found: Json = {}
    reason = cwe_concept(sch.first(7))
    if reason is not None:
        key = "appointmentType" if sch.value(7, 3).upper() == "HL70277" else "reasonCode"
        found[key] = [reason] if key == "reasonCode" else reason
    kind = cwe_concept(sch.first(8))
    if kind is not None and "appointmentType" not in found:
        found["appointmentType"] = kind
    return found


def map_siu(ctx: Context) -> None:
    subjects = Subjects(ctx, "a schedule message")
    sch: Segment | None = None
    tq1: Segment | None = None
    ais: Segment | None = None
    comments: list[str] = []
    notes_open = False  # an NTE belongs to the SCH or AIS just before it

    for seg in ctx.message.segments[1:]:
        name = seg.name
        if name == "SCH" and sch is None:
            sch, notes_open = seg, True
            ctx.mapped(seg, "SCH")
        elif name == "TQ1" and sch is not None and tq1 is None and seg.has_content():
            tq1 = seg
            ctx.mapped(seg, "TQ1:Appointment")
        elif name == "NTE" and notes_open and seg.texts(3):
            comments.append("\n".join(seg.texts(3)))
            ctx.mapped(seg, "NTE")
        elif name == "PID":
            subjects.take_pid(seg)
            notes_open = False
        elif name in ("PV1", "PV2") and subjects.take(seg):
            notes_open = False
        elif name == "OBX" and subjects.patient is not None and (seg.value(3) or seg.raw(5)):
            observation_id = ctx.unique_id("Observation", None, "siu-obx", str(ctx.position(seg)))
            ctx.add(build_observation(seg, observation_id, subjects.patient, ctx))
            ctx.mapped(seg, "OBX:Observation")
            notes_open = False
        elif name == "AIS" and ais is None:
            ais, notes_open = seg, True
            ctx.mapped(seg, "AIS")
        else:
            if name != "NTE":
                notes_open = False
            ctx.skip(seg)
    if sch is None:
        raise MappingError("no SCH segment in a schedule message")
    _add_appointment(sch, tq1, ais, comments, subjects, ctx)


def _add_appointment(
    sch: Segment,
    tq1: Segment | None,
    ais: Segment | None,
    comments: list[str],
    subjects: Subjects,
    ctx: Context,
) -> None:
    subjects.current()  # a PID is required; the first one when none came before the SCH
    start, end = _times(sch, tq1, ais, ctx)
    minutes = _duration(sch, ais)
    end = end or _end_from(start, minutes)
    filler, placer = sch.first(2), sch.first(1)
    basis = next(
        (
            ("\x1f".join((r, e.get(2), e.get(1))))
            for r, e in (("filler", filler), ("placer", placer))
            if e.get(1)
        ),
        None,
    )
    preferred = ids.resource_id("Appointment", basis) if basis else None
    appointment_id = ctx.unique_id("Appointment", preferred, "sch")
    identifiers = [i for i in (ei_identifier(placer, "PLAC"), ei_identifier(filler, "FILL")) if i]
    appointment = resource(
        "Appointment",
        appointment_id,
        {
            "identifier": identifiers,
            "status": _status(sch, ctx.trigger),
            "serviceType": [c for c in [cwe_concept(ais.first(3))] if c] if ais is not None else None,
            **_reason_and_type(sch),
            "start": start,
            "end": end,
            "minutesDuration": minutes,
            "comment": "\n".join(comments),
            "participant": [{"actor": p.subject, "status": "accepted"} for p in subjects.all],
        },
    )
    ctx.add(appointment)
