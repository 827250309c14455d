"""The value objects of the mapping API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mapping.site import Site


@dataclass(frozen=True)
class MappingOptions:
    default_timezone: str = "UTC"
    """IANA name; applied to HL7 DTM values that carry a time but no offset."""
    validate: bool = True
    """Validate every resource against the FHIR models (fhir.resources): about 0.15 ms a resource,
    most of a message's mapping time. The pipeline turns it off (what the mapper emits is shown
    valid by tests/test_fhir_validity.py, and de-identification validates its own output);
    ``sidecar convert`` and other library callers keep it on."""
    site: Site | None = None
    """Site customisation (Z-segment handlers, local code maps): see ``mapping.site``."""


@dataclass(frozen=True)
class PatientKey:
    """The identifier a Patient resource id derives from (its primary identifier)."""

    authority: str
    """Assigning authority of the identifier: CX.4 namespace id, else universal id; "" if none."""
    value: str
    """The identifier itself (CX.1)."""

    def __repr__(self) -> str:
        return f"PatientKey(authority={self.authority!r}, value=<{len(self.value)} chars>)"


@dataclass(frozen=True)
class UnmappedItem:
    """One piece of a message that no rule mapped: a whole segment (``fields`` empty), or the
    field numbers of a mapped segment that carried content without a rule. Never a value."""

    segment: str
    """Segment name, e.g. "ZPI"."""
    index: int
    """0-based position of the segment in the message (MSH is 0)."""
    fields: tuple[int, ...] = ()
    """Field numbers with content but no rule; empty when the whole segment went unmapped."""

    @property
    def whole_segment(self) -> bool:
        return not self.fields


@dataclass(frozen=True)
class SegmentUse:
    """What the rules did with one segment of a message, for the breadth report: the rule set
    that mapped it (None: no rule did), the fields that carried content, and those of them no
    rule read. Field numbers only, never a value."""

    segment: str
    index: int
    role: str | None
    valued: tuple[int, ...]
    unmapped: tuple[int, ...]


@dataclass(frozen=True)
class MappedMessage:
    message_type: str
    """``MSH-9.1^MSH-9.2``, e.g. "ADT^A01"; just "ORU" when the sender gave no trigger event."""
    control_id: str
    """MSH-10."""
    resources: list[dict[str, Any]]
    """FHIR R4 JSON dicts, each with resourceType and id (validated when ``MappingOptions.validate``)."""
    patient_keys: dict[str, PatientKey]
    """Patient resource id (as in ``resources``) -> its primary identifier."""
    phi_values: dict[str, str]
    """Every identifying string seen in the message -> its kind (NAME, ID, DATE, PHONE,
    ADDRESS, EMAIL). Identified data: never log it."""
    unmapped_segments: tuple[str, ...]
    """Names of segments with content that no rule mapped, in order, repeats kept."""
    report_source: tuple[UnmappedItem, ...] | Callable[[], tuple[UnmappedItem, ...]] = field(
        default=(), repr=False, compare=False
    )
    """The report, or what computes it on first use (see ``report``)."""
    usage_source: tuple[SegmentUse, ...] | Callable[[], tuple[SegmentUse, ...]] = field(
        default=(), repr=False, compare=False
    )
    """Per segment, what the rules did with it (see ``usage``), or what computes it on first use."""
    cleared: dict[str, frozenset[str]] = field(default_factory=dict)
    """"Type/id" (as in ``resources``) -> top-level elements the message deletes with HL7's
    explicit null ``""``; for Patient and Encounter, which updates merge (mapping.updates)."""
    order_values: frozenset[str] = frozenset()
    """The values of ``phi_values`` that identify an order, a specimen, a document or a visit
    (ORC-2/3/4, OBR-2/3, SPM-2, TXA-12/13, PV1-19) and nothing about the patient elsewhere in
    the message: scrubbed here, but not remembered as the patient's for later messages (a
    patient's orders would grow what every later message is scrubbed with)."""
    segment_driven: bool = False
    """True when the message type has no message map of its own and went through the
    segment-driven map (``mapping.generic``): segments mapped where they stand, the rest reported."""

    @property
    def report(self) -> tuple[UnmappedItem, ...]:
        """Unmapped segments and unmapped fields of mapped segments, in message order.

        Computed on first use: the pipeline never reads it (``sidecar convert --report`` does)."""
        source = self.report_source
        if callable(source):
            source = source()
            object.__setattr__(self, "report_source", source)  # frozen: cache it once
        return source

    @property
    def usage(self) -> tuple[SegmentUse, ...]:
        """Per segment (MSH included), the rule set that mapped it and its valued and unmapped
        fields: what ``sidecar convert --report`` tallies across a folder. Computed on first use."""
        source = self.usage_source
        if callable(source):
            source = source()
            object.__setattr__(self, "usage_source", source)
        return source

    def __repr__(self) -> str:
        # The default repr would print names, identifiers and dates into any log or traceback.
        return (
            f"MappedMessage(message_type={self.message_type!r}, resources={len(self.resources)}, "
            f"unmapped_segments={self.unmapped_segments!r})"
        )
