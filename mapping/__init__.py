"""HL7 v2 -> FHIR R4 mapping: pure functions, identified data in memory only.

    from mapping import map_message, MappingOptions, report_lines
    mapped = map_message(text, MappingOptions(default_timezone="Asia/Shanghai"))
    for line in report_lines(mapped):  # what no rule mapped (names and numbers, no values)
        ...

Supported: ADT^* (Patient, Encounter, Observation, RelatedPerson, Coverage, AllergyIntolerance,
Condition, Procedure; MRG merges as Patient.link), ORU^R01/R30-R33
(Patient, Encounter, DiagnosticReport, Observation), ORM^O01 and OML^O21 (ServiceRequest),
MDM^T01-T11 (DocumentReference), SIU^S12-S26 (Appointment), VXU^V04 (Immunization). Every
other message type goes through the segment-driven map (``mapping.generic``: PID, PV1, ORC/OBR,
RXO/RXE, RXD, RXA, OBX, SPM, PRB, DG1, AL1, PR1 and NTE wherever they stand, the rest
reported); see docs/mapping-notes.md. Site rules (Z-segments, fields, local code maps) plug in
through ``MappingOptions(site=mapping.site.Site())``. An MSH-9 that names no HL7 message type
raises ``UnsupportedMessage``; anything else that stops a mapping raises ``MappingError`` (both
from ``core.errors``).

DICOM: ``mapping.dicom.map_dataset`` maps one instance (a pydicom Dataset) to its ImagingStudy
and a Patient stub, with patient keys and identifying values as above; ``merge_studies`` puts
the instances of one study together.

Members load on first use (``core.frontdoor``): ``sidecar stats`` reads a constant of
``mapping.ids`` without loading the mapping tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.frontdoor import lazy_exports

if TYPE_CHECKING:
    from mapping.coverage import report_lines
    from mapping.message import map_message
    from mapping.model import MappedMessage, MappingOptions, PatientKey, UnmappedItem

__all__ = ["MappedMessage", "MappingOptions", "PatientKey", "UnmappedItem", "map_message", "report_lines"]
__getattr__ = lazy_exports(
    __name__,
    {
        "MappedMessage": "mapping.model",
        "MappingOptions": "mapping.model",
        "PatientKey": "mapping.model",
        "UnmappedItem": "mapping.model",
        "map_message": "mapping.message",
        "report_lines": "mapping.coverage",
    },
)
