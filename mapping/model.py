"""The value objects of the mapping API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MappingOptions:
    default_timezone: str = "UTC"
    """IANA name; applied to HL7 DTM values that carry a time but no offset."""


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
class MappedMessage:
    message_type: str
    """``MSH-9.1^MSH-9.2``, e.g. "ADT^A01"; just "ORU" when the sender gave no trigger event."""
    control_id: str
    """MSH-10."""
    resources: list[dict[str, Any]]
    """FHIR R4 JSON dicts, each with resourceType and id, each validated."""
    patient_keys: dict[str, PatientKey]
    """Patient resource id (as in ``resources``) -> its primary identifier."""
    phi_values: dict[str, str]
    """Every identifying string seen in the message -> its kind (NAME, ID, DATE, PHONE,
    ADDRESS, EMAIL). Identified data: never log it."""
    unmapped_segments: tuple[str, ...]
    """Names of segments with content that no rule mapped, in order, repeats kept."""

    def __repr__(self) -> str:
        # The default repr would print names, identifiers and dates into any log or traceback.
        return (
            f"MappedMessage(message_type={self.message_type!r}, resources={len(self.resources)}, "
            f"unmapped_segments={self.unmapped_segments!r})"
        )
