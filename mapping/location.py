"""Places named in a message: PL -> Location (IG PL[Location]) and DLD -> Location (IG
DLD[Location-Discharge]).

The IG builds a chain of Locations per PL (bed, part of room, part of floor, ...). Here a PL
is one Location: the most specific part it names (bed, else room, floor, point of care,
building, facility) gives its identifier and physical type, and the id comes from all the
parts, so the same bed of the same ward is one Location in every message (re-mapping upserts
it). Each builder returns a reference, or None when the field names no place.
"""

from __future__ import annotations

from typing import Final

from mapping import ids
from mapping.context import Context
from mapping.hl7.datatypes import Json, code_key, cwe_concept, hd_system, prune, resource
from mapping.hl7.parse import Composite

__all__ = ["PHYSICAL_TYPE", "dld_location", "pl_location", "subcomposite"]

PHYSICAL_TYPE: Final = "http://terminology.hl7.org/CodeSystem/location-physical-type"

# PL components from the most specific to the least, with the IG's physical type of each; the
# point of care (PL.1) has none in the IG ("/extension??-poc/"), so none is claimed.
_PARTS: Final[tuple[tuple[int, str | None], ...]] = (
    (3, "bd"),  # bed
    (2, "ro"),  # room
    (8, "lvl"),  # floor
    (1, None),  # point of care (nursing unit, ward, clinic)
    (7, "bu"),  # building
    (4, "si"),  # facility
)
# The parts as a reader names a place: facility, building, floor, unit, room, bed.
_READING_ORDER: Final = (4, 7, 8, 1, 2, 3)


def subcomposite(field: Composite, component: int, size: int = 13) -> Composite:
    """The subcomponents of one component as a Composite of their own (a CWE inside a DLD)."""
    return Composite(tuple((field.get(component, n),) for n in range(1, size + 1)))


def _hd_identifier(pl: Composite, component: int) -> Json | None:
    """HD[Identifier]: HD.1 is the value; a registered HD.2 names the system."""
    namespace, universal, kind = (pl.get(component, n).strip() for n in (1, 2, 3))
    if not namespace and not universal:
        return None
    system = hd_system("", universal, kind) if namespace and universal else None
    return prune({"system": system, "value": namespace or universal})


def _comprehensive_identifier(pl: Composite) -> Json | None:
    """PL.10 (EI): the sender's one identifier for the whole location."""
    value = pl.get(10, 1).strip()
    if not value:
        return None
    return prune({"system": hd_system(pl.get(10, 2), pl.get(10, 3), pl.get(10, 4)), "value": value})


def pl_location(pl: Composite, ctx: Context, *, bed_status: Json | None = None) -> Json | None:
    """Add the Location a PL names (once per message) and return a reference to it."""
    specific = next(((n, kind) for n, kind in _PARTS if pl.get(n, 1).strip() or pl.get(n, 2).strip()), None)
    comprehensive = _comprehensive_identifier(pl)
    if specific is None and comprehensive is None:
        return None
    key = [pl.get(n, 1).strip() or pl.get(n, 2).strip() for n in _READING_ORDER]
    location_id = ids.resource_id("Location", "pl", *key, comprehensive["value"] if comprehensive else "")
    if not ctx.taken("Location", location_id):
        identifiers = [_hd_identifier(pl, specific[0]) if specific else None, comprehensive]
        kind = specific[1] if specific else None
        ctx.add(
            resource(
                "Location",
                location_id,
                {
                    "identifier": [i for i in identifiers if i],
                    # PV1-40 bed status, when the PL names a room or bed (IG PV1[Encounter]).
                    "operationalStatus": bed_status if specific and specific[0] in (2, 3) else None,
                    "name": " ".join(part for part in key if part) or None,
                    "description": " ".join(pl.get(9).split()) or None,
                    "mode": "instance",
                    "physicalType": {"coding": [{"system": PHYSICAL_TYPE, "code": kind}]} if kind else None,
                },
            )
        )
    return ids.reference("Location", location_id)


def dld_location(dld: Composite, ctx: Context) -> Json | None:
    """Add the Location a DLD names (IG DLD[Location-Discharge]: DLD.1 -> type; the kind of
    place the patient went, e.g. home) and return a reference to it. DLD.2 has no target."""
    cwe = subcomposite(dld, 1)
    concept = cwe_concept(cwe)
    if concept is None:
        return None
    location_id = ids.resource_id("Location", "dld", code_key(cwe))
    if not ctx.taken("Location", location_id):
        ctx.add(resource("Location", location_id, {"type": [concept]}))
    return ids.reference("Location", location_id)
