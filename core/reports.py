"""Which kind of report a DiagnosticReport is: imaging or laboratory.

Both zones need the same answer: the identified zone to trigger the right summary kind
(worker.triggers), the model zone to select its context (sandbox.templates). HL7 v2 feeds
say it in OBR-24 (table 0074, mapped to ``category``) when they say it at all; otherwise
the report's own link to a study or its name tells.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["IMAGING_SECTIONS", "is_imaging_report"]

# HL7 table 0074 diagnostic service sections, and FHIR's diagnostic-service-sections, that
# are imaging.
IMAGING_SECTIONS = frozenset(
    {"RAD", "RX", "CT", "CUS", "MR", "NMR", "NMS", "US", "VUS", "XRC", "OUS", "IMG", "RUS"}
)
_IMAGING_NAME = re.compile(
    r"(?<![A-Za-z])(?:CTA?|MRI?|MRA|PET|SPECT|DR|CR|DX|XR|X-?ray|radiolog\w*|radiograph\w*"
    r"|ultrasound|sonograph\w*|echocardiogra\w*"
    r"|mammogra\w*|angiogra\w*|fluoroscop\w*|imaging|scan)(?![A-Za-z])"
    r"|影像|超声|彩超|平扫|增强|磁共振|核磁|造影|胸片|钼靶|放射|X线",
    re.IGNORECASE,
)


def is_imaging_report(report: dict[str, Any]) -> bool:
    for category in report.get("category") or []:
        for coding in category.get("coding", []):
            if str(coding.get("code", "")).upper() in IMAGING_SECTIONS:
                return True
    if report.get("imagingStudy"):
        return True
    code = report.get("code") or {}
    names = [str(code.get("text") or "")] + [str(c.get("display") or "") for c in code.get("coding", [])]
    return any(_IMAGING_NAME.search(name) for name in names)
