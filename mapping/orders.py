"""ORC + OBR -> ServiceRequest (IG ORC[ServiceRequest], OBR[ServiceRequest]), and the ORM^O01 /
OML^O21 message maps (Patient, Encounter, ServiceRequest per order, Observation per OBX,
RelatedPerson per NK1 after a PID: IG OML_O21 PATIENT.NK1[RelatedPerson]; ORM^O01 is read the same
way; an NK1 before any PID has no patient of its own and is reported).

Pairing follows the message structure: an ORC opens an order, the OBR that follows it is that
order's detail; a second OBR without its own ORC opens an order of its own (OML/ORM allow one
detail per ORC), so OBRs are never all hung on the first ORC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mapping import ids, staff, workflow_vocab
from mapping.context import Context, PatientRef
from mapping.hl7.datatypes import (
    Json,
    code_key,
    cwe_concept,
    ei_identifier,
    hd_system,
    resource,
    xad_address,
    xtn_contact,
)
from mapping.hl7.dtm import to_date_time
from mapping.hl7.parse import EMPTY, Composite, Segment
from mapping.observation import attach_note, build_observation, note_text
from mapping.related import map_nk1
from mapping.subject import Subjects


@dataclass
class Order:
    """One ORDER group: its ORC and/or OBR, and what hangs under it."""

    orc: Segment | None
    obr: Segment | None
    patient: PatientRef
    index: int
    notes: list[str] = field(default_factory=list)
    supporting: list[dict[str, str]] = field(default_factory=list)
    resource_id: str = ""

    def _field(self, orc_no: int, obr_no: int) -> Composite:
        """ORC-n when valued, else OBR-n (the IG's 'IF ORC-2 NOT VALUED' pairs)."""
        if self.orc is not None and self.orc.first(orc_no).get(1):
            return self.orc.first(orc_no)
        return self.obr.first(obr_no) if self.obr is not None else EMPTY

    @property
    def placer(self) -> Composite:
        return self._field(2, 2)

    @property
    def filler(self) -> Composite:
        return self._field(3, 3)


def _identity(order: Order) -> str | None:
    code = code_key(order.obr.first(4)) if order.obr is not None else ""
    for role, ei in (("filler", order.filler), ("placer", order.placer)):
        if ei.get(1):
            return "\x1f".join((role, ei.get(2) or ei.get(3), ei.get(1), code))
    return None


def assign_id(order: Order, ctx: Context) -> str:
    """The ServiceRequest id: from the order numbers (stable across messages), else positional."""
    if not order.resource_id:
        basis = _identity(order)
        preferred = ids.resource_id("ServiceRequest", basis) if basis else None
        order.resource_id = ctx.unique_id("ServiceRequest", preferred, "order", str(order.index))
    return order.resource_id


def _status(orc: Segment | None) -> str:
    if orc is None:
        return "unknown"
    by_status = workflow_vocab.ORDER_STATUS.get(orc.value(5).upper())
    if by_status:
        return by_status
    return workflow_vocab.ORDER_CONTROL_STATUS.get(orc.value(1).upper(), "unknown")


def _intent(obr: Segment | None) -> str:
    return "reflex-order" if obr is not None and obr.value(11).upper() == "G" else "order"


def _requisition(orc: Segment | None) -> Json | None:
    if orc is None or not orc.value(4):
        return None
    group = orc.first(4)
    found: Json = {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PGN"}]},
        "value": group.get(1),
    }
    system = hd_system(group.get(2), group.get(3), group.get(4))
    if system:
        found["system"] = system
    return found


CALLBACK_EXTENSION = "http://hl7.org/fhir/StructureDefinition/servicerequest-order-callback-phone-number"
"""ORC-14 / OBR-17 (IG ORC[ServiceRequest]; OBR-17's row names no url, so it gets this one)."""


def _callback(field: Composite) -> Json | None:
    contact = xtn_contact(field, None)
    return {"url": CALLBACK_EXTENSION, "valueContactPoint": contact} if contact else None


def requester(orc: Segment | None, obr: Segment | None, ctx: Context) -> Json | None:
    """The ordering provider (IG ORC[ServiceRequest] ORC-12, 21-24; OBR[ServiceRequest] OBR-16).

    ORC-12 (with ORC-24 as the practitioner's address) and ORC-21 (with ORC-22/23 as the
    organisation's address and telecom) make a PractitionerRole; OBR-16 names the practitioner
    only when ORC-12 does not, and is the requester itself when no ORC names an organisation.
    OBR-17 is the callback number on that reference.
    """

    def orc_field(number: int) -> Composite:
        return orc.first(number) if orc is not None else EMPTY

    address = xad_address(orc_field(24), ctx.zone)
    practitioner_id = staff.practitioner(staff.person_from_xcn(orc_field(12)), ctx, address=address)
    ordered_by_orc = practitioner_id is not None
    if practitioner_id is None and obr is not None:
        practitioner_id = staff.practitioner(staff.person_from_xcn(obr.first(16)), ctx, address=address)
    organization_id = staff.organization(
        orc_field(21),
        ctx,
        address=xad_address(orc_field(22), ctx.zone),
        telecom=xtn_contact(orc_field(23), None),
    )
    found: Json | None
    if ordered_by_orc or organization_id is not None:
        role = staff.practitioner_role(ctx, practitioner_id=practitioner_id, organization_id=organization_id)
        found = ids.reference("PractitionerRole", role) if role else None
    else:
        found = ids.reference("Practitioner", practitioner_id) if practitioner_id else None
    callback = _callback(obr.first(17)) if obr is not None else None
    if found is not None and callback is not None:
        return {**found, "extension": [callback]}
    return found


def _order_callback(orc: Segment | None, obr: Segment | None) -> Json | None:
    """ORC-14 -> the callback extension, "IF OBR-17 NOT VALUED" (IG ORC[ServiceRequest])."""
    if orc is None or (obr is not None and obr.raw(17)):
        return None
    return _callback(orc.first(14))


def build_service_request(order: Order, ctx: Context) -> Json:
    """Add the ServiceRequest of ``order`` and return it."""
    orc, obr = order.orc, order.obr
    if orc is not None:
        ctx.mapped(orc, "ORC:ServiceRequest")
    if obr is not None:
        ctx.mapped(obr, "OBR:ServiceRequest")
    authored = (
        to_date_time(orc.value(9), ctx.zone) if orc is not None and orc.value(1).upper() == "NW" else None
    )
    identifiers = [
        i for i in (ei_identifier(order.placer, "PLAC"), ei_identifier(order.filler, "FILL")) if i is not None
    ]
    reasons = [c for c in (cwe_concept(r) for r in obr.repetitions(31)) if c] if obr is not None else []
    service_request = resource(
        "ServiceRequest",
        assign_id(order, ctx),
        {
            "extension": [c for c in (_order_callback(orc, obr),) if c],
            "identifier": identifiers,
            "requisition": _requisition(orc),
            "status": _status(orc),
            "intent": _intent(obr),
            "priority": workflow_vocab.ORDER_PRIORITY.get(obr.value(5).upper()) if obr is not None else None,
            "code": cwe_concept(obr.first(4)) if obr is not None else None,
            "subject": order.patient.subject,
            "encounter": order.patient.encounter,
            "occurrenceDateTime": to_date_time(obr.value(6), ctx.zone) if obr is not None else None,
            "authoredOn": authored,
            "requester": requester(orc, obr, ctx),
            "reasonCode": reasons,
            "supportingInfo": order.supporting,
            "note": [{"text": n} for n in order.notes],
        },
    )
    ctx.add(service_request)
    return service_request


def order_note(order: Order, nte: Segment, ctx: Context) -> None:
    """NTE after ORC/OBR -> ServiceRequest.note (IG NTE[ServiceRequest])."""
    text = note_text(nte)
    if text:
        order.notes.append(text)
        ctx.mapped(nte, "NTE")
    else:
        ctx.skip(nte)


def map_orders(ctx: Context) -> None:
    """ORM^O01 and OML^O21."""
    subjects = Subjects(ctx, "an order message")
    order: Order | None = None
    last_observation: Json | None = None
    count = obx_count = 0

    def close() -> None:
        nonlocal order
        if order is not None:
            build_service_request(order, ctx)
            order = None

    for seg in ctx.message.segments[1:]:
        name = seg.name
        if name == "PID":
            close()
            subjects.take_pid(seg)
            last_observation = None
        elif name in ("PV1", "PD1", "PV2") and subjects.take(seg):
            last_observation = None
        elif name == "ORC" or (name == "OBR" and (order is None or order.obr is not None)):
            close()
            count += 1
            obx_count = 0
            orc = seg if name == "ORC" else None
            order = Order(orc, seg if name == "OBR" else None, subjects.current(), count)
            last_observation = None
        elif name == "OBR" and order is not None:
            order.obr = seg
        elif name == "OBX" and order is not None and (seg.value(3) or seg.raw(5)):
            obx_count += 1
            observation_id = ctx.unique_id("Observation", None, "order-obx", str(order.index), str(obx_count))
            observation = build_observation(seg, observation_id, order.patient, ctx)
            ctx.add(observation)
            ctx.mapped(seg, "OBX:Observation")
            order.supporting.append(ids.reference("Observation", observation_id))
            last_observation = observation
        elif name == "NTE" and last_observation is not None:
            attach_note(last_observation, seg, ctx)
        elif name == "NTE" and order is not None:
            order_note(order, seg, ctx)
        elif (
            name == "NK1"
            and subjects.patient is not None
            and map_nk1(seg, subjects.patient, ctx.position(seg), ctx)
        ):
            last_observation = None  # IG OML_O21 PATIENT.NK1: NK1[RelatedPerson] of the PID before it
        else:
            ctx.skip(seg)
            last_observation = None
    close()
