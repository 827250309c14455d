"""What the segment mappers of one message share while they run."""

from __future__ import annotations

from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from core.errors import MappingError
from mapping import ids
from mapping.hl7.datatypes import Json
from mapping.hl7.parse import Message, Segment
from mapping.model import PatientKey


@dataclass
class PatientRef:
    """A mapped Patient (and the Encounter of its PV1, once known) that later segments point at."""

    resource_id: str
    key: PatientKey
    encounter_id: str | None = None

    @property
    def subject(self) -> dict[str, str]:
        return ids.reference("Patient", self.resource_id)

    @property
    def encounter(self) -> dict[str, str] | None:
        return ids.reference("Encounter", self.encounter_id) if self.encounter_id else None


@dataclass
class Context:
    message: Message
    zone: ZoneInfo
    basis: str
    """Message-scoped root of positional ids (see ``ids.message_basis``)."""
    trigger: str
    resources: list[Json] = field(default_factory=list)
    patient_keys: dict[str, PatientKey] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    _ids: set[str] = field(default_factory=set)

    def add(self, resource: Json) -> None:
        key = resource["resourceType"] + "/" + resource["id"]
        if key in self._ids:
            # Callers disambiguate before adding; reaching here is a mapper bug, and a Bundle
            # with two PUTs to one URL would be refused by any server.
            raise MappingError(f"two {resource['resourceType']} resources got the same id")
        self._ids.add(key)
        self.resources.append(resource)

    def taken(self, resource_type: str, resource_id: str) -> bool:
        return f"{resource_type}/{resource_id}" in self._ids

    def skip(self, segment: Segment) -> None:
        """Record a segment no rule maps (only when it carries something)."""
        if segment.has_content():
            self.unmapped.append(segment.name)
