"""Site customisation without forking: Z-segment handlers, field rules and local code maps.

    site = Site()

    @site.segment("ZPI")
    def zpi(segment: Segment, ctx: Context) -> list[Json] | None:
        ...  # return new resources (added for you), or modify ctx.resources and return None

    @site.field("PID", 40)
    def pid_40(segment: Segment, ctx: Context) -> None:
        ...  # runs after the standard rules; the field is no longer reported as unmapped

    site.load_code_map(Path("codes.json"))  # or .toml
    mapped = map_message(text, MappingOptions(site=site))

A code map file lists local codes and the standard coding each one stands for:

    [[code]]
    field = "OBX-3"          # OBX-3, OBR-4 or RXA-5
    local_system = "L"       # CWE.3 as the sender writes it; "" matches a code without one
    local_code = "GLU"
    system = "http://loinc.org"
    code = "2345-7"
    display = "Glucose [Mass/volume] in Serum or Plasma"

The standard coding is added in front of the local one (the local coding is kept).
A handler must raise only ``MappingError``; any other exception is reported as an internal
mapping error naming the handler's module, never the data.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from core.errors import MappingError
from mapping import vocab
from mapping.context import Context
from mapping.hl7.datatypes import Json, clean_code
from mapping.hl7.parse import Segment

SegmentHandler = Callable[[Segment, Context], "list[Json] | None"]
FieldHandler = Callable[[Segment, Context], None]

# Which resource element holds the concept of each field a code map may name.
CODE_FIELDS: Final[dict[str, tuple[str, str]]] = {
    "OBX-3": ("Observation", "code"),
    "OBR-4": ("DiagnosticReport", "code"),
    "RXA-5": ("Immunization", "vaccineCode"),
}


@dataclass(frozen=True)
class CodeMapping:
    field: str
    local_system: str
    local_code: str
    system: str
    code: str
    display: str = ""

    def coding(self) -> Json:
        found: Json = {"system": self.system, "code": self.code}
        if self.display:
            found["display"] = self.display
        return found


@dataclass
class Site:
    """The customisations of one site; pass it as ``MappingOptions(site=...)``."""

    segments: dict[str, SegmentHandler] = field(default_factory=dict)
    fields: dict[tuple[str, int], FieldHandler] = field(default_factory=dict)
    codes: dict[tuple[str, str | None, str], CodeMapping] = field(default_factory=dict)

    # -- registration ---------------------------------------------------------------------

    def segment(self, name: str) -> Callable[[SegmentHandler], SegmentHandler]:
        """Register a handler for segments named ``name`` that no standard rule maps."""
        if len(name) != 3 or not name.isalnum() or not name.isupper():
            raise ValueError("a segment name is three upper-case letters or digits")

        def register(handler: SegmentHandler) -> SegmentHandler:
            self.segments[name] = handler
            return handler

        return register

    def field(self, segment: str, number: int) -> Callable[[FieldHandler], FieldHandler]:
        """Register a rule for field ``number`` of mapped ``segment`` segments."""
        if number < 1:
            raise ValueError("field numbers start at 1")

        def register(handler: FieldHandler) -> FieldHandler:
            self.fields[(segment, number)] = handler
            return handler

        return register

    def add_code(self, mapping: CodeMapping) -> None:
        if mapping.field not in CODE_FIELDS:
            raise ValueError(f"code maps support {', '.join(sorted(CODE_FIELDS))}")
        system = vocab.coding_system(mapping.local_system)
        self.codes[(mapping.field, system, clean_code(mapping.local_code))] = mapping

    def load_code_map(self, path: Path) -> None:
        """Load a code map from a ``.toml`` or ``.json`` file (see the module docstring)."""
        text = path.read_text(encoding="utf-8")
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        entries = data.get("code", []) if isinstance(data, dict) else data
        for entry in entries:
            self.add_code(
                CodeMapping(
                    field=str(entry["field"]),
                    local_system=str(entry.get("local_system", "")),
                    local_code=str(entry["local_code"]),
                    system=str(entry["system"]),
                    code=str(entry["code"]),
                    display=str(entry.get("display", "")),
                )
            )

    # -- use during mapping ------------------------------------------------------------------

    def handle_segment(self, segment: Segment, ctx: Context) -> bool:
        """Run the handler for ``segment`` if there is one; True when it was handled."""
        handler = self.segments.get(segment.name)
        if handler is None:
            return False
        for resource in handler(segment, ctx) or ():
            if not isinstance(resource, dict) or "resourceType" not in resource or "id" not in resource:
                raise MappingError(f"site handler for {segment.name} returned something not a resource")
            ctx.add(resource)
        return True

    def apply_fields(self, ctx: Context) -> None:
        """Run field rules on every mapped segment that has content in their field."""
        if not self.fields:
            return
        for index, segment in enumerate(ctx.message.segments):
            if index not in ctx.roles and index != 0:
                continue
            for (name, number), handler in self.fields.items():
                if segment.name == name and segment.field_has_content(number):
                    handler(segment, ctx)
                    ctx.handled_fields.add((index, number))

    def apply_codes(self, resources: list[Json]) -> None:
        """Add the standard coding in front of every mapped local code."""
        if not self.codes:
            return
        targets = {(rt, el): f for f, (rt, el) in CODE_FIELDS.items()}
        for resource in resources:
            for (resource_type, element), field_name in targets.items():
                if resource.get("resourceType") != resource_type:
                    continue
                concept = resource.get(element)
                if isinstance(concept, dict):
                    self._map_concept(field_name, concept)

    def _map_concept(self, field_name: str, concept: Json) -> None:
        codings = concept.get("coding", [])
        added = []
        for coding in codings:
            found = self.codes.get((field_name, coding.get("system"), coding.get("code", "")))
            if found is not None and found.coding() not in codings and found.coding() not in added:
                added.append(found.coding())
        if added:
            concept["coding"] = [*added, *codings]
