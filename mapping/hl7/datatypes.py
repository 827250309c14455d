"""HL7 v2 composite data types to FHIR data types, after the IG's datatype maps.

Every function returns ``None`` (or an empty list) instead of an element without content, so
callers never emit ``{}``/``[]``/``""``. Components are read 1-based, as the IG names them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from zoneinfo import ZoneInfo

from mapping import vocab
from mapping.hl7.dtm import to_date_time
from mapping.hl7.parse import Composite, Segment

Json = dict[str, Any]

_OID = re.compile(r"[0-2](\.(0|[1-9]\d*))+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def clean_code(text: str) -> str:
    """FHIR ``code`` forbids leading/trailing and repeated whitespace."""
    # str.split() and str.strip() split on exactly the characters re's \s matches.
    return " ".join(text.split())


def distinct(
    segment: Segment, fields: Iterable[int], convert: Callable[[Composite], Json | None]
) -> list[Json]:
    """Every repetition of ``fields`` converted, in field order, each distinct value once
    (a name sent as both PID-5 and PID-9 is one name)."""
    found: list[Json] = []
    for field_no in fields:
        for item in segment.repetitions(field_no):
            value = convert(item)
            if value is not None and value not in found:
                found.append(value)
    return found


def prune(element: Json) -> Json | None:
    """Drop empty members; None when nothing is left."""
    # Truth first: most members are set, and 0 and False (falsy, yet values) must stay.
    kept = {k: v for k, v in element.items() if v or not (v is None or v == "" or v == [] or v == {})}
    return kept or None


def resource(resource_type: str, resource_id: str, members: Json) -> Json:
    """A resource dict with its empty members dropped."""
    built: Json = {"resourceType": resource_type, "id": resource_id}
    # prune's test, written into the resource directly instead of through a copy.
    for key, value in members.items():
        if value or not (value is None or value == "" or value == [] or value == {}):
            built[key] = value
    return built


def append_new(owner: Json, element: str, items: list[Json]) -> None:
    """Append to a list element of a resource (or backbone) the items it does not hold yet; a
    list left empty is removed (FHIR forbids empty arrays)."""
    present = owner.setdefault(element, [])
    present.extend(item for item in items if item not in present)
    if not present:
        del owner[element]


# -- identifiers --------------------------------------------------------------------------


def hd_system(namespace: str, universal: str, universal_type: str) -> str | None:
    """An Identifier.system from an assigning authority (HD, or EI.2-4), after HD[uri].

    A registered universal id wins (urn:oid / urn:uuid / the URI itself); a bare namespace id is
    kept as ``urn:id:<namespace>`` so identifiers from different authorities never merge.
    """
    kind = universal_type.upper()
    if universal:
        if kind == "ISO" and _OID.fullmatch(universal):
            return f"urn:oid:{universal}"
        if kind == "UUID" and _UUID.fullmatch(universal):
            return f"urn:uuid:{universal.lower()}"
        if kind in ("URI", "URL") and ":" in universal:
            return universal
    if namespace:
        return vocab.local_system(namespace)
    if universal:
        return vocab.local_system(universal)
    return None


def authority(cx: Composite) -> str:
    """The assigning authority of a CX as a plain key: CX.4.1 namespace, else CX.4.2 universal id."""
    return cx.get(4, 1) or cx.get(4, 2)


def identifier_type(code: str, text: str = "") -> Json | None:
    code = clean_code(code)
    if not code:
        return {"text": text} if text else None
    if vocab.is_identifier_type(code):
        return {"coding": [{"system": vocab.V2_0203, "code": code}]}
    # A local type code is not a v2-0203 code; keep it readable without claiming the system.
    return {"text": code}


def _period(start: str, end: str, default_zone: ZoneInfo) -> Json | None:
    """A Period from two DTM texts; None when neither is a date."""
    if not start and not end:
        return None  # the usual case, without two cache look-ups
    return prune({"start": to_date_time(start, default_zone), "end": to_date_time(end, default_zone)})


def cx_identifier(cx: Composite, default_zone: ZoneInfo) -> Json | None:
    """CX -> Identifier (IG CX[Identifier])."""
    value, _, _, namespace, type_code, _, start, end = cx.heads(8)
    if not value:
        return None
    period = _period(start, end, default_zone)
    assigner = namespace or cx.get(4, 2)
    return prune(
        {
            "type": identifier_type(type_code),
            "system": hd_system(namespace, cx.get(4, 2), cx.get(4, 3)),
            "value": value,
            "period": period,
            "assigner": {"display": assigner} if assigner else None,
        }
    )


def ei_identifier(ei: Composite, type_code: str | None) -> Json | None:
    """EI -> Identifier (IG EI[Identifier-Extension]) with a fixed v2-0203 type (PLAC, FILL...),
    or none (``type_code`` None)."""
    value = ei.get(1)
    if not value:
        return None
    return prune(
        {
            "type": {"coding": [{"system": vocab.V2_0203, "code": type_code}]} if type_code else None,
            "system": hd_system(ei.get(2), ei.get(3), ei.get(4)),
            "value": value,
        }
    )


# -- names, addresses, telecom ------------------------------------------------------------


def xpn_name(xpn: Composite, default_zone: ZoneInfo) -> Json | None:
    """XPN -> HumanName (IG XPN[HumanName]). XPN.3 stays one given name: it may be "Mary Anne"."""
    family, given1, given2, suffix1, prefix, degree, kind, *_, start, end, professional = xpn.heads(14)
    given = [g for g in (given1, given2) if g]
    suffix = [s for s in (suffix1, degree, professional) if s]
    name = prune(
        {
            "family": family,
            "given": given,
            "prefix": [prefix] if prefix else None,
            "suffix": suffix,
            "period": _period(start, end, default_zone),
        }
    )
    if name is None or not ({"family", "given"} & name.keys()):
        return None
    use = vocab.NAME_USE.get(kind.upper())
    if use:
        name["use"] = use
    return name


def xad_address(xad: Composite, default_zone: ZoneInfo) -> Json | None:
    """XAD -> Address (IG XAD[Address], SAD[Address])."""
    street, other, city, state, postal, country, kind, _, district, *_, start, end = xad.heads(14)
    lines = [line for line in (street, xad.get(1, 2), xad.get(1, 3), other) if line]
    # SAD.2/SAD.3 (street name, house number) usually repeat what SAD.1 already says.
    if street:
        lines = [street, *[line for line in lines[1:] if line not in street]]
    address = prune(
        {
            "line": lines,
            "city": city,
            "district": district,
            "state": state,
            "postalCode": postal,
            "country": country,
            "period": _period(start, end, default_zone),
        }
    )
    if address is None:
        return None
    kind = kind.upper()
    if kind in vocab.ADDRESS_USE:
        address["use"] = vocab.ADDRESS_USE[kind]
    elif kind in vocab.ADDRESS_TYPE:
        address["type"] = vocab.ADDRESS_TYPE[kind]
    return address


def xtn_number(xtn: Composite) -> str:
    """The telephone number text of an XTN (IG XTN[ContactPoint] .value rules for phones)."""
    if xtn.get(12):
        return xtn.get(12)
    country, area, local, ext = xtn.get(5), xtn.get(6), xtn.get(7), xtn.get(8)
    if local:
        number = " ".join(p for p in (f"+{country}" if country else "", area, local) if p)
        return f"{number} X{ext}" if ext else number
    return xtn.get(1)


def xtn_contact(xtn: Composite, default_use: str | None) -> Json | None:
    """XTN -> ContactPoint. ``default_use`` applies when XTN.2 is empty (PID-13 home, PID-14 work)."""
    equipment = xtn.get(3).upper()
    address = xtn.get(4)
    number = xtn_number(xtn)
    system = vocab.TELECOM_SYSTEM.get(equipment)
    if system == "email" or (not number and address):
        system, value = "email", address or (number if "@" in number else "")
    else:
        value = number
        if system is None:
            # The IG would say data-absent "unknown"; a ContactPoint with a value needs a system,
            # and a number sent without an equipment type is a phone number in practice.
            system = "email" if "@" in value else "phone"
    if not value:
        return None
    use_code = xtn.get(2).upper()
    use = vocab.TELECOM_USE.get(use_code)
    if equipment == vocab.MOBILE_EQUIPMENT:
        use = "mobile"
    elif use is None and not use_code:
        use = default_use
    return prune({"system": system, "value": value, "use": use})


# -- codes ----------------------------------------------------------------------------------


def _coding(code: str, display: str, system_name: str, version: str) -> Json | None:
    if not code:
        return None
    code = clean_code(code)
    if not code:
        return None
    coding: Json = {}
    system = vocab.coding_system(system_name)
    if system:
        coding["system"] = system
    if version:
        coding["version"] = version
    coding["code"] = code
    if display:
        coding["display"] = display
    return coding


def cwe_concept(cwe: Composite) -> Json | None:
    """CWE/CE/CNE -> CodeableConcept (IG CWE[CodeableConcept]): up to three codings + text."""
    c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13 = cwe.heads(13)
    codings = [
        c
        for c in (
            _coding(c1, c2, c3, c7),
            _coding(c4, c5, c6, c8) if c4 else None,
            _coding(c10, c11, c12, c13) if c10 else None,
        )
        if c is not None
    ]
    text = c9
    if not text and not codings:
        # Text without a code ("^Body Height") is still a concept a reader can use.
        text = c2 or c5
    if codings:
        return {"coding": codings, "text": text} if text else {"coding": codings}
    return {"text": text} if text else None


def data_absent_concept() -> Json:
    """A required CodeableConcept the sender left empty (OBR-4, OBX-3)."""
    return {"coding": [{"system": vocab.DATA_ABSENT_REASON, "code": "unknown", "display": "Unknown"}]}


def code_key(cwe: Composite) -> str:
    """The part of a coded element that identifies the concept, for deterministic ids."""
    code, text, system = cwe.heads(3)
    return "^".join((clean_code(code), system)) if code else text
