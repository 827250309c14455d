"""The mapping report: which segments, and which fields of mapped segments, no rule covered.

``MAPPED_FIELDS`` names, per rule set (a segment mapped into one resource type), the fields a
rule reads. A field outside that set that carries content is reported. Z-segments are always
reported unless a site rule (``mapping.site``) handled them.
"""

from __future__ import annotations

from typing import Final

from mapping.context import Context
from mapping.hl7.parse import Segment
from mapping.model import MappedMessage, SegmentUse, UnmappedItem
from mapping.subject import unlinked_reasons

# Field 1 of most segments is a set ID: plumbing, never reported.
MAPPED_FIELDS: Final[dict[str, frozenset[int]]] = {
    # The header: delimiters, sender (ids' basis), type, control id, version, character set.
    "MSH": frozenset({1, 2, 3, 4, 9, 10, 12, 18}),
    "PID": frozenset({1, 2, 3, 4, 5, 7, 8, 9, 11, 13, 14, 15, 16, 17, 29, 30}),
    # mapping.encounter / mapping.visit / mapping.visit_links.
    "PV1": frozenset(
        {
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
            9,
            10,
            11,
            13,
            14,
            15,
            16,
            17,
            19,
            20,
            36,
            37,
            38,
            40,
            42,
            43,
            44,
            45,
            50,
            52,
            53,
            54,
        }
    ),
    "PV2": frozenset({1, 3, 8, 9, 11, 12, 13, 22, 25, 38}),
    "PD1": frozenset({3, 4, 6, 7, 14}),
    # mapping.rol: a PractitionerRole (general practitioner, visit participant) or a CareTeam member.
    "ROL:Patient": frozenset({1, 3, 4, 5, 6, 11, 12, 13, 14}),
    "ROL:Encounter": frozenset({1, 3, 4, 5, 6, 11, 12, 13, 14}),
    "ROL:CareTeam": frozenset({3, 4, 5, 6, 8, 9, 10, 12, 14}),
    "NK1": frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 20, 30, 31, 32, 33, 37, 40, 41}),
    # mapping.related: an organisation's NK1 as Patient.contact (NK1-30/31/32 left to the report).
    "NK1:Organization": frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 15, 40, 41}),
    "OBR:DiagnosticReport": frozenset({1, 2, 3, 4, 7, 8, 22, 25, 32, 34, 35}),
    "OBR:ServiceRequest": frozenset({1, 2, 3, 4, 5, 6, 11, 16, 17, 31}),
    "OBX:Observation": frozenset({1, 2, 3, 4, 5, 6, 7, 8, 11, 14, 15, 16, 23, 24, 25}),
    "OBX:Text": frozenset({1, 2, 3, 4, 5, 11}),
    "OBX:DocumentReference": frozenset({1, 2, 3, 4, 5, 11}),
    "NTE": frozenset({1, 3}),
    "ORC:ServiceRequest": frozenset({1, 2, 3, 4, 5, 9, 12, 14, 21, 22, 23, 24}),
    "ORC:Immunization": frozenset({1, 2, 3, 12}),
    "TXA": frozenset({1, 2, 3, 6, 9, 10, 12, 16, 17, 19, 25}),
    "SCH": frozenset({1, 2, 7, 8, 9, 10, 11, 25}),
    "TQ1:Appointment": frozenset({1, 7, 8}),
    "AIS": frozenset({1, 3, 4}),
    "RXA": frozenset({1, 2, 3, 5, 6, 7, 10, 15, 16, 18, 19, 20, 21, 22}),
    "RXR": frozenset({1, 2}),
    "MRG": frozenset({1, 7}),
    # mapping.insurance: IN1-3 keys the payer Organization; IN1-16/18/19 make the subscriber
    # RelatedPerson unless IN1-17 is "self" (then IN1-16 is the patient, 18/19 repeat PID's).
    "IN1": frozenset({1, 2, 3, 4, 5, 10, 11, 12, 13, 15, 16, 17, 18, 19, 49}),
    "IN1:SelfInsured": frozenset({1, 2, 3, 4, 5, 10, 11, 12, 13, 15, 16, 17, 49}),
    # mapping.clinical (ADT and the segment-driven map). DG1-6/15 need the visit's Encounter;
    # PR1-7 is read with PR1-5 (the period's end).
    "DG1": frozenset({1, 3, 4, 5, 6, 15, 16, 19, 20, 21, 22}),
    "DG1:Condition": frozenset({1, 3, 4, 5, 16, 19, 20, 21, 22}),
    "AL1": frozenset({1, 2, 3, 4, 5, 6}),
    "PR1": frozenset({1, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 19, 23, 25}),
    # mapping.generic
    # ORC-12: MedicationRequest.requester (when RXO-14 names no one), MedicationAdministration.performer.
    "ORC:Medication": frozenset({1, 2, 3, 5, 9, 12}),
    "RXO": frozenset({1, 2, 4, 11, 12, 13, 14}),
    "RXE": frozenset({2, 3, 5, 10, 11, 12}),
    "RXD": frozenset({1, 2, 3, 4, 5}),
    "RXA:MedicationAdministration": frozenset({1, 2, 3, 4, 5, 6, 7, 20}),
    "SPM": frozenset({1, 2, 4, 7, 8, 17, 18, 24}),
    "PRB": frozenset({1, 2, 3, 16}),
    "FT1": frozenset({1, 4, 7, 10}),
}

# Rule sets of segments whose field 1 is data, not a set ID (RXE-1 quantity/timing, PRB-1
# action code, PV2-1 prior pending location, PD1-1 living dependency, ROL-1 role instance id):
# reported like any other field when no rule reads it.
FIELD_ONE_IS_DATA: Final[frozenset[str]] = frozenset(
    {"RXE", "PRB", "PV2", "PD1", "ROL:Patient", "ROL:Encounter", "ROL:CareTeam"}
)


def build_report(ctx: Context) -> tuple[UnmappedItem, ...]:
    """Every unmapped segment and every unmapped field of a mapped segment, in message order."""
    items: list[UnmappedItem] = []
    unmapped = set(ctx.unmapped_at)
    for index, segment in enumerate(ctx.message.segments):
        if index == 0 or index in ctx.handled_segments:
            continue
        if index in unmapped or (segment.name.startswith("Z") and index not in ctx.roles):
            items.append(UnmappedItem(segment.name, index))
            continue
        role = ctx.roles.get(index)
        if role is None:
            continue
        valued = _valued(segment, role)
        fields = tuple(n for n in valued if not _read(ctx, index, role, n))
        if fields:
            items.append(UnmappedItem(segment.name, index, fields))
    return tuple(items)


def build_usage(ctx: Context) -> tuple[SegmentUse, ...]:
    """Per segment with content, the rule set that mapped it and which valued fields no rule read
    (a segment no rule mapped has role None and all its valued fields unmapped)."""
    uses: list[SegmentUse] = []
    for index, segment in enumerate(ctx.message.segments):
        if index in ctx.handled_segments:
            continue
        role = "MSH" if index == 0 else ctx.roles.get(index)
        valued = _valued(segment, role)
        if not valued and role is None:
            continue  # an empty segment (a bare set ID) says nothing about breadth
        unmapped = tuple(n for n in valued if role is None or not _read(ctx, index, role, n))
        uses.append(SegmentUse(segment.name, index, role, tuple(valued), unmapped))
    return tuple(uses)


def _valued(segment: Segment, role: str | None) -> list[int]:
    valued = segment.valued_fields()
    if segment.name == "MSH":
        return [1, 2, *valued]  # the delimiters are MSH-1 and MSH-2
    if role in FIELD_ONE_IS_DATA and segment.field_has_content(1):
        return [1, *valued]
    return valued


def _read(ctx: Context, index: int, role: str, field_no: int) -> bool:
    return field_no in MAPPED_FIELDS.get(role, frozenset()) or (index, field_no) in ctx.handled_fields


def report_lines(mapped: MappedMessage) -> list[str]:
    """The report as one line per item, e.g. ``"ZPI (segment 5): not mapped"`` or
    ``"PID (segment 2): fields 6, 10 not mapped"``. Names and numbers only, never values."""
    # Why a patient is scoped to its message (issue 19) comes first: it says what the rest hangs off.
    lines = unlinked_reasons(mapped)
    for item in mapped.report:
        where = f"{item.segment} (segment {item.index})"
        if item.whole_segment:
            lines.append(f"{where}: not mapped")
        else:
            numbers = ", ".join(f"{item.segment}-{n}" for n in item.fields)
            lines.append(f"{where}: fields {numbers} not mapped")
    return lines
