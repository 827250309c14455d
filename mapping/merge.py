"""MRG -> the merged-away Patient and the links between the two (ADT^A34/A35/A39/A40/A47...).

After the IG (ADT_A40: PID -> Patient[1], MRG -> Patient[2]): the surviving Patient gets
``link`` type ``replaces`` to the old one, and the old Patient, identified by MRG-1 (prior
patient identifier list) and named by MRG-7, is emitted inactive with ``link`` type
``replaced-by`` back, so a receiving server can redirect references.
"""

from __future__ import annotations

from mapping import ids
from mapping.context import Context, PatientRef
from mapping.hl7.datatypes import Json, authority, cx_identifier, resource, xpn_name
from mapping.hl7.parse import Segment
from mapping.model import PatientKey


def _old_key(mrg: Segment) -> PatientKey | None:
    candidates = [cx for cx in mrg.repetitions(1) if cx.get(1)]
    chosen = next((cx for cx in candidates if cx.get(5).upper() == "MR"), None)
    if chosen is None and candidates:
        chosen = candidates[0]
    if chosen is None:
        for field_no in (4, 2):  # prior patient id (v2.3), prior alternate id
            cx = mrg.first(field_no)
            if cx.get(1):
                chosen = cx
                break
    return PatientKey(authority(chosen), chosen.get(1)) if chosen is not None else None


def _find(ctx: Context, resource_id: str) -> Json | None:
    return ctx.find("Patient", resource_id)


def map_mrg(mrg: Segment, survivor: PatientRef, ctx: Context) -> bool:
    """Add the old Patient and the links; False when MRG names no prior identifier."""
    key = _old_key(mrg)
    if key is None:
        return False
    old_id = ids.resource_id("Patient", key.authority, key.value)
    current = _find(ctx, survivor.resource_id)
    if old_id == survivor.resource_id or current is None:
        return False
    ctx.mapped(mrg, "MRG")
    current.setdefault("link", []).append({"other": ids.reference("Patient", old_id), "type": "replaces"})
    old = _find(ctx, old_id)
    if old is None:
        identifiers: list[Json] = []
        for field_no in (1, 4):
            for cx in mrg.repetitions(field_no):
                identifier = cx_identifier(cx, ctx.zone)
                if identifier is not None and identifier not in identifiers:
                    identifiers.append(identifier)
        name = xpn_name(mrg.first(7), ctx.zone)
        old = resource(
            "Patient",
            old_id,
            {"identifier": identifiers, "active": False, "name": [name] if name else None},
        )
        ctx.add(old)
        ctx.patient_keys[old_id] = key
    old.setdefault("link", []).append({"other": survivor.subject, "type": "replaced-by"})
    return True
