"""Vocabulary maps for the visit and the care team, after the HL7 V2-to-FHIR IG concept maps:
re-admission, ambulatory status, bed status (PV1), visit priority, mode of arrival, visit
protection (PV2), provider role (ROL) and living will (PD1).

Held as code like ``mapping.people_vocab`` (whose ``translated_concept`` applies them);
``tests/test_mapping_visit.py`` checks every entry against the IG's CSVs. Only the codes the IG
gives a FHIR target are listed; the others keep the sender's coding alone.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AMBULATORY_STATUS",
    "BED_STATUS",
    "ENCOUNTER_PRIORITY",
    "LIVING_WILL",
    "MODE_OF_ARRIVAL",
    "PARTICIPATION_TYPE",
    "PROVIDER_ROLE",
    "READMISSION",
    "SPECIAL_VALUES",
    "YES_NO",
]

PARTICIPATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SPECIAL_VALUES: Final = "http://terminology.hl7.org/CodeSystem/special-values"

# HL7 table 0092 -> Encounter.hospitalization.reAdmission (IG: ReadmissionIndicator)
READMISSION: Final[dict[str, tuple[str, str, str]]] = {
    "R": ("http://terminology.hl7.org/CodeSystem/v2-0092", "R", "Re-admission"),
}

# HL7 table 0009 -> Encounter.hospitalization.specialArrangement (IG: AmbulatoryStatus)
AMBULATORY_STATUS: Final[dict[str, tuple[str, str, str]]] = {
    "A2": ("http://terminology.hl7.org/CodeSystem/encounter-special-arrangements", "wheel", "Wheelchair"),
    "A3": ("http://terminology.hl7.org/CodeSystem/v2-0009", "A3", "Comatose; non-responsive"),
    "A4": ("http://terminology.hl7.org/CodeSystem/v2-0009", "A4", "Disoriented"),
    "A5": ("http://terminology.hl7.org/CodeSystem/v2-0009", "A5", "Vision impaired"),
    "A6": ("http://terminology.hl7.org/CodeSystem/v2-0009", "A6", "Hearing impaired"),
    "A7": ("http://terminology.hl7.org/CodeSystem/v2-0009", "A7", "Speech impaired"),
    "A8": ("http://terminology.hl7.org/CodeSystem/v2-0009", "A8", "Non-English speaking"),
    "A9": ("http://terminology.hl7.org/CodeSystem/v2-0009", "A9", "Functional level unknown"),
    "B1": ("http://terminology.hl7.org/CodeSystem/v2-0009", "B1", "Oxygen therapy"),
    "B2": (
        "http://terminology.hl7.org/CodeSystem/v2-0009",
        "B2",
        "Special equipment (tubes, IVs, catheters)",
    ),
    "B3": ("http://terminology.hl7.org/CodeSystem/v2-0009", "B3", "Amputee"),
    "B4": ("http://terminology.hl7.org/CodeSystem/v2-0009", "B4", "Mastectomy"),
    "B5": ("http://terminology.hl7.org/CodeSystem/v2-0009", "B5", "Paraplegic"),
    "B6": ("http://terminology.hl7.org/CodeSystem/v2-0009", "B6", "Pregnant"),
}

# HL7 table 0116 -> Location.operationalStatus (IG: BedStatus)
BED_STATUS: Final[dict[str, tuple[str, str, str]]] = {
    "C": ("http://terminology.hl7.org/CodeSystem/v2-0116", "C", "Closed"),
    "H": ("http://terminology.hl7.org/CodeSystem/v2-0116", "H", "Housekeeping"),
    "O": ("http://terminology.hl7.org/CodeSystem/v2-0116", "O", "Occupied"),
    "U": ("http://terminology.hl7.org/CodeSystem/v2-0116", "U", "Unoccupied"),
    "K": ("http://terminology.hl7.org/CodeSystem/v2-0116", "K", "Contaminated"),
    "I": ("http://terminology.hl7.org/CodeSystem/v2-0116", "I", "Isolated"),
}

# HL7 table 0217 -> Encounter.priority (IG: EncounterPriority)
ENCOUNTER_PRIORITY: Final[dict[str, tuple[str, str, str]]] = {
    "1": ("http://terminology.hl7.org/CodeSystem/v3-ActPriority", "EM", "emergency"),
    "2": ("http://terminology.hl7.org/CodeSystem/v3-ActPriority", "UR", "urgent"),
    "3": ("http://terminology.hl7.org/CodeSystem/v3-ActPriority", "EL", "elective"),
}

# HL7 table 0430 -> the encounter-modeOfArrival extension (IG: ModeOfArrivalCode)
MODE_OF_ARRIVAL: Final[dict[str, tuple[str, str, str]]] = {
    "A": ("http://terminology.hl7.org/CodeSystem/v2-0430", "A", "Ambulance"),
    "C": ("http://terminology.hl7.org/CodeSystem/v2-0430", "C", "Car"),
    "F": ("http://terminology.hl7.org/CodeSystem/v2-0430", "F", "On foot"),
    "H": ("http://terminology.hl7.org/CodeSystem/v2-0430", "H", "Helicopter"),
    "P": ("http://terminology.hl7.org/CodeSystem/v2-0430", "P", "Public Transport"),
    "O": ("http://terminology.hl7.org/CodeSystem/v2-0430", "O", "Other"),
    "U": ("http://terminology.hl7.org/CodeSystem/v2-0430", "U", "Unknown"),
}

# HL7 table 0443 -> PractitionerRole.code / Encounter.participant.type (IG: ProviderRole)
PROVIDER_ROLE: Final[dict[str, tuple[str, str, str]]] = {
    "AD": (PARTICIPATION_TYPE, "ADM", "admitter"),
    "AT": (PARTICIPATION_TYPE, "ATND", "attender"),
    "CP": (PARTICIPATION_TYPE, "CON", "consultant"),
    "PP": ("http://snomed.info/sct", "446050000", "PCP - Primary care physician"),
    "RP": (PARTICIPATION_TYPE, "REF", "referrer"),
    "PI": ("http://snomed.info/sct", "40570005", "Interpreter"),
}

# HL7 table 0136 -> a Coding (IG: YesNoIndicator), for PV2-22 -> Encounter.meta.security
YES_NO: Final[dict[str, tuple[str, str, str]]] = {
    "Y": (SPECIAL_VALUES, "true", ""),
    "N": (SPECIAL_VALUES, "false", ""),
}

_V2_0315: Final = "http://terminology.hl7.org/CodeSystem/v2-0315"

# HL7 table 0315 -> the living-will Observation's value (IG: LivingWillCode)
LIVING_WILL: Final[dict[str, tuple[str, str, str]]] = {
    "Y": (_V2_0315, "Y", "Yes, patient has a living will"),
    "F": (_V2_0315, "F", "Yes, patient has a living will but it is not on file"),
    "N": (_V2_0315, "N", "No, patient does not have a living will and no information was provided"),
    "I": (_V2_0315, "I", "No, patient does not have a living will but information was provided"),
    "U": (_V2_0315, "U", "Unknown"),
}
