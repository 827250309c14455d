"""``map_message``: tokenize, dispatch on MSH-9, validate, and turn every failure into a
MappingError whose reason names segments and fields but never a data value."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

from core.errors import MappingError, UnsupportedMessage
from core.fhir import FhirValidationError, validate_resource
from mapping import ids, phi
from mapping.adt import map_adt
from mapping.appointment import SCHEDULE_TRIGGERS, map_siu
from mapping.context import Context
from mapping.coverage import build_report, build_usage
from mapping.document import DOCUMENT_TRIGGERS, map_mdm
from mapping.generic import map_generic
from mapping.hl7.dtm import zone
from mapping.hl7.parse import Message, parse
from mapping.immunization import map_vxu
from mapping.model import MappedMessage, MappingOptions, SegmentUse, UnmappedItem
from mapping.orders import map_orders
from mapping.oru import RESULT_TRIGGERS, map_oru

_DEFAULT_OPTIONS = MappingOptions()
_MESSAGE_TYPE = re.compile(r"[A-Z0-9]{3}(\^[A-Z0-9]{1,4})?")
_HL7_CODE = re.compile(r"[A-Z]{3}")


Mapper = Callable[[Context], None]

# The message types with a map of their own: MSH-9.1, the triggers it covers (None: all), the
# map. Every other message goes segment by segment, the rest reported (mapping.generic).
_MESSAGE_MAPS: dict[str, tuple[frozenset[str] | None, Mapper]] = {
    "ADT": (None, map_adt),
    "ORU": (frozenset(RESULT_TRIGGERS), map_oru),
    "ORM": (frozenset({"O01"}), map_orders),
    "OML": (frozenset({"O21"}), map_orders),
    "MDM": (frozenset(DOCUMENT_TRIGGERS), map_mdm),
    "SIU": (frozenset(SCHEDULE_TRIGGERS), map_siu),
    "VXU": (frozenset({"V04"}), map_vxu),
}


def _mapper(code: str, trigger: str) -> Mapper:
    triggers, mapper = _MESSAGE_MAPS.get(code, (frozenset(), map_generic))
    return mapper if triggers is None or trigger in triggers else map_generic


def _map(text: str, options: MappingOptions) -> MappedMessage:
    if not isinstance(text, str):
        raise MappingError("input must be decoded text (str), not bytes")
    message: Message = parse(text)
    msh = message.msh
    code, trigger = msh.value(9, 1).upper(), msh.value(9, 2).upper()
    message_type = f"{code}^{trigger}" if trigger else code
    if not code:
        raise MappingError("MSH-9 message type missing")
    mapper = _mapper(code, trigger)
    if mapper is map_generic:
        if not _MESSAGE_TYPE.fullmatch(message_type):
            # A shifted or garbled MSH could put anything here; a reason must not quote data.
            raise MappingError("MSH-9 is not a message type code")
        if not _HL7_CODE.fullmatch(code):
            # Shaped like one, but no HL7 message code (table 0076 codes are three letters).
            raise UnsupportedMessage("MSH-9.1 is not an HL7 message type")

    control_id = msh.value(10)
    sender = "\x1f".join((msh.raw(3), msh.raw(4)))
    ctx = Context(
        message=message,
        zone=zone(options.default_timezone),
        basis=ids.message_basis(sender, control_id, message.text),
        trigger=trigger,
        site=options.site,
    )
    mapper(ctx)
    if options.site is not None:
        options.site.apply_fields(ctx)
        options.site.apply_codes(ctx.resources)
    if options.validate:
        for resource in ctx.resources:
            validate_resource(resource)
    phi_values, order_values = phi.collect_scoped(message)
    return MappedMessage(
        message_type=message_type,
        control_id=control_id,
        resources=ctx.resources,
        patient_keys=ctx.patient_keys,
        phi_values=phi_values,
        order_values=order_values,
        unmapped_segments=tuple(ctx.unmapped),
        report_source=partial(_report, ctx),
        usage_source=partial(_usage, ctx),
        cleared=ctx.cleared,
        segment_driven=mapper is map_generic,
    )


def _where(exc: BaseException) -> str:
    """The innermost frame of this package: where a bug is, without any value from the data."""
    tb = exc.__traceback__
    location = "?"
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_globals.get("__name__", "").startswith("mapping"):
            location = f"{frame.f_globals['__name__']}:{tb.tb_lineno}"
        tb = tb.tb_next
    return location


def _report(ctx: Context) -> tuple[UnmappedItem, ...]:
    """``build_report`` when ``MappedMessage.report`` is first read, failing as ``map_message`` would."""
    try:
        return build_report(ctx)
    except Exception as exc:
        reason = f"internal mapping error {type(exc).__name__} at {_where(exc)}"
    raise MappingError(reason)


def _usage(ctx: Context) -> tuple[SegmentUse, ...]:
    """``build_usage`` when ``MappedMessage.usage`` is first read, failing as ``map_message`` would."""
    try:
        return build_usage(ctx)
    except Exception as exc:
        reason = f"internal mapping error {type(exc).__name__} at {_where(exc)}"
    raise MappingError(reason)


def map_message(text: str, options: MappingOptions = _DEFAULT_OPTIONS) -> MappedMessage:
    """Map the decoded text of one HL7 v2 message to FHIR R4 resources.

    Message types without a message map of their own go through the segment-driven map
    (``mapping.generic``). Raises UnsupportedMessage when MSH-9 names no HL7 message type, and
    MappingError for anything else that stops the mapping; no other exception type leaves this function.
    """
    try:
        return _map(text, options)
    except MappingError:
        raise
    except FhirValidationError as exc:
        raise MappingError(str(exc)) from exc  # its reason names paths only, by design
    except Exception as exc:
        # A bug, not bad input. The original message could quote the data (a ValueError
        # repeating a value), so it is neither chained nor left as context (hence the raise
        # below, outside this block); the reason says where it happened instead.
        reason = f"internal mapping error {type(exc).__name__} at {_where(exc)}"
    raise MappingError(reason)
