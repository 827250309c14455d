"""OBX -> Observation (IG OBX[Observation]): code, value by OBX-2, range, flags, status, time."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

from mapping import ids, staff, vocab
from mapping.context import Context, PatientRef
from mapping.hl7.datatypes import Json, cwe_concept, data_absent_concept, prune, resource, xad_address
from mapping.hl7.dtm import to_date_time, to_time
from mapping.hl7.numeric import nm_value, parse_number, reference_range, sn_value
from mapping.hl7.parse import Composite, Segment

# The IG's URL for an R5 Observation.valueAttachment carried in R4 (OBX-5 of type ED or RP).
ATTACHMENT_EXTENSION = "https://hl7.org/fhir/5.0/StructureDefinition/extension-Observation.valueAttachment"

_MIME_BY_SUBTYPE = {
    "PDF": "application/pdf",
    "RTF": "application/rtf",
    "XML": "application/xml",
    "HTML": "text/html",
    "PLAIN": "text/plain",
    "TEXT": "text/plain",
    "JPEG": "image/jpeg",
    "JPG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
    "TIF": "image/tiff",
    "DICOM": "application/dicom",
    "OCTET-STREAM": "application/octet-stream",
    "PICT": "image/pict",
}
# HL7 table 0191 (type of referenced data) -> the MIME top-level type, for RP.3 "/" RP.4.
_MIME_TOP_LEVEL = {
    "AP": "application",
    "APPLICATION": "application",
    "AU": "audio",
    "AUDIO": "audio",
    "IM": "image",
    "IMAGE": "image",
    "NS": "image",
    "SI": "image",
    "TEXT": "text",
    "TX": "text",
    "VIDEO": "video",
}
UNKNOWN_CONTENT_TYPE = "application/octet-stream"
_KEPT_STATUS = frozenset({"X"})  # IG OBX-11 "X": cancelled, and the v2 code kept beside it
_WHITESPACE = re.compile(r"\s+")
TEXT_TYPES = frozenset({"ST", "TX", "FT"})
CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF", "IS"})


def content_type(data_type: str, subtype: str) -> str | None:
    """A MIME type from ED.2/ED.3 or RP.3/RP.4: a known subtype's registered type, else
    type "/" subtype (IG RP[Attachment]: contentType = RP.3 "/" RP.4) with the HL7 type of data
    (table 0191: IM, AP, AU, TEXT...) read as the MIME top-level type."""
    known = _MIME_BY_SUBTYPE.get(subtype.upper())
    if known is not None:
        return known
    top = _MIME_TOP_LEVEL.get(data_type.upper())
    if top is not None and subtype and not _WHITESPACE.search(subtype) and "/" not in subtype:
        return f"{top}/{subtype.lower()}"
    return "text/plain" if top == "text" else None


def _attachment(data_type: str, subtype: str, encoding: str, data: str, url: str) -> Json | None:
    media_type = content_type(data_type, subtype)
    payload: str | None = None
    kind = encoding.upper()
    try:
        if kind == "BASE64":
            payload = _WHITESPACE.sub("", data)
            base64.b64decode(payload, validate=True)
        elif kind == "A":
            payload = base64.b64encode(data.encode("utf-8")).decode("ascii")
        elif kind == "HEX":
            payload = base64.b64encode(bytes.fromhex(data)).decode("ascii")
    except (ValueError, binascii.Error):
        payload = None  # undecodable data is dropped rather than passed on as garbage
    if payload and media_type is None:
        # FHIR att-1: an Attachment with data SHALL have a contentType; de-identification
        # keeps only the contentType, so without one a DocumentReference loses its content.
        media_type = UNKNOWN_CONTENT_TYPE
    attachment = prune({"contentType": media_type, "data": payload or None, "url": url})
    if attachment is None or not ({"data", "url"} & attachment.keys()):
        return None
    return {"extension": [{"url": ATTACHMENT_EXTENSION, "valueAttachment": attachment}]}


def _ed_value(ed: Composite) -> Json:
    found = _attachment(ed.get(2), ed.get(3), ed.get(4), ed.get(5), "")
    return found or {}


def _rp_value(rp: Composite) -> Json:
    pointer = rp.get(1)
    url = pointer if ":" in pointer and not _WHITESPACE.search(pointer) else ""
    return _attachment(rp.get(3), rp.get(4), "", "", url) or ({"valueString": pointer} if pointer else {})


def _date_time_value(first: Composite, ctx: Context) -> Json:
    converted = to_date_time(first.get(1), ctx.zone)
    if converted:
        return {"valueDateTime": converted}
    return {"valueString": first.joined()} if first.joined() else {}


def _time_value(first: Composite, _ctx: Context) -> Json:
    converted = to_time(first.get(1))
    if converted:
        return {"valueTime": converted}
    return {"valueString": first.joined()} if first.joined() else {}


def _range_value(first: Composite, _ctx: Context) -> Json:
    low, high = parse_number(first.get(1)), parse_number(first.get(2))
    found = prune(
        {
            "low": {"value": low} if low is not None else None,
            "high": {"value": high} if high is not None else None,
        }
    )
    if found:
        return {"valueRange": found}
    return {"valueString": first.joined()} if first.joined() else {}


def _period_value(first: Composite, ctx: Context) -> Json:
    found = prune(
        {
            "start": to_date_time(first.get(1, 1), ctx.zone),
            "end": to_date_time(first.get(2, 1), ctx.zone),
        }
    )
    if found:
        return {"valuePeriod": found}
    return {"valueString": first.joined()} if first.joined() else {}


_SINGLE_VALUE: dict[str, Callable[[Composite, Context], Json]] = {
    "DT": _date_time_value,
    "DTM": _date_time_value,
    "TS": _date_time_value,
    "TM": _time_value,
    "NR": _range_value,
    "DR": _period_value,
}


def _components(obx: Segment, reps: list[Composite], ctx: Context) -> Json:
    """A repeating OBX-5 (not text) -> one component per repetition, each with the OBX-3 code
    (IG OBX[Observation-Component]: "IF OBX-5 LST.count GREATER THAN 1 AND OBX-2 IS NOT NA");
    coded repetitions too: each is a valueCodeableConcept of its own."""
    code = cwe_concept(obx.first(3)) or data_absent_concept()
    value_type = obx.value(2).upper()
    components = []
    for rep in reps:
        if value_type == "NM":
            value = nm_value(rep.joined(), obx.first(6))
        elif value_type == "SN":
            value = sn_value(rep, obx.first(6))
        elif value_type in CODED_TYPES:
            concept = cwe_concept(rep)
            value = {"valueCodeableConcept": concept} if concept else {}
        else:
            single = _SINGLE_VALUE.get(value_type)
            value = single(rep, ctx) if single is not None else {"valueString": rep.joined()}
        if value:
            components.append({"code": code, **value})
    return {"component": components} if components else {}


def observation_value(obx: Segment, ctx: Context) -> Json:
    """The ``value[x]`` (or attachment extension) for OBX-5, chosen by OBX-2.

    Repeating OBX-5 values are joined by lines for text; for every other type (coded ones
    included) each repetition is a ``component`` (IG OBX[Observation-Component]).
    """
    value_type = obx.value(2).upper()
    reps = obx.repetitions(5)
    if not reps:
        return {}
    if value_type in TEXT_TYPES:
        text = "\n".join(t for t in obx.texts(5) if t)
        return {"valueString": text} if text else {}
    if len(reps) > 1:
        return _components(obx, reps, ctx)
    first = reps[0]
    if value_type == "NM":
        return nm_value(obx.text(5), obx.first(6))
    if value_type == "SN":
        return sn_value(first, obx.first(6))
    if value_type in CODED_TYPES:
        concept = cwe_concept(first)
        return {"valueCodeableConcept": concept} if concept else {}
    if value_type == "ED":
        return _ed_value(first)
    if value_type == "RP":
        return _rp_value(first)
    single = _SINGLE_VALUE.get(value_type)
    if single is not None:
        return single(first, ctx)
    text = first.joined()
    return {"valueString": text} if text else {}


def _interpretations(obx: Segment) -> list[Json]:
    found = []
    for flag in obx.repetitions(8):
        code = flag.get(1).upper()
        if code in vocab.INTERPRETATION:
            concept: Json | None = {
                "coding": [
                    {"system": vocab.V3_INTERPRETATION, "code": code, "display": vocab.INTERPRETATION[code]}
                ]
            }
        else:
            concept = cwe_concept(flag)
        if concept is not None:
            found.append(concept)
    return found


PRACTITIONER_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/practitioner-role"
MEDICAL_DIRECTOR_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0912"
_OBSERVER = {"coding": [{"system": PRACTITIONER_ROLE_SYSTEM, "code": "responsibleObserver"}]}
_DIRECTOR = {"coding": [{"system": MEDICAL_DIRECTOR_SYSTEM, "code": "MDIR"}]}
_PERFORMER_FIELDS = (15, 16, 23, 24, 25)


def _performing_party(obx: Segment, ctx: Context) -> tuple[Json | None, str | None]:
    """OBX-23 performing organisation (OBX-24 its address) and OBX-25 its medical director: a
    PractitionerRole of the director for that organisation when OBX-25 is valued, else the
    Organization itself (IG OBX[Observation] "IF OBX-25 (NOT) VALUED"); and the organisation's id."""
    organization_id = staff.organization(obx.first(23), ctx, address=xad_address(obx.first(24), ctx.zone))
    if obx.first(25).get(1) or obx.first(25).get(2):
        role = staff.xcn_role(obx.first(25), ctx, organization_id=organization_id, code=_DIRECTOR)
        return role, organization_id
    return (ids.reference("Organization", organization_id) if organization_id else None), organization_id


def performers(obx: Segment, ctx: Context) -> list[Json]:
    """Observation.performer: OBX-16 responsible observers, then OBX-23/24/25, then the OBX-15
    producer (CWE[Organization]) unless it is that same organisation."""
    if not any(map(obx.field_has_content, _PERFORMER_FIELDS)):
        return []  # most feeds send none of them: no composite is parsed for each OBX of a panel
    found = [
        r for r in (staff.xcn_role(x, ctx, code=_OBSERVER) for x in obx.repetitions(16)) if r is not None
    ]
    party, performing_id = _performing_party(obx, ctx)
    if party is not None:
        found.append(party)
    producer = staff.cwe_organization(obx.first(15), ctx)
    if producer is not None and producer != performing_id:
        found.append(ids.reference("Organization", producer))
    return found


def build_observation(
    obx: Segment, observation_id: str, patient: PatientRef, ctx: Context, report_time: str = ""
) -> Json:
    """The Observation for one OBX; its time is OBX-14 (IG OBX[Observation]).

    ``report_time`` is OBR-7 of the report the OBX belongs to, given by result messages (ORU)
    only: there an empty OBX-14 means the OBR-7 time (v2 OBX-14 is sent only when it differs).
    Order messages give none (IG OBR[ServiceRequest]: OBR-7 has no target there, "should not be
    populated in a message corresponding to a ServiceRequest").
    """
    value = observation_value(obx, ctx)
    reference = reference_range(obx.text(7), obx.first(6))
    result_status = obx.value(11).upper()
    not_asked = result_status == "N" and not value  # IG OBX-11 "N": dataAbsentReason not-asked
    return resource(
        "Observation",
        observation_id,
        {
            **vocab.result_status(result_status, vocab.OBSERVATION_STATUS, vocab.V2_0085, keep=_KEPT_STATUS),
            "code": cwe_concept(obx.first(3)) or data_absent_concept(),
            "subject": patient.subject,
            "encounter": patient.encounter,
            "effectiveDateTime": to_date_time(obx.value(14), ctx.zone) or to_date_time(report_time, ctx.zone),
            "performer": performers(obx, ctx),
            **value,
            "dataAbsentReason": (
                {"coding": [{"system": vocab.DATA_ABSENT_REASON, "code": "not-asked"}]} if not_asked else None
            ),
            "interpretation": _interpretations(obx),
            "referenceRange": [reference] if reference else None,
        },
    )


def note_text(nte: Segment) -> str:
    """NTE-3 (FT, repeating) as one text; "" when the NTE carries nothing."""
    return "\n".join(t for t in nte.texts(3) if t)


def add_note(observation: Json, nte: Segment) -> bool:
    """NTE-3 (FT, repeating) -> Observation.note (IG NTE[Observation]); False when NTE is empty."""
    text = note_text(nte)
    if not text:
        return False
    observation.setdefault("note", []).append({"text": text})
    return True


def attach_note(observation: Json, nte: Segment, ctx: Context) -> None:
    """An NTE after an OBX: a note on that Observation, or in the report when empty."""
    if add_note(observation, nte):
        ctx.mapped(nte, "NTE")
    else:
        ctx.skip(nte)
