"""IN1 -> Coverage and the payer Organization (IG IN1[Coverage]; ADT_A01 INSURANCE: Coverage[1]).

What the IG's rows say: IN1-2 identifier (CWE[Identifier]), IN1-4 payor (XON[Organization])
with IN1-5 as that Organization's address, IN1-10 (not "SN") and IN1-11 policyHolder (the
insured's employer group, XON[Organization]), IN1-12/13 period, IN1-15 type, IN1-16 subscriber
(the Patient when IN1-17 is "self"; else a RelatedPerson of the patient named by IN1-16, with
IN1-17 relationship, IN1-18 birth date and IN1-19 address: the insured's own fields, which the
IG rows leave without a target of their own), IN1-17 relationship (concept map Relationship),
IN1-49 the subscriberId extension. The IG gives IN1-8/9 (group), IN1-36 (policy number) and
IN2 no target, so they stay in the mapping report.

The payer Organization's id comes from the insurer's identifier (IN1-3, else XON.10/XON.3 of
IN1-4) or, failing that, its name: the same insurer in any message is one Organization.
"""

from __future__ import annotations

from typing import Final

from mapping import ids, people_vocab, vocab
from mapping.context import Context, PatientRef
from mapping.hl7.datatypes import (
    Json,
    authority,
    clean_code,
    cwe_concept,
    cx_identifier,
    distinct,
    prune,
    resource,
    xad_address,
    xpn_name,
)
from mapping.hl7.dtm import to_date
from mapping.hl7.parse import Segment
from mapping.staff import organization

__all__ = ["INSURER_TYPE", "ROLE", "ROLE_SELF_INSURED", "SUBSCRIBER_ID_EXTENSION", "map_in1"]

SUBSCRIBER_ID_EXTENSION: Final = "http://hl7.org/fhir/5.0/StructureDefinition/extension-subscriberId"
# Not an IG row: says what the Organization is, so a consumer tells a payer from a facility.
INSURER_TYPE: Final[Json] = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/organization-type",
            "code": "ins",
            "display": "Insurance Company",
        }
    ]
}
ROLE: Final = "IN1"
ROLE_SELF_INSURED: Final = "IN1:SelfInsured"
"""The report's rule set when IN1-16 names the patient (IN1-17 "self") and so is mapped."""

_SELF: Final = frozenset({"SEL", "ONESELF", "SELF"})


def _insurer_key(in1: Segment) -> tuple[str, str] | None:
    """What keys the payer Organization: (kind, key), None when IN1 names no insurer."""
    for cx in in1.repetitions(3):
        if cx.get(1):
            return "id", f"{authority(cx)}|{cx.get(1)}"
    xon = in1.first(4)
    number = xon.get(10) or xon.get(3)
    if number:
        return "id", f"{xon.get(6)}|{number}"
    name = " ".join(xon.get(1).split()).casefold()
    return ("name", name) if name else None


def _payer(in1: Segment, ctx: Context) -> str | None:
    """Add the payer Organization (once per message) and return its id."""
    key = _insurer_key(in1)
    if key is None:
        return None
    org_id = ids.resource_id("Organization", "insurer", *key)
    if ctx.taken("Organization", org_id):
        return org_id  # a second IN1 of the same insurer in this message
    identifiers = [i for cx in in1.repetitions(3) if (i := cx_identifier(cx, ctx.zone)) is not None]
    xon = in1.first(4)
    if xon.get(10) or xon.get(3):  # IG XON[Organization]: XON.10, else XON.3, is identifier.value
        identifiers.append(
            {"system": vocab.local_system(xon.get(6)), "value": xon.get(10) or xon.get(3)}
            if xon.get(6)
            else {"value": xon.get(10) or xon.get(3)}
        )
    addresses = [a for xad in in1.repetitions(5) if (a := xad_address(xad, ctx.zone)) is not None]
    ctx.add(
        resource(
            "Organization",
            org_id,
            {
                "identifier": identifiers,
                "active": True,
                "type": [INSURER_TYPE],
                "name": " ".join(xon.get(1).split()) or None,
                "address": addresses,
            },
        )
    )
    return org_id


def _plan_identifier(in1: Segment) -> list[Json]:
    cwe = in1.first(2)  # IG CWE[Identifier]: CWE.1 value, CWE.3 system
    value = cwe.get(1).strip()
    if not value:
        return []
    return [prune({"system": vocab.coding_system(cwe.get(3).strip()), "value": value}) or {}]


def _subscriber_ids(in1: Segment, ctx: Context) -> list[Json]:
    found = []
    # IG: IN1-49, and IN1-10 when its CX.5 is "SN" (subscriber number).
    candidates = [*in1.repetitions(49), *(cx for cx in in1.repetitions(10) if cx.get(5).upper() == "SN")]
    for cx in candidates:
        identifier = cx_identifier(cx, ctx.zone)
        if identifier is not None:
            entry = {"url": SUBSCRIBER_ID_EXTENSION, "valueIdentifier": identifier}
            if entry not in found:
                found.append(entry)
    return found


def _listed(concept: Json | None) -> list[Json]:
    return [concept] if concept is not None else []


def _policy_holder(in1: Segment, ctx: Context) -> Json | None:
    """IN1-11 (XON[Organization]) with the IN1-10 ids that are no subscriber number as its
    identifiers (IG policyHolder rows); None when IN1-11 names no organisation."""
    extra = [
        i
        for cx in in1.repetitions(10)
        if cx.get(5).upper() != "SN" and (i := cx_identifier(cx, ctx.zone)) is not None
    ]
    for xon in in1.repetitions(11):
        found = organization(xon, ctx, identifiers=extra)
        if found is not None:
            return ids.reference("Organization", found)
    return None


def _subscriber(in1: Segment, patient: PatientRef, set_id: str, ctx: Context) -> Json | None:
    """The insured who is not the patient (IG subscriber(RelatedPerson)): IN1-16 name, IN1-17
    relationship, IN1-18 birth date, IN1-19 address; None when IN1 names none of them."""
    names = distinct(in1, (16,), lambda xpn: xpn_name(xpn, ctx.zone))
    addresses = distinct(in1, (19,), lambda xad: xad_address(xad, ctx.zone))
    birth_date = to_date(in1.value(18))
    if not names and not addresses and birth_date is None:
        return None
    preferred = ids.resource_id("RelatedPerson", patient.key.authority, patient.key.value, "in1", set_id)
    related_id = ctx.unique_id("RelatedPerson", preferred, "in1", patient.resource_id, str(ctx.position(in1)))
    ctx.add(
        resource(
            "RelatedPerson",
            related_id,
            {
                "patient": patient.subject,
                "relationship": _listed(
                    people_vocab.translated_concept(in1.first(17), people_vocab.RELATIONSHIP, "HL70063")
                ),
                "name": names,
                "birthDate": birth_date,
                "address": addresses,
            },
        )
    )
    return ids.reference("RelatedPerson", related_id)


def map_in1(in1: Segment, patient: PatientRef, position: int, ctx: Context) -> bool:
    """Add the Coverage of ``in1`` (at ``position``) for ``patient`` and its payer Organization;
    False when the IN1 names no insurer (FHIR requires Coverage.payor), so it is reported."""
    if not in1.has_content():
        return False
    payer_id = _payer(in1, ctx)
    if payer_id is None:
        return False
    relationship = people_vocab.translated_concept(in1.first(17), people_vocab.RELATIONSHIP, "HL70063")
    self_insured = clean_code(in1.value(17)).upper() in _SELF
    # The set ID orders a patient's coverages (primary, secondary); the position stands in for a
    # missing or repeated one, as for NK1.
    set_id = in1.value(1) or f"at{position}"
    preferred = ids.resource_id("Coverage", patient.key.authority, patient.key.value, "in1", set_id)
    coverage_id = ctx.unique_id("Coverage", preferred, "in1", patient.resource_id, str(position))
    ctx.mapped(in1, ROLE_SELF_INSURED if self_insured else ROLE)
    subscriber = patient.subject if self_insured else _subscriber(in1, patient, set_id, ctx)
    ctx.add(
        resource(
            "Coverage",
            coverage_id,
            {
                "extension": _subscriber_ids(in1, ctx),
                "identifier": _plan_identifier(in1),
                "status": "active",
                "type": cwe_concept(in1.first(15)),
                "policyHolder": _policy_holder(in1, ctx),
                "subscriber": subscriber,
                "beneficiary": patient.subject,
                "relationship": relationship,
                "period": prune({"start": to_date(in1.value(12)), "end": to_date(in1.value(13))}),
                "payor": [ids.reference("Organization", payer_id)],
            },
        )
    )
    return True
