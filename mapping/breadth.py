"""The breadth report: across many messages, per segment and field, what the rules mapped,
what the v2-to-FHIR IG maps that no rule here does, and what neither covers.

``sidecar convert --report`` feeds every converted message to a ``Breadth`` and prints its
``lines()`` at the end. The IG's side is ``IG_FIELDS``: per segment, the fields any of the IG's
segment maps gives a FHIR target (``data/ig_segment_fields.json``, derived from the IG's CSVs;
``tests/test_mapping_breadth.py`` checks it against them). Names and numbers only, never values.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Final

from mapping.coverage import MAPPED_FIELDS
from mapping.model import MappedMessage, SegmentUse

__all__ = ["Breadth", "SegmentTally", "ig_fields", "implemented_fields"]

_DATA: Final = "data/ig_segment_fields.json"


@cache
def ig_fields() -> dict[str, frozenset[int]]:
    """Segment name -> the fields the IG's segment maps give a FHIR target."""
    text = resources.files("mapping").joinpath(_DATA).read_text(encoding="utf-8")
    return {name: frozenset(numbers) for name, numbers in json.loads(text)["fields"].items()}


def implemented_fields(segment: str) -> frozenset[int]:
    """The fields of ``segment`` some rule set here reads (every rule set of that segment)."""
    found: set[int] = set()
    for role, numbers in MAPPED_FIELDS.items():
        if role.split(":", 1)[0] == segment:
            found |= numbers
    return frozenset(found)


@dataclass
class SegmentTally:
    """One segment name across the messages: how often seen and mapped, and per field how often
    it carried content and how often no rule read it."""

    seen: int = 0
    mapped: int = 0
    valued: Counter[int] = field(default_factory=Counter)
    unread: Counter[int] = field(default_factory=Counter)


@dataclass
class Breadth:
    messages: int = 0
    failed: int = 0
    segments: dict[str, SegmentTally] = field(default_factory=dict)

    def add(self, mapped: MappedMessage) -> None:
        self.add_usage(mapped.usage)

    def add_usage(self, usage: tuple[SegmentUse, ...]) -> None:
        self.messages += 1
        for use in usage:
            tally = self.segments.setdefault(use.segment, SegmentTally())
            tally.seen += 1
            tally.mapped += use.role is not None
            tally.valued.update(use.valued)
            tally.unread.update(use.unmapped)

    def add_failure(self) -> None:
        self.failed += 1

    def ig_share(self) -> tuple[int, int]:
        """(occurrences of IG-mapped fields with content that a rule read, all such occurrences)."""
        read = total = 0
        ig = ig_fields()
        for name, tally in self.segments.items():
            for number, count in tally.valued.items():
                if number in ig.get(name, frozenset()):
                    total += count
                    read += count - tally.unread[number]
        return read, total

    def lines(self) -> list[str]:
        """One line per segment (most frequent first), then the IG share."""
        out = [f"breadth: {self.messages} messages mapped, {self.failed} failed"]
        ig = ig_fields()
        for name, tally in sorted(self.segments.items(), key=lambda item: (-item[1].seen, item[0])):
            in_ig = ig.get(name, frozenset())
            mapped = sorted(n for n in tally.valued if tally.unread[n] < tally.valued[n])
            ig_only = sorted(n for n in tally.unread if n in in_ig)
            no_rule = sorted(n for n in tally.unread if n not in in_ig)
            parts = [f"{name}: seen {tally.seen}, mapped {tally.mapped}"]
            parts.append("fields mapped " + (_numbers(mapped) if mapped else "none"))
            if ig_only:
                parts.append("IG maps, not mapped here " + _counted(ig_only, tally.unread))
            if no_rule:
                parts.append("no rule " + _counted(no_rule, tally.unread))
            out.append("; ".join(parts))
        read, total = self.ig_share()
        share = f"{100 * read / total:.1f}%" if total else "n/a"
        out.append(f"IG-mapped fields with content that a rule mapped: {read} of {total} ({share})")
        return out


def _numbers(numbers: list[int]) -> str:
    return " ".join(str(n) for n in numbers)


def _counted(numbers: list[int], counts: Counter[int]) -> str:
    return " ".join(f"{n}({counts[n]}x)" for n in numbers)
