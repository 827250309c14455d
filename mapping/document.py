"""MDM^T01-T11: TXA + OBX -> DocumentReference (IG TXA[DocumentReference], OBX[DocumentReference]),
ORC/OBR -> ServiceRequest (the document's context.related), PID/PV1 as everywhere.

Content: every OBX of type ED becomes an attachment as sent (base64 kept, other encodings
re-encoded; an ED that names its type but has no data, an attachment with only contentType);
text OBX lines (TX/FT/ST, one OBX-5 repetition per line) are joined with newlines into one
text/plain attachment. Other OBX (HD study ids, numbers) are left in the report.
"""

from __future__ import annotations

import base64

from core.errors import MappingError
from mapping import ids, staff, workflow_vocab
from mapping.context import Context
from mapping.hl7.datatypes import Json, cwe_concept, ei_identifier, resource
from mapping.hl7.dtm import to_instant
from mapping.hl7.parse import Composite, Segment
from mapping.observation import ATTACHMENT_EXTENSION, TEXT_TYPES, content_type, observation_value
from mapping.orders import Order, build_service_request, order_note
from mapping.subject import Subjects

DOCUMENT_TRIGGERS = frozenset(f"T{n:02d}" for n in range(1, 12))


def _status(txa: Segment) -> str:
    """TXA-19: OB (obsolete) -> superseded; AV, empty and others -> current (IG TXA-19)."""
    return "superseded" if txa.value(19).upper() == "OB" else "current"


def _content(txa: Segment, lines: list[str], attachments: list[Json]) -> list[Json]:
    found = [{"attachment": a} for a in attachments]
    if lines:
        content_type = workflow_vocab.TEXT_PRESENTATION.get(txa.value(3).upper(), "text/plain")
        data = base64.b64encode("\n".join(lines).encode("utf-8")).decode("ascii")
        found.append({"attachment": {"contentType": f"{content_type}; charset=utf-8", "data": data}})
    if not found:
        # A notification without content (T01, T03, ...): the attachment says what it would be.
        title = txa.value(25) or txa.first(2).get(2)
        found.append({"attachment": {"contentType": "text/plain", **({"title": title} if title else {})}})
    return found


def _ed_attachment(obx: Segment, ctx: Context) -> Json | None:
    """OBX-5 (ED) -> content.attachment (IG OBX[DocumentReference], ED[Attachment]); an ED that
    names its type but carries no data still says what the document is (ED.3 -> contentType)."""
    value = observation_value(obx, ctx)
    for extension in value.get("extension", []):
        if extension.get("url") == ATTACHMENT_EXTENSION:
            attachment: Json = extension["valueAttachment"]
            return attachment
    ed = obx.first(5)
    media_type = content_type(ed.get(2), ed.get(3))
    return {"contentType": media_type} if media_type else None


def _master_identifier(unique: Composite) -> Json | None:
    """TXA-12 (EI) -> masterIdentifier: value and system, no type."""
    found = ei_identifier(unique, "")
    if found is not None:
        found.pop("type", None)
    return found


def _document(
    txa: Segment,
    subjects: Subjects,
    lines: list[str],
    attachments: list[Json],
    related: list[str],
    ctx: Context,
) -> None:
    ctx.mapped(txa, "TXA")
    patient = subjects.current()
    unique = txa.first(12)
    preferred = (
        ids.resource_id("DocumentReference", unique.get(2) or unique.get(3), unique.get(1))
        if unique.get(1)
        else None
    )
    document_id = ctx.unique_id("DocumentReference", preferred, "txa", str(ctx.position(txa)))
    file_name = txa.value(16)
    context = {
        "encounter": [patient.encounter] if patient.encounter else None,
        "related": [ids.reference("ServiceRequest", r) for r in related],
    }
    document = resource(
        "DocumentReference",
        document_id,
        {
            "masterIdentifier": _master_identifier(unique),
            "identifier": [{"value": file_name}] if file_name else None,
            "status": _status(txa),
            "docStatus": workflow_vocab.DOCUMENT_COMPLETION.get(txa.value(17).upper()),
            "type": cwe_concept(txa.first(2)),
            "subject": patient.subject,
            "date": to_instant(txa.value(6), ctx.zone),
            # TXA-9 originators and TXA-10 the (first) authenticator (IG TXA[DocumentReference]).
            "author": [a for a in (staff.xcn_practitioner(x, ctx) for x in txa.repetitions(9)) if a],
            "authenticator": staff.xcn_practitioner(txa.first(10), ctx),
            "description": txa.value(25),
            "content": _content(txa, lines, attachments),
            "context": {k: v for k, v in context.items() if v} or None,
        },
    )
    ctx.add(document)


def map_mdm(ctx: Context) -> None:
    subjects = Subjects(ctx, "a document message")
    txa: Segment | None = None
    order: Order | None = None
    related: list[str] = []
    lines: list[str] = []
    attachments: list[Json] = []
    count = 0

    def close_order() -> None:
        nonlocal order
        if order is not None:
            related.append(build_service_request(order, ctx)["id"])
            order = None

    for seg in ctx.message.segments[1:]:
        name = seg.name
        if name == "PID":
            subjects.take_pid(seg)
        elif name == "PV1" and subjects.take_pv1(seg):
            pass
        elif txa is None and (name == "ORC" or (name == "OBR" and (order is None or order.obr is not None))):
            close_order()
            count += 1
            order = Order(
                seg if name == "ORC" else None, seg if name == "OBR" else None, subjects.current(), count
            )
        elif txa is None and name == "OBR" and order is not None:
            order.obr = seg
        elif txa is None and name == "NTE" and order is not None:
            order_note(order, seg, ctx)
        elif name == "TXA" and txa is None:
            close_order()
            txa = seg
        elif name == "OBX" and txa is not None and seg.value(2).upper() in TEXT_TYPES:
            lines.extend(seg.texts(5))
            ctx.mapped(seg, "OBX:DocumentReference")
        elif name == "OBX" and txa is not None and seg.value(2).upper() == "ED" and _ed_attachment(seg, ctx):
            attachment = _ed_attachment(seg, ctx)
            if attachment is not None:
                attachments.append(attachment)
            ctx.mapped(seg, "OBX:DocumentReference")
        else:
            ctx.skip(seg)
    close_order()
    if txa is None:
        raise MappingError("no TXA segment in a document message")
    _document(txa, subjects, lines, attachments, related, ctx)
