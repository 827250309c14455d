"""What the segment mappers of one message share while they run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from core.errors import MappingError
from mapping import ids
from mapping.hl7.datatypes import Json
from mapping.hl7.parse import Message, Segment
from mapping.model import PatientKey
from mapping.updates import is_element

if TYPE_CHECKING:
    from mapping.site import Site


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
    site: Site | None = None
    unmapped_at: list[int] = field(default_factory=list)
    """Message positions of the segments in ``unmapped`` (same order)."""
    handled_fields: set[tuple[int, int]] = field(default_factory=set)
    """(segment position, field number) pairs a site rule took care of."""
    handled_segments: set[int] = field(default_factory=set)
    """Positions of segments a site rule mapped (Z-segments), never reported."""
    roles: dict[int, str] = field(default_factory=dict)
    """Segment position -> the rule set that mapped it (a key of ``coverage.MAPPED_FIELDS``)."""
    cleared: dict[str, frozenset[str]] = field(default_factory=dict)
    """"Type/id" -> top-level elements the message deletes with an explicit null ``""``."""
    _ids: set[str] = field(default_factory=set)
    _positions: dict[int, int] = field(default_factory=dict)

    def add(self, resource: Json) -> None:
        key = resource["resourceType"] + "/" + resource["id"]
        if key in self._ids:
            # Callers disambiguate before adding; reaching here is a mapper bug, and a Bundle
            # with two PUTs to one URL would be refused by any server.
            raise MappingError(f"two {resource['resourceType']} resources got the same id")
        self._ids.add(key)
        self.resources.append(resource)

    def clear_nulled(self, resource: Json, segment: Segment, sources: dict[str, tuple[int, ...]]) -> None:
        """Note the elements of ``resource`` that ``segment`` deletes: those the resource
        lacks while one of their source fields (``sources``) is the explicit null."""
        if not segment.may_hold_null():
            return  # the usual case: no '""' anywhere in the segment
        nulled = frozenset(
            element
            for element, fields in sources.items()
            if any(segment.is_null(n) for n in fields)  # the cheaper test first: rarely true
            and not any(is_element(key, element) for key in resource)
        )
        if nulled:
            self.cleared[resource["resourceType"] + "/" + resource["id"]] = nulled

    def find(self, resource_type: str, resource_id: str) -> Json | None:
        """The resource of this message with that type and id (later segments add to it)."""
        if not self.taken(resource_type, resource_id):
            return None
        return next(
            r for r in self.resources if r["resourceType"] == resource_type and r["id"] == resource_id
        )

    def taken(self, resource_type: str, resource_id: str) -> bool:
        return f"{resource_type}/{resource_id}" in self._ids

    def unique_id(self, resource_type: str, preferred: str | None, *positional: str) -> str:
        """``preferred`` unless already used in this message, else an id from the message basis
        and ``positional`` (parts that are unique within a message by construction)."""
        if preferred is not None and not self.taken(resource_type, preferred):
            return preferred
        return ids.resource_id(resource_type, self.basis, *positional)

    def position(self, segment: Segment) -> int:
        """The 0-based position of ``segment`` in the message (MSH is 0)."""
        if not self._positions:
            self._positions = {id(s): i for i, s in enumerate(self.message.segments)}
        return self._positions.get(id(segment), -1)

    def mapped(self, segment: Segment, role: str) -> None:
        """Record that ``segment`` was mapped by the rules named ``role`` (for the report)."""
        self.roles[self.position(segment)] = role

    def skip(self, segment: Segment) -> None:
        """Record a segment no rule maps (only when it carries something); a site handler for
        its name gets it first."""
        if self.site is not None and self.site.handle_segment(segment, self):
            self.handled_segments.add(self.position(segment))
            return
        if segment.has_content():
            self.unmapped.append(segment.name)
            self.unmapped_at.append(self.position(segment))

    def skip_always(self, segment: Segment) -> None:
        """Record a segment as unmapped even when it carries nothing but a set ID."""
        self.unmapped.append(segment.name)
        self.unmapped_at.append(self.position(segment))
