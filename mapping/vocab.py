"""Vocabulary maps from HL7 v2 tables to FHIR codes, after the HL7 V2-to-FHIR IG concept maps.

The IG's CSVs live outside the repository (``shared/spec/v2-to-fhir/codesystems``), so the
maps are held here as code; ``tests/test_mapping_vocab.py`` checks them against the CSVs.
Where the IG leaves a v2 code unmapped and FHIR still requires a value (Observation.status,
DiagnosticReport.status), the extra entries are marked ``# not in the IG``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final
from urllib.parse import quote

V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0004: Final = "http://terminology.hl7.org/CodeSystem/v2-0004"
V2_0301: Final = "http://terminology.hl7.org/CodeSystem/v2-0301"
"""Universal ID type (HD.3)."""
V3_NULL_FLAVOR: Final = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
V3_INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_ABSENT_REASON: Final = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
UCUM: Final = "http://unitsofmeasure.org"

# HL7 table 0001 -> administrative-gender (IG: AdministrativeSex)
ADMINISTRATIVE_SEX: Final[dict[str, str]] = {
    "F": "female",
    "M": "male",
    "O": "other",
    "U": "unknown",
    "A": "other",
    "N": "other",
}

# HL7 table 0004 -> Encounter.class (IG: PatientClass[EncounterClass]): (system, code, display)
PATIENT_CLASS: Final[dict[str, tuple[str, str, str]]] = {
    "E": (V3_ACT_CODE, "EMER", "emergency"),
    "I": (V3_ACT_CODE, "IMP", "inpatient encounter"),
    "O": (V3_ACT_CODE, "AMB", "ambulatory"),
    "P": (V3_ACT_CODE, "PRENC", "pre-admission"),
    "R": (V2_0004, "R", "Recurring patient"),
    "B": (V2_0004, "B", "Obstetrics"),
    "C": (V2_0004, "C", "Commercial Account"),
    "N": (V2_0004, "N", "Not Applicable"),
    "U": (V2_0004, "U", "Unknown"),
}
UNKNOWN_CLASS: Final = (V3_NULL_FLAVOR, "UNK", "unknown")

# HL7 table 0004 -> Encounter.status when PV1-45 is not valued (IG: PatientClass[EncounterStatus])
PATIENT_CLASS_STATUS: Final[dict[str, str]] = {
    "E": "in-progress",
    "I": "in-progress",
    "O": "in-progress",
    "P": "planned",
    "R": "in-progress",
    "B": "in-progress",
    "C": "in-progress",
    "N": "in-progress",
    "U": "unknown",
}

# ADT trigger events whose meaning fixes the encounter status. The IG's Event[EncounterStatus]
# also maps A04 -> planned and A08 -> unknown; here those fall through to PV1-45 / PV1-2
# (an A04 registers a visit that is usually under way; an A08 says nothing about status).
EVENT_ENCOUNTER_STATUS: Final[dict[str, str]] = {
    "A03": "finished",
    "A05": "planned",
    "A11": "cancelled",
    "A13": "in-progress",
    "A14": "planned",
    "A27": "cancelled",  # not in the IG: cancel pending admit
    "A38": "cancelled",  # not in the IG: cancel pre-admit
}

# HL7 table 0078 -> v3-ObservationInterpretation (IG: InterpretationCodes); code -> display.
# The IG maps every active code to the same code; inactive ones (AC, HM, OBX, QCF, TOX) are absent.
INTERPRETATION: Final[dict[str, str]] = {
    "<": "Off scale low",
    ">": "Off scale high",
    "A": "Abnormal",
    "AA": "Critical abnormal",
    "B": "Better",
    "CAR": "Carrier",
    "D": "Significant change down",
    "DET": "Detected",
    "E": "Equivocal",
    "EX": "outside threshold",
    "EXP": "Expected",
    "H": "High",
    "HH": "Critical high",
    "HU": "Significantly high",
    "I": "Intermediate",
    "IE": "Insufficient evidence",
    "IND": "Indeterminate",
    "L": "Low",
    "LL": "Critical low",
    "LU": "Significantly low",
    "MS": "moderately susceptible",
    "N": "Normal",
    "NCL": "No CLSI defined breakpoint",
    "ND": "Not detected",
    "NEG": "Negative",
    "NR": "Non-reactive",
    "NS": "Non-susceptible",
    "POS": "Positive",
    "R": "Resistant",
    "RR": "Reactive",
    "S": "Susceptible",
    "SDD": "Susceptible-dose dependent",
    "SYN-R": "Synergy - resistant",
    "SYN-S": "Synergy - susceptible",
    "U": "Significant change up",
    "UNE": "Unexpected",
    "VS": "very susceptible",
    "W": "Worse",
    "WR": "Weakly reactive",
}

# HL7 table 0085 -> Observation.status (IG: ObservationResultStatusCodesInterpretation). Only
# the rows the IG maps: a code it leaves without a target (B, I, N, O, R, S, U, V) gives
# "unknown" plus the v2 code in the alternate-codes extension (see ``result_status``).
OBSERVATION_STATUS: Final[dict[str, str]] = {
    "A": "amended",
    "C": "corrected",
    "D": "entered-in-error",
    "F": "final",
    "P": "preliminary",
    "X": "cancelled",
    "W": "entered-in-error",
}
V2_0085: Final = "http://terminology.hl7.org/CodeSystem/v2-0085"

# HL7 table 0123 -> DiagnosticReport.status (IG: ResultStatus[Non-Queries]); the same rule for
# the codes the IG leaves open (A, M, N).
REPORT_STATUS: Final[dict[str, str]] = {
    "O": "registered",
    "I": "registered",
    "S": "registered",
    "P": "preliminary",
    "C": "corrected",
    "R": "partial",
    "F": "final",
    "X": "cancelled",
}
V2_0123: Final = "http://terminology.hl7.org/CodeSystem/v2-0123"
ALTERNATE_CODES: Final = "http://hl7.org/fhir/StructureDefinition/alternate-codes"


def result_status(
    code: str, table: dict[str, str], system: str, keep: frozenset[str] = frozenset()
) -> dict[str, object]:
    """``status`` (and ``_status``) for a v2 result status (OBX-11, OBR-25).

    The IG concept map's target where it has one; else ``unknown`` (FHIR: the source does not say
    which status applies), with the v2 code kept in the alternate-codes extension on the
    element, the way the IG carries OBX-11 "X" (``keep``: codes kept that way although mapped).
    """
    code = code.strip().upper()
    found: dict[str, object] = {"status": table.get(code, "unknown")}
    if code and (code not in table or code in keep):
        coding = {"system": system, "code": code}
        found["_status"] = {
            "extension": [{"url": ALTERNATE_CODES, "valueCodeableConcept": {"coding": [coding]}}]
        }
    return found


# HL7 table 0200 -> HumanName.use (IG: NameType)
NAME_USE: Final[dict[str, str]] = {
    "BAD": "old",
    "D": "usual",
    "L": "official",
    "M": "maiden",
    "MSK": "anonymous",
    "N": "nickname",
    "NAV": "temp",
    "R": "official",
    "TEMP": "temp",
}

# HL7 table 0201 -> ContactPoint.use (IG: TelecommunicationUseCode)
TELECOM_USE: Final[dict[str, str]] = {"PRN": "home", "WPN": "work", "PRS": "mobile"}

# HL7 table 0202 -> ContactPoint.system (IG: TelecommunicationEquipmentType). The IG maps CP
# (cellular phone) to the *use* "mobile"; its system is then "phone".
TELECOM_SYSTEM: Final[dict[str, str]] = {
    "PH": "phone",
    "FX": "fax",
    "MD": "other",
    "CP": "phone",
    "SAT": "other",
    "BP": "pager",
    "INTERNET": "email",
    "X.400": "email",
    "TDD": "other",
    "TTY": "other",
}
MOBILE_EQUIPMENT: Final = "CP"

# HL7 table 0190 -> Address.use / Address.type (IG: AddressType[Use], AddressType[Type])
ADDRESS_USE: Final[dict[str, str]] = {
    "BA": "old",
    "BI": "billing",
    "C": "temp",
    "B": "work",
    "H": "home",
    "O": "work",
}
ADDRESS_TYPE: Final[dict[str, str]] = {"M": "postal", "SH": "postal"}

# HL7 table 0136 (IG: YesNoIndicator)
YES_NO: Final[dict[str, bool]] = {"Y": True, "N": False}

# HL7 table 0203 (IG: IdentifierType): every code maps to itself in v2-0203.
IDENTIFIER_TYPES: Final[frozenset[str]] = frozenset(
    str.split(
        "ACSN AM AMA AN ANON ANC AND ANT APRN ASID BA BC BCT BR BRN BSNR CC CONM CZ CY DDS DEA "
        "DI DFN DL DN DO DP DPM DR DS EI EN ESN FI GI GL GN HC JHN IND LACSN LANR LI LN LR MA MB "
        "MC MCD MCN MCR MCT MD MI MR MRT MS NBSNR NCT NE NH NI NII NIIP NP NPI OD PA PC PCN PE "
        "PEN PI PN PNT PPIN PPN PRC PRN PT QA RI RPH RN RR RRI RRP SID SL SN SP SR SS TAX TN TPR "
        "U UPIN USID VN VP VS WC WCN WP XX"
    )
)
_NATIONAL_PERSON_ID = re.compile(r"NN[A-Z]{3}")  # NNxxx: national person id of country xxx


def is_identifier_type(code: str) -> bool:
    return code in IDENTIFIER_TYPES or bool(_NATIONAL_PERSON_ID.fullmatch(code))


# HL7 table 0396 coding-system names -> FHIR system URIs, for the systems this project meets.
CODING_SYSTEMS: Final[dict[str, str]] = {
    "LN": "http://loinc.org",
    "LOINC": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "SNOMED-CT": "http://snomed.info/sct",
    "SNOMED CT": "http://snomed.info/sct",
    "SNOMEDCT": "http://snomed.info/sct",
    "UCUM": UCUM,
    "I9": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9CDX": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9CM": "http://hl7.org/fhir/sid/icd-9-cm",
    "ICD9": "http://hl7.org/fhir/sid/icd-9-cm",
    "ICD-9": "http://hl7.org/fhir/sid/icd-9-cm",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "ICD-10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICD-10-CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "I10P": "http://www.cms.gov/Medicare/Coding/ICD10",
    "C4": "http://www.ama-assn.org/go/cpt",
    "CPT": "http://www.ama-assn.org/go/cpt",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "MVX": "http://terminology.hl7.org/CodeSystem/MVX",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "RXN": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "NUCC": "http://nucc.org/provider-taxonomy",
    "CDCREC": "urn:oid:2.16.840.1.113883.6.238",
    "MDC": "urn:iso:std:iso:11073:10101",
    "NCIT": "http://ncithesaurus-stage.nci.nih.gov",
    "ISO3166_1": "urn:iso:std:iso:3166",
    "ISO3166-1": "urn:iso:std:iso:3166",
}
_HL7_TABLE = re.compile(r"HL7(\d{4})")


@lru_cache(maxsize=2048)  # a feed repeats a handful of system names in every message
def coding_system(name: str) -> str | None:
    """The FHIR system URI for an HL7 coding-system name (CWE.3/6/12), None for an empty one.

    HL7 tables (``HL7nnnn``) go to terminology.hl7.org; a name this table does not know is kept
    as ``urn:id:<name>`` so that two senders' local codes never pass for each other.
    """
    if not name:
        return None
    known = CODING_SYSTEMS.get(name) or CODING_SYSTEMS.get(name.upper())
    if known:
        return known
    table = _HL7_TABLE.fullmatch(name.upper())
    if table:
        return f"http://terminology.hl7.org/CodeSystem/v2-{table.group(1)}"
    return local_system(name)


@lru_cache(maxsize=2048)  # assigning authorities repeat in every message of a feed
def local_system(name: str) -> str:
    """A URI for a name that has no registered system (a namespace, a local code system)."""
    return "urn:id:" + quote(name, safe="-._~:")
