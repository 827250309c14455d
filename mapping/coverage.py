"""The mapping report: which segments, and which fields of mapped segments, no rule covered.

``MAPPED_FIELDS`` names, per rule set (a segment mapped into one resource type), the fields a
rule reads. A field outside that set that carries content is reported. Z-segments are always
reported unless a site rule (``mapping.site``) handled them.
"""

from __future__ import annotations

from typing import Final

from mapping.context import Context
from mapping.model import MappedMessage, UnmappedItem
from mapping.subject import unlinked_reasons

# Field 1 of most segments is a set ID: plumbing, never reported.
MAPPED_FIELDS: Final[dict[str, frozenset[int]]] = {
    "PID": frozenset({1, 2, 3, 4, 5, 7, 8, 9, 11, 13, 14, 15, 16, 17, 29, 30}),
    # mapping.encounter / mapping.visit; PV1-53/54 (EpisodeOfCare) are left to the report.
    "PV1": frozenset(
        {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 19, 36, 37, 38, 40, 42, 44, 45, 50, 52}
    ),
    "PV2": frozenset({1, 3, 8, 9, 11, 12, 13, 22, 25, 38}),
    "PD1": frozenset({3, 4, 6, 14}),
    # mapping.care / mapping.visit: ROL-1 (role instance id), 11-13 (address, phone, location of
    # the person) are left to the report.
    "ROL:Patient": frozenset({3, 4, 5, 6, 14}),
    "ROL:Encounter": frozenset({3, 4, 5, 6, 14}),
    "NK1": frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 20, 30, 31, 32, 33, 37, 40, 41}),
    # mapping.related: an organisation's NK1 as Patient.contact (NK1-30/31/32 left to the report).
    "NK1:Organization": frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 15, 40, 41}),
    "OBR:DiagnosticReport": frozenset({1, 2, 3, 4, 7, 8, 22, 25}),
    "OBR:ServiceRequest": frozenset({1, 2, 3, 4, 5, 6, 11, 31}),
    "OBX:Observation": frozenset({1, 2, 3, 4, 5, 6, 7, 8, 11, 14}),
    "OBX:Text": frozenset({1, 2, 3, 4, 5, 11}),
    "OBX:DocumentReference": frozenset({1, 2, 3, 4, 5, 11}),
    "NTE": frozenset({1, 3}),
    "ORC:ServiceRequest": frozenset({1, 2, 3, 4, 5, 9}),
    "ORC:Immunization": frozenset({1, 2, 3}),
    "TXA": frozenset({1, 2, 3, 6, 12, 16, 17, 19, 25}),
    "SCH": frozenset({1, 2, 7, 8, 9, 10, 11, 25}),
    "TQ1:Appointment": frozenset({1, 7, 8}),
    "AIS": frozenset({1, 3, 4}),
    "RXA": frozenset({1, 2, 3, 5, 6, 7, 15, 16, 18, 19, 20, 21, 22}),
    "RXR": frozenset({1, 2}),
    "MRG": frozenset({1, 7}),
    # mapping.insurance: IN1-3 keys the payer Organization; IN1-16 is mapped only for "self".
    "IN1": frozenset({1, 2, 3, 4, 5, 10, 12, 13, 15, 17, 49}),
    "IN1:SelfInsured": frozenset({1, 2, 3, 4, 5, 10, 12, 13, 15, 16, 17, 49}),
    # mapping.generic
    "ORC:Medication": frozenset({1, 2, 3, 5, 9}),
    "RXO": frozenset({1, 2, 4, 11, 12, 13}),
    "RXE": frozenset({2, 3, 5, 10, 11, 12}),
    "RXD": frozenset({1, 2, 3, 4, 5}),
    "RXA:MedicationAdministration": frozenset({1, 2, 3, 4, 5, 6, 7, 20}),
    "SPM": frozenset({1, 2, 4, 7, 8, 17, 18, 24}),
    "PRB": frozenset({1, 2, 3, 16}),
    "DG1": frozenset({1, 3, 5}),
    "AL1": frozenset({1, 2, 3, 4, 5, 6}),
    "PR1": frozenset({1, 3, 5}),
    "FT1": frozenset({1, 4, 7, 10}),
}

# Rule sets of segments whose field 1 is data, not a set ID (RXE-1 quantity/timing, PRB-1
# action code, PV2-1 prior pending location, PD1-1 living dependency, ROL-1 role instance id):
# reported like any other field when no rule reads it.
FIELD_ONE_IS_DATA: Final[frozenset[str]] = frozenset(
    {"RXE", "PRB", "PV2", "PD1", "ROL:Patient", "ROL:Encounter"}
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
        rules = MAPPED_FIELDS.get(role, frozenset())
        valued = segment.valued_fields()
        if role in FIELD_ONE_IS_DATA and segment.field_has_content(1):
            valued = [1, *valued]
        fields = tuple(n for n in valued if n not in rules and (index, n) not in ctx.handled_fields)
        if fields:
            items.append(UnmappedItem(segment.name, index, fields))
    return tuple(items)


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
