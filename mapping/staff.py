"""Staff and organisations named in a message: XCN/CNN -> Practitioner, XON/HD -> Organization,
and the PractitionerRole that ties the two (IG datatype maps XCN[Practitioner], CNN[Practitioner],
XON[Organization], HD[Organization], XCN[PractitionerRole], NDL[PractitionerRole]).

They are shared resources: the id comes from the person's or organisation's own identifier (its
assigning authority and number), else from the name, so the same ordering physician in any
message is one Practitioner and re-mapping upserts it. Each is added once per message; every
builder returns the id, or None when the field names no one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mapping import ids, vocab
from mapping.context import Context
from mapping.hl7.datatypes import Json, append_new, hd_system, identifier_type, prune, resource
from mapping.hl7.dtm import to_date_time
from mapping.hl7.parse import Composite

__all__ = [
    "DEGREE_SYSTEM",
    "Person",
    "add_addresses",
    "cwe_organization",
    "hd_organization",
    "ndl_role",
    "organization",
    "person_from_cnn",
    "person_from_xcn",
    "practitioner",
    "practitioner_role",
    "xcn_practitioner",
    "xcn_role",
]

DEGREE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v2-0360"
"""XCN.7 / CNN.7 (IG vocabulary DegreeLicenseCertificate)."""


@dataclass(frozen=True)
class Person:
    """The components of an XCN or a CNN that the IG maps to a Practitioner."""

    id_number: str
    family: str
    given: tuple[str, ...]
    suffix: tuple[str, ...]
    prefix: str
    degree: str
    authority: tuple[str, str, str]
    """Assigning authority as HD: namespace, universal id, universal id type."""
    id_type: str = ""
    name_type: str = ""
    name_start: str = ""
    name_end: str = ""

    @property
    def empty(self) -> bool:
        return not (self.id_number or self.family or self.given)


def person_from_xcn(xcn: Composite) -> Person:
    """XCN: 1 id, 2 family (FN.1), 3-4 given, 5 suffix, 6 prefix, 7 degree, 9 authority (HD),
    10 name type, 13 identifier type, 19-20 name validity, 21 professional suffix."""
    return Person(
        id_number=xcn.get(1).strip(),
        family=xcn.get(2, 1).strip(),
        given=tuple(g for g in (xcn.get(3).strip(), xcn.get(4).strip()) if g),
        suffix=tuple(s for s in (xcn.get(5).strip(), xcn.get(21).strip()) if s),
        prefix=xcn.get(6).strip(),
        degree=xcn.get(7).strip(),
        authority=(xcn.get(9, 1).strip(), xcn.get(9, 2).strip(), xcn.get(9, 3).strip()),
        id_type=xcn.get(13).strip(),
        name_type=xcn.get(10).strip(),
        name_start=xcn.get(19).strip(),
        name_end=xcn.get(20).strip(),
    )


def person_from_cnn(field: Composite) -> Person:
    """A CNN sent as the first component of an NDL (its parts are subcomponents): 1 id,
    2 family, 3-4 given, 5 suffix, 6 prefix, 7 degree, 9-11 assigning authority."""
    part = field.get
    return Person(
        id_number=part(1, 1).strip(),
        family=part(1, 2).strip(),
        given=tuple(g for g in (part(1, 3).strip(), part(1, 4).strip()) if g),
        suffix=tuple(s for s in (part(1, 5).strip(),) if s),
        prefix=part(1, 6).strip(),
        degree=part(1, 7).strip(),
        authority=(part(1, 9).strip(), part(1, 10).strip(), part(1, 11).strip()),
    )


def _person_key(person: Person) -> tuple[str, ...] | None:
    if person.id_number:
        namespace, universal, _ = person.authority
        return ("id", namespace or universal, person.id_number)
    name = " ".join([person.family, *person.given]).casefold()
    return ("name", " ".join(name.split())) if name.strip() else None


def _enrich(ctx: Context, resource_type: str, resource_id: str, members: Json) -> None:
    """Give a resource already added in this message the members it lacks (an address a later
    field names for the same person or organisation)."""
    found = ctx.find(resource_type, resource_id)
    if found is None:
        return
    for key, value in members.items():
        if value and key not in found:
            found[key] = value


def _extend(ctx: Context, resource_type: str, resource_id: str, lists: Json) -> None:
    """Append to list elements of a resource already added in this message what they lack."""
    found = ctx.find(resource_type, resource_id)
    if found is None:
        return
    for key, items in lists.items():
        append_new(found, key, items)


def add_addresses(ctx: Context, resource_type: str, resource_id: str, addresses: list[Json]) -> None:
    """Give a Practitioner or Organization of this message further addresses, a Location its
    address (FHIR Location.address is 0..1: the first, unless it has one)."""
    if not addresses:
        return
    if resource_type == "Location":
        _enrich(ctx, resource_type, resource_id, {"address": addresses[0]})
    else:
        _extend(ctx, resource_type, resource_id, {"address": addresses})


def practitioner(person: Person, ctx: Context, *, address: Json | None = None) -> str | None:
    """Add the Practitioner of ``person`` (once per message) and return its id; ``address``
    (e.g. ORC-24) becomes Practitioner.address."""
    key = _person_key(person)
    if key is None:
        return None
    practitioner_id = ids.resource_id("Practitioner", *key)
    if ctx.taken("Practitioner", practitioner_id):
        if address:
            _enrich(ctx, "Practitioner", practitioner_id, {"address": [address]})
        return practitioner_id
    identifier = None
    if person.id_number:
        identifier = prune(
            {
                "type": identifier_type(person.id_type),
                "system": hd_system(*person.authority),
                "value": person.id_number,
            }
        )
    name = prune(
        {
            "use": vocab.NAME_USE.get(person.name_type.upper()),
            "family": person.family,
            "given": list(person.given),
            "prefix": [person.prefix] if person.prefix else None,
            "suffix": list(person.suffix),
            "period": prune(
                {
                    "start": to_date_time(person.name_start, ctx.zone),
                    "end": to_date_time(person.name_end, ctx.zone),
                }
            ),
        }
    )
    qualification = (
        [{"code": {"coding": [{"system": DEGREE_SYSTEM, "code": person.degree}]}}] if person.degree else None
    )
    ctx.add(
        resource(
            "Practitioner",
            practitioner_id,
            {
                "identifier": [identifier] if identifier else None,
                "active": True,
                "name": [name] if name and ({"family", "given"} & name.keys()) else None,
                "address": [address] if address else None,
                "qualification": qualification,
            },
        )
    )
    return practitioner_id


def xcn_practitioner(xcn: Composite, ctx: Context, *, address: Json | None = None) -> Json | None:
    """A reference to the Practitioner an XCN names (IG XCN[Practitioner]), or None."""
    found = practitioner(person_from_xcn(xcn), ctx, address=address)
    return ids.reference("Practitioner", found) if found else None


def xcn_role(
    xcn: Composite, ctx: Context, *, organization_id: str | None = None, code: Json | None = None
) -> Json | None:
    """A reference to the PractitionerRole of the practitioner an XCN names (IG
    XCN[PractitionerRole]: the XCN is its practitioner), for ``organization_id`` in role
    ``code``; None when the XCN names no one and no organisation is given."""
    found = practitioner(person_from_xcn(xcn), ctx)
    role = practitioner_role(ctx, practitioner_id=found, organization_id=organization_id, code=code)
    return ids.reference("PractitionerRole", role) if role else None


def _organization_identifier(value: str, authority: tuple[str, str, str], type_code: str) -> Json | None:
    if not value:
        return None
    return prune({"type": identifier_type(type_code), "system": hd_system(*authority), "value": value})


def organization(
    xon: Composite,
    ctx: Context,
    *,
    address: Json | None = None,
    telecom: Json | None = None,
    identifiers: list[Json] | None = None,
) -> str | None:
    """Add the Organization an XON names (IG XON[Organization]: XON.1 name, XON.10 else XON.3
    identifier with XON.6 as its system and XON.7 as its type) and return its id; ``address``
    and ``telecom`` (e.g. ORC-22, ORC-23) become its own, ``identifiers`` are further ids other
    fields give it (IN1-10 for the IN1-11 group)."""
    name = " ".join(xon.get(1).split())
    number = xon.get(10).strip() or xon.get(3).strip()
    authority = (xon.get(6, 1).strip(), xon.get(6, 2).strip(), xon.get(6, 3).strip())
    key = ("id", authority[0] or authority[1], number) if number else ("name", name.casefold())
    if not number and not name:
        return None
    org_id = ids.resource_id("Organization", *key)
    contact = {"address": [address] if address else None, "telecom": [telecom] if telecom else None}
    if ctx.taken("Organization", org_id):
        _enrich(ctx, "Organization", org_id, contact)
    else:
        identifier = _organization_identifier(number, authority, xon.get(7).strip())
        found = [identifier] if identifier else []
        found += [i for i in identifiers or () if i not in found]
        ctx.add(
            resource(
                "Organization",
                org_id,
                {
                    "identifier": found,
                    "active": True,
                    "name": name or None,
                    "telecom": contact["telecom"],
                    "address": contact["address"],
                },
            )
        )
    return org_id


def cwe_organization(cwe: Composite, ctx: Context) -> str | None:
    """Add the Organization a CWE names (IG CWE[Organization]: CWE.1 identifier value, CWE.3 its
    system, CWE.2 else CWE.9 name) and return its id; keyed like an XON's, so a laboratory sent as
    a code (OBX-15) and as an XON with the same number and authority is one Organization."""
    code, system_name = cwe.get(1).strip(), cwe.get(3).strip()
    name = " ".join((cwe.get(2) or cwe.get(9)).split())
    if not code and not name:
        return None
    key = ("id", system_name, code) if code else ("name", name.casefold())
    org_id = ids.resource_id("Organization", *key)
    if not ctx.taken("Organization", org_id):
        identifier = prune({"system": vocab.coding_system(system_name), "value": code})
        ctx.add(
            resource(
                "Organization",
                org_id,
                {"identifier": [identifier] if code else None, "active": True, "name": name or None},
            )
        )
    return org_id


def hd_organization(hd: Composite, ctx: Context) -> str | None:
    """Add the Organization an HD names (IG HD[Organization]: HD.1 identifier[1], HD.2
    identifier[2] typed by HD.3) and return its id. HD.1 is also its name: a facility's
    namespace id is how the sender names it."""
    namespace, universal, universal_type = hd.get(1).strip(), hd.get(2).strip(), hd.get(3).strip()
    if not namespace and not universal:
        return None
    key = ("hd", universal) if universal else ("name", namespace.casefold())
    org_id = ids.resource_id("Organization", *key)
    if not ctx.taken("Organization", org_id):
        identifiers = [{"value": namespace}] if namespace else []
        if universal:
            kind = universal_type.upper()
            registered = kind in ("ISO", "UUID")
            identifiers.append(
                prune(
                    {
                        "type": {"coding": [{"system": vocab.V2_0301, "code": kind}]} if kind else None,
                        "system": "urn:ietf:rfc:3986" if registered else None,
                        "value": hd_system("", universal, universal_type) if registered else universal,
                    }
                )
                or {}
            )
        ctx.add(
            resource(
                "Organization", org_id, {"identifier": identifiers, "active": True, "name": namespace or None}
            )
        )
    return org_id


def practitioner_role(
    ctx: Context,
    *,
    practitioner_id: str | None,
    organization_id: str | None = None,
    code: Json | None = None,
    start: str = "",
    end: str = "",
    details: Json | None = None,
) -> str | None:
    """Add the PractitionerRole of a practitioner (and/or organisation) in a role and return its
    id; the same person in the same role for the same organisation is one PractitionerRole.
    ``details`` (identifier, telecom, location lists a ROL gives) are its own, added to it when
    a later segment of the message names the same role."""
    if practitioner_id is None and organization_id is None:
        return None
    code_key = repr(sorted((c.get("system", ""), c.get("code", "")) for c in (code or {}).get("coding", [])))
    role_id = ids.resource_id(
        "PractitionerRole", practitioner_id or "", organization_id or "", code_key, start, end
    )
    extra = {name: items for name, items in (details or {}).items() if items}
    if ctx.taken("PractitionerRole", role_id):
        _extend(ctx, "PractitionerRole", role_id, extra)
    else:
        practitioner_ref = ids.reference("Practitioner", practitioner_id) if practitioner_id else None
        organization_ref = ids.reference("Organization", organization_id) if organization_id else None
        ctx.add(
            resource(
                "PractitionerRole",
                role_id,
                {
                    "active": True,
                    "period": prune(
                        {"start": to_date_time(start, ctx.zone), "end": to_date_time(end, ctx.zone)}
                    ),
                    "practitioner": practitioner_ref,
                    "organization": organization_ref,
                    "code": [code] if code else None,
                    **extra,
                },
            )
        )
    return role_id


def ndl_role(ndl: Composite, ctx: Context) -> Json | None:
    """A reference to the PractitionerRole an NDL names (IG NDL[PractitionerRole]: NDL.1 the
    practitioner as CNN, NDL.2/3 the period), or None. The NDL's location parts (NDL.4-11) are
    left to the report."""
    found = practitioner(person_from_cnn(ndl), ctx)
    if found is None:
        return None
    role = practitioner_role(ctx, practitioner_id=found, start=ndl.get(2).strip(), end=ndl.get(3).strip())
    return ids.reference("PractitionerRole", role) if role else None
