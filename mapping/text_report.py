"""Text reports: OBX text lines under one OBR -> DiagnosticReport.presentedForm and conclusion.

A report counts as a text report when every OBX under its OBR is TX/FT/ST and none is a bare
number (a numeric panel with a comment line is not a text report). ``conclusion`` is the
impression section when one is coded (OBX-3 says IMPRESSION or LOINC 19005-8), else the
whole text.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Final

from mapping.hl7.datatypes import Json
from mapping.hl7.numeric import parse_number
from mapping.hl7.parse import Segment
from mapping.observation import TEXT_TYPES

_IMPRESSION_CODES: Final = frozenset({"19005-8", "IMP", "IMPRESSION"})


@dataclass
class TextReport:
    lines: list[str] = field(default_factory=list)
    impression: list[str] = field(default_factory=list)
    other: bool = False
    """An OBX that is not a text line was seen: not a text report."""

    def add(self, obx: Segment) -> None:
        if self.other:
            return  # already not a text report: nothing more to collect
        if obx.value(2).upper() not in TEXT_TYPES:
            self.other = True
            return
        texts = obx.texts(5)
        if any(parse_number(t) is not None for t in texts):
            self.other = True
            return
        self.lines.extend(texts)
        code = obx.first(3)
        labels = {code.get(1).upper(), code.get(2).upper(), code.get(4).upper()}
        if labels & _IMPRESSION_CODES or any("IMPRESSION" in label for label in labels):
            self.impression.extend(texts)

    def members(self) -> Json:
        """``presentedForm`` and ``conclusion`` for the DiagnosticReport; {} when not text."""
        if self.other or not self.lines:
            return {}
        text = "\n".join(self.lines)
        data = base64.b64encode(text.encode("utf-8")).decode("ascii")
        return {
            "presentedForm": [{"contentType": "text/plain", "data": data}],
            "conclusion": "\n".join(self.impression) or text,
        }
