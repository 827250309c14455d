"""NK1 -> RelatedPerson (IG NK1[RelatedPerson]): next of kin and contact persons of a patient.

The message maps (ADT_A01 and friends) make an NK1 a RelatedPerson unless NK1-3.1 names an
organisation (employer, agency, insurer); those NK1s become a Patient.contact with the
organisation (NK1-13) as an Organization instead (IG NK1[Patient]). The organisation's own
contact person (NK1-30/31/32, Organization.contact in the IG) is left to the report: the
Organization is shared by every patient it employs.
"""

from __future__ import annotations

from typing import Final

from mapping import ids, people_vocab, vocab
from mapping.context import Context, PatientRef
from mapping.hl7.datatypes import (
    Json,
    clean_code,
    cx_identifier,
    distinct,
    prune,
    resource,
    xad_address,
    xpn_name,
    xtn_contact,
)
from mapping.hl7.dtm import to_date
from mapping.hl7.parse import Segment
from mapping.staff import organization

__all__ = ["NOT_A_PERSON", "ROLE_CONTACT", "US_SSN", "map_nk1"]

# IG ADT_A01: "IF NK1-3.1 NOT IN ("EMR", "E", "F", "I", "S")" -> RelatedPerson.
NOT_A_PERSON = frozenset({"EMR", "E", "F", "I", "S"})
US_SSN = "http://hl7.org/fhir/sid/us-ssn"
ROLE_CONTACT = "NK1:Organization"


def _relationship(nk1: Segment) -> list[Json]:
    found = []
    for field_no, table, name in (
        (3, people_vocab.RELATIONSHIP, "HL70063"),  # IG relationship[1]
        (7, people_vocab.CONTACT_ROLE, "HL70131"),  # IG relationship[2]
    ):
        cwe = nk1.first(field_no)
        if not cwe.get(3).strip() and clean_code(cwe.get(1)).upper() not in table:
            # Neither a code of the HL7 table nor one of a named code system: free text about a
            # relative (it may be their name), which would be kept verbatim as a code.
            continue
        concept = people_vocab.translated_concept(cwe, table, name)
        if concept is not None and concept not in found:
            found.append(concept)
    return found


def _names(nk1: Segment, ctx: Context) -> list[Json]:
    # IG name[1] (the relative), name[2] (the contact person)
    return distinct(nk1, (2, 30), lambda xpn: xpn_name(xpn, ctx.zone))


def _addresses(nk1: Segment, ctx: Context) -> list[Json]:
    return distinct(nk1, (4, 32), lambda xad: xad_address(xad, ctx.zone))  # IG address[1], address[2]


# The XTN fields of a RelatedPerson's telecom (IG NK1[RelatedPerson] telecom[1..5]) and of an
# organisation's Patient.contact (IG NK1[Patient] contact.telecom[1..4]).
_PERSON_PHONES: Final = (5, 6, 31, 40, 41)
_CONTACT_PHONES: Final = (5, 6, 40, 41)


def _telecoms(nk1: Segment, fields: tuple[int, ...]) -> list[Json]:
    telecoms: list[Json] = []
    for field_no in fields:
        for xtn in nk1.repetitions(field_no):
            contact = xtn_contact(xtn, None)
            if contact is not None and field_no == 6:
                contact["use"] = "work"  # NK1-6, the business number: the only assigned use
            if contact is not None and contact not in telecoms:
                telecoms.append(contact)
    return telecoms


def _identifiers(nk1: Segment, ctx: Context) -> list[Json]:
    # IG identifier[1] (employee number), identifier[2]
    found = distinct(nk1, (12, 33), lambda cx: cx_identifier(cx, ctx.zone))
    ssn = nk1.value(37)
    if ssn:  # IG identifier[3]: the US rows (system us-ssn, type SS)
        found.append(
            {
                "type": {"coding": [{"system": vocab.V2_0203, "code": "SS"}]},
                "system": US_SSN,
                "value": ssn,
            }
        )
    return found


def _communication(nk1: Segment) -> list[Json]:
    language = people_vocab.language_concept(nk1.first(20))  # IG communication.language
    return [{"language": language}] if language is not None else []


def _map_contact(nk1: Segment, patient: PatientRef, ctx: Context) -> bool:
    """An organisation's NK1 -> Patient.contact (IG NK1[Patient]): relationship (NK1-3, NK1-7),
    name (NK1-2), telecom, address (NK1-4), period (NK1-8/9), gender (NK1-15) and the
    organisation (NK1-13, IG XON[Organization]). False when it names no one to contact (R4
    pat-1: a contact has a name, telecom, address or organisation)."""
    target = ctx.find("Patient", patient.resource_id)
    if target is None:
        return False
    org_id = organization(nk1.first(13), ctx)
    name = next(iter(distinct(nk1, (2,), lambda xpn: xpn_name(xpn, ctx.zone))), None)
    address = next(iter(distinct(nk1, (4,), lambda xad: xad_address(xad, ctx.zone))), None)
    contact = prune(
        {
            "relationship": _relationship(nk1),
            "name": name,
            "telecom": _telecoms(nk1, _CONTACT_PHONES),
            "address": address,
            "gender": vocab.ADMINISTRATIVE_SEX.get(nk1.value(15).strip().upper()),
            "organization": ids.reference("Organization", org_id) if org_id else None,
            "period": prune({"start": to_date(nk1.value(8)), "end": to_date(nk1.value(9))}),
        }
    )
    if contact is None or not {"name", "telecom", "address", "organization"} & contact.keys():
        return False
    contacts = target.setdefault("contact", [])
    if contact not in contacts:
        contacts.append(contact)
    ctx.mapped(nk1, ROLE_CONTACT)
    return True


def map_nk1(nk1: Segment, patient: PatientRef, position: int, ctx: Context) -> bool:
    """Add the RelatedPerson of ``nk1`` (at ``position`` in the message) for ``patient``, or the
    Patient.contact of an organisation's NK1; False when the NK1 maps to neither (nothing but a
    set ID, or an organisation's NK1 naming no one)."""
    if not nk1.has_content():
        return False
    if nk1.value(3).strip().upper() in NOT_A_PERSON:
        return _map_contact(nk1, patient, ctx)
    # The set ID names the NK1 within the patient's list; the position stands in when a sender
    # leaves it empty or repeats it.
    set_id = nk1.value(1) or f"at{position}"
    preferred = ids.resource_id("RelatedPerson", patient.key.authority, patient.key.value, "nk1", set_id)
    related_id = ctx.unique_id("RelatedPerson", preferred, "nk1", patient.resource_id, str(position))
    ctx.mapped(nk1, "NK1")
    ctx.add(
        resource(
            "RelatedPerson",
            related_id,
            {
                "identifier": _identifiers(nk1, ctx),
                "patient": patient.subject,
                "relationship": _relationship(nk1),
                "name": _names(nk1, ctx),
                "telecom": _telecoms(nk1, _PERSON_PHONES),
                "gender": vocab.ADMINISTRATIVE_SEX.get(nk1.value(15).strip().upper()),
                "birthDate": to_date(nk1.value(16)),
                "address": _addresses(nk1, ctx),
                "period": prune({"start": to_date(nk1.value(8)), "end": to_date(nk1.value(9))}),
                "communication": _communication(nk1),
            },
        )
    )
    return True
