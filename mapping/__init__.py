"""HL7 v2 -> FHIR R4 mapping: pure functions, identified data in memory only.

    from mapping import map_message, MappingOptions
    mapped = map_message(text, MappingOptions(default_timezone="Asia/Shanghai"))

Supported: ADT^* (Patient, Encounter) and ORU^R01/R30-R33 (Patient, Encounter,
DiagnosticReport, Observation). Other message types raise ``UnsupportedMessage``; anything
else that stops a mapping raises ``MappingError`` (both from ``core.errors``).
"""

from mapping.message import map_message
from mapping.model import MappedMessage, MappingOptions, PatientKey

__all__ = ["MappedMessage", "MappingOptions", "PatientKey", "map_message"]

# Users see mapping.X, not the private module it lives in (as httpx does).
for _name in __all__:
    globals()[_name].__module__ = "mapping"
del _name
