"""ROL: a person's role in the patient's care, wherever the message puts it.

Three of the IG's ROL maps meet here. ROL[Patient-GeneralPractitioner] and
ROL[Encounter-PractitionerRole] make a PractitionerRole (``rol_role``): ROL-1 its identifier,
ROL-3 its code, ROL-4 its practitioner, ROL-12 its telecom, ROL-13 its location, ROL-14 its
organisation, and ROL-11 an address of the practitioner, the location or the organisation by
the address type (XAD.7). ROL[CareTeam] (``care_team_member``) adds one participant to the
patient's CareTeam: ROL-3/9 its roles, ROL-4 the member, ROL-10/14 the organisation it acts
for, ROL-5/6 its period; ROL-8 and ROL-12 go on the team.
"""

from __future__ import annotations

from typing import Final

from mapping import ids, people_vocab, visit_vocab
from mapping.context import Context, PatientRef
from mapping.hl7.datatypes import (
    Json,
    append_new,
    cwe_concept,
    ei_identifier,
    prune,
    resource,
    xad_address,
    xtn_contact,
)
from mapping.hl7.dtm import to_date_time
from mapping.hl7.parse import Segment
from mapping.location import pl_location
from mapping.staff import add_addresses, organization, person_from_xcn, practitioner, practitioner_role

__all__ = ["care_team_member", "rol_role", "role_concept"]

# ROL-11 by XAD.7 (IG ROL[Patient-GeneralPractitioner]): a person's own addresses go to the
# Practitioner, a place's to the Location (ROL-13), a business's to the Organization (ROL-14).
_PLACE_ADDRESS: Final = frozenset({"M", "O", "S", "SH", "TM"})
_BUSINESS_ADDRESS: Final = frozenset({"B", "BI", "L"})


def role_concept(rol: Segment) -> Json | None:
    """ROL-3 with the IG's ProviderRole coding."""
    return people_vocab.translated_concept(rol.first(3), visit_vocab.PROVIDER_ROLE, "HL70443")


def _telecom(rol: Segment) -> list[Json]:
    found = [xtn_contact(xtn, None) for xtn in rol.repetitions(12)]
    return [contact for contact in found if contact]


def _place_addresses(rol: Segment, ctx: Context, owners: dict[str, tuple[str, str] | None]) -> None:
    """ROL-11: each address to the resource its type names; the practitioner when that one is missing."""
    for xad in rol.repetitions(11):
        address = xad_address(xad, ctx.zone)
        if address is None:
            continue
        kind = xad.get(7).strip().upper()
        owner = owners["place"] if kind in _PLACE_ADDRESS else None
        owner = owners["business"] if kind in _BUSINESS_ADDRESS else owner
        owner = owner or owners["person"]
        if owner is not None:
            add_addresses(ctx, owner[0], owner[1], [address])


def _reference_id(reference: Json | None) -> str | None:
    return reference["reference"].split("/", 1)[1] if reference else None


def rol_role(rol: Segment, ctx: Context, *, with_period: bool) -> Json | None:
    """A reference to the PractitionerRole a ROL names, or None when it names no one."""
    practitioner_id = practitioner(person_from_xcn(rol.first(4)), ctx)
    organization_id = organization(rol.first(14), ctx)
    location = pl_location(rol.first(13), ctx)
    identifier = ei_identifier(rol.first(1), None)
    role = practitioner_role(
        ctx,
        practitioner_id=practitioner_id,
        organization_id=organization_id,
        code=role_concept(rol),
        start=rol.value(5).strip() if with_period else "",
        end=rol.value(6).strip() if with_period else "",
        details={
            "identifier": [identifier] if identifier else [],
            "telecom": _telecom(rol),
            "location": [location] if location else [],
        },
    )
    if role is None:
        return None
    location_id = _reference_id(location)
    _place_addresses(
        rol,
        ctx,
        {
            "person": ("Practitioner", practitioner_id) if practitioner_id else None,
            "place": ("Location", location_id) if location_id else None,
            "business": ("Organization", organization_id) if organization_id else None,
        },
    )
    return ids.reference("PractitionerRole", role)


def _unit_organization(rol: Segment, organization_id: str | None, ctx: Context) -> str | None:
    """ROL-10, the kind of organisational unit: the type of ROL-14's Organization, or of an
    Organization known only by that type when ROL-14 is empty."""
    unit_type = cwe_concept(rol.first(10))
    if unit_type is None:
        return organization_id
    if organization_id is None:
        organization_id = ids.resource_id(
            "Organization", "unit-type", repr(unit_type.get("coding", unit_type))
        )
        if not ctx.taken("Organization", organization_id):
            ctx.add(resource("Organization", organization_id, {"active": True, "type": [unit_type]}))
        return organization_id
    found = ctx.find("Organization", organization_id)
    if found is not None:
        append_new(found, "type", [unit_type])
    return organization_id


def _participant(rol: Segment, ctx: Context) -> Json | None:
    practitioner_id = practitioner(person_from_xcn(rol.first(4)), ctx)
    organization_id = _unit_organization(rol, organization(rol.first(14), ctx), ctx)
    if practitioner_id is None and organization_id is None:
        return None
    roles = [concept for concept in (role_concept(rol), *map(cwe_concept, rol.repetitions(9))) if concept]
    organization_ref = ids.reference("Organization", organization_id) if organization_id else None
    member = ids.reference("Practitioner", practitioner_id) if practitioner_id else organization_ref
    return prune(
        {
            "role": roles,
            "member": member,
            "onBehalfOf": organization_ref if practitioner_id else None,
            "period": prune(
                {"start": to_date_time(rol.value(5), ctx.zone), "end": to_date_time(rol.value(6), ctx.zone)}
            ),
        }
    )


def _team(patient: PatientRef, ctx: Context) -> Json:
    """The patient's CareTeam: one per patient, so a later message's team replaces it."""
    team_id = ids.resource_id("CareTeam", patient.key.authority, patient.key.value, "rol")
    found = ctx.find("CareTeam", team_id)
    if found is not None:
        return found
    team = resource("CareTeam", team_id, {"status": "active", "subject": patient.subject})
    ctx.add(team)
    return team


def care_team_member(rol: Segment, patient: PatientRef, ctx: Context) -> bool:
    """Add the person (or organisation) a ROL names to the patient's CareTeam; False when it
    names neither."""
    participant = _participant(rol, ctx)
    if participant is None:
        return False
    team = _team(patient, ctx)
    append_new(team, "participant", [participant])
    reasons = [cwe_concept(rol.first(8))]
    append_new(team, "reasonCode", [reason for reason in reasons if reason])
    append_new(team, "telecom", _telecom(rol))
    return True
