"""Vocabulary maps for people and visit context, after the HL7 V2-to-FHIR IG concept maps:
relationship and contact role (NK1), marital status, religion and language (PID), admission
type and hospital service (PV1).

Held as code because the IG's CSVs live outside the repository; ``tests/test_mapping_people.py``
checks every entry against them. A code found in a table gains the IG's FHIR coding next to
the sender's own, so nothing the sender said is lost.
"""

from __future__ import annotations

from typing import Final

from mapping.hl7.datatypes import Json, clean_code, cwe_concept
from mapping.hl7.parse import Composite

__all__ = [
    "ADMISSION_TYPE",
    "BCP47",
    "CONTACT_ROLE",
    "HOSPITAL_SERVICE",
    "LANGUAGES",
    "MARITAL_STATUS",
    "RELATIONSHIP",
    "RELIGION",
    "language_concept",
    "translated_concept",
]

BCP47: Final = "urn:ietf:bcp:47"

# HL7 table 0063 -> RelatedPerson.relationship (IG: Relationship)
RELATIONSHIP: Final[dict[str, tuple[str, str, str]]] = {
    "SEL": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "ONESELF", "self"),
    "SPO": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "SPS", "spouse"),
    "DOM": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "SIGOTHR", "significant other"),
    "CHD": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "CHILD", "child"),
    "GCH": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "GRNDCHILD", "grandchild"),
    "NCH": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "NCHILD", "natural child"),
    "SCH": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "STPCHLD", "step child"),
    "FCH": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "CHLDFOST", "foster child"),
    "DEP": ("http://terminology.hl7.org/CodeSystem/v2-0063", "DEP", "Handicapped dependent"),
    "WRD": ("http://terminology.hl7.org/CodeSystem/v2-0063", "WRD", "Ward of court"),
    "PAR": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "PRN", "parent"),
    "MTH": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "MTH", "mother"),
    "FTH": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "FTH", "father"),
    "CGV": ("http://terminology.hl7.org/CodeSystem/v2-0063", "CGV", "Care giver"),
    "GRD": ("http://terminology.hl7.org/CodeSystem/v2-0063", "GRD", "Guardian"),
    "GRP": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "GRPRN", "grandparent"),
    "EXF": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "EXT", "extended family member"),
    "SIB": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "SIB", "sibling"),
    "BRO": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "BRO", "brother"),
    "SIS": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "SIS", "sister"),
    "FND": ("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "FRND", "unrelated friend"),
    "OAD": ("http://terminology.hl7.org/CodeSystem/v2-0063", "OAD", "Other adult"),
    "EME": ("http://terminology.hl7.org/CodeSystem/v2-0063", "EME", "Employee"),
    "EMR": ("http://terminology.hl7.org/CodeSystem/v2-0131", "E", "Employer"),
    "ASC": ("http://terminology.hl7.org/CodeSystem/v2-0063", "ASC", "Associate"),
    "EMC": ("http://terminology.hl7.org/CodeSystem/v2-0131", "C", "Emergency Contact"),
    "OWN": ("http://terminology.hl7.org/CodeSystem/v2-0063", "OWN", "Owner"),
    "TRA": ("http://terminology.hl7.org/CodeSystem/v2-0063", "TRA", "Trainer"),
    "MGR": ("http://terminology.hl7.org/CodeSystem/v2-0063", "MGR", "Manager"),
    "NON": ("http://terminology.hl7.org/CodeSystem/v2-0063", "NON", "None"),
    "UNK": ("http://terminology.hl7.org/CodeSystem/v2-0131", "U", "Unknown"),
    "OTH": ("http://terminology.hl7.org/CodeSystem/v2-0131", "O", "Other"),
}

# HL7 table 0131 -> RelatedPerson.relationship (IG: ContactRole)
CONTACT_ROLE: Final[dict[str, tuple[str, str, str]]] = {
    "E": ("http://terminology.hl7.org/CodeSystem/v2-0131", "E", "Employer"),
    "C": ("http://terminology.hl7.org/CodeSystem/v2-0131", "C", "Emergency Contact"),
    "F": ("http://terminology.hl7.org/CodeSystem/v2-0131", "F", "Federal Agency"),
    "I": ("http://terminology.hl7.org/CodeSystem/v2-0131", "I", "Insurance Company"),
    "N": ("http://terminology.hl7.org/CodeSystem/v2-0131", "N", "Next-of-Kin"),
    "S": ("http://terminology.hl7.org/CodeSystem/v2-0131", "S", "State Agency"),
    "O": ("http://terminology.hl7.org/CodeSystem/v2-0131", "O", "Other"),
    "U": ("http://terminology.hl7.org/CodeSystem/v2-0131", "U", "Unknown"),
}

# HL7 table 0002 -> Patient.maritalStatus (IG: MaritalStatus)
MARITAL_STATUS: Final[dict[str, tuple[str, str, str]]] = {
    "A": ("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "L", "Legally Separated"),
    "D": ("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "D", "Divorced"),
    "M": ("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "M", "Married"),
    "S": ("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "S", "Never Married"),
    "W": ("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "W", "Widowed"),
    "C": ("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "C", "Common Law"),
    "G": ("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "T", "Domestic partner"),
    "P": ("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "T", "Domestic partner"),
    "R": ("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "T", "Domestic partner"),
    "E": ("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "L", "Legally Separated"),
    "N": ("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "A", "Annulled"),
    "I": ("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "I", "Interlocutory"),
    "B": ("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "U", "unmarried"),
    "U": ("http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "UNK", "Unknown"),
    "O": ("http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "OTH", "Other"),
    "T": ("http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "NAVU", "Not available"),
}

# HL7 table 0006 -> patient-religion (IG: Religion); codes the IG leaves without a target are absent
RELIGION: Final[dict[str, tuple[str, str, str]]] = {
    "A": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1007", "Atheism"),
    "B": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1009", "Baptist"),
    "E": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1069", "Episcopalian"),
    "J": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1026", "Judaism"),
    "L": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1028", "Lutheran"),
    "M": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1027", "Latter Day Saints"),
    "N": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1020", "Hinduism"),
    "P": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1077", "Protestant"),
    "AGN": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1004", "Agnosticism"),
    "ATH": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1007", "Atheism"),
    "BAH": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1008", "Babi & Baha'I faiths"),
    "BRE": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1062", "Brethren"),
    "BMA": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1029", "Mahayana"),
    "BTH": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1051", "Theravada"),
    "CHR": (
        "http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation",
        "1013",
        "Christian (non-Catholic, non-specific)",
    ),
    "ANG": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1005", "Anglican"),
    "AOG": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1061", "Assembly of God"),
    "BAP": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1009", "Baptist"),
    "CRR": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1079", "Reformed"),
    "CHS": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1063", "Christian Scientist"),
    "COC": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1064", "Church of Christ"),
    "COG": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1065", "Church of God"),
    "COL": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1066", "Congregational"),
    "EOT": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1068", "Eastern Orthodox"),
    "EPI": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1069", "Episcopalian"),
    "FRQ": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1071", "Friends"),
    "FUL": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1072", "Full Gospel"),
    "JWN": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1025", "Jehovah's Witnesses"),
    "MOM": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1027", "Latter Day Saints"),
    "LUT": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1028", "Lutheran"),
    "MET": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1073", "Methodist"),
    "NAZ": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1075", "Nazarene"),
    "ORT": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1036", "Orthodox"),
    "PEN": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1038", "Pentecostal"),
    "PRE": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1076", "Presbyterian"),
    "PRO": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1077", "Protestant"),
    "PRC": (
        "http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation",
        "1078",
        "Protestant, No Denomination",
    ),
    "QUA": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1071", "Friends"),
    "REC": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1079", "Reformed"),
    "CAT": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1041", "Roman Catholic Church"),
    "SAA": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1080", "Salvation Army"),
    "SEV": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1001", "Adventist"),
    "UCC": (
        "http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation",
        "1082",
        "United Church of Christ",
    ),
    "UNI": (
        "http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation",
        "1052",
        "Unitarian-Universalism",
    ),
    "UNU": (
        "http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation",
        "1081",
        "Unitarian Universalist",
    ),
    "CNF": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1014", "Confucianism"),
    "DOC": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1067", "Disciples of Christ"),
    "HSH": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1020", "Hinduism"),
    "HVA": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1020", "Hinduism"),
    "HOT": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1020", "Hinduism"),
    "JAI": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1024", "Jainism"),
    "MOS": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1023", "Islam"),
    "MSH": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1045", "Shiite (Islam)"),
    "MSU": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1049", "Sunni (Islam)"),
    "NAM": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1074", "Native American"),
    "SHN": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1046", "Shinto"),
    "SIK": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1047", "Sikism"),
    "SPI": ("http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "1048", "Spiritualism"),
}

# HL7 table 0007 -> Encounter.type (IG: AdmissionType)
ADMISSION_TYPE: Final[dict[str, tuple[str, str, str]]] = {
    "A": ("http://terminology.hl7.org/CodeSystem/v2-0007", "A", "Accident"),
    "E": ("http://terminology.hl7.org/CodeSystem/v2-0007", "E", "Emergency"),
    "L": ("http://terminology.hl7.org/CodeSystem/v2-0007", "L", "Labor and Delivery"),
    "R": ("http://terminology.hl7.org/CodeSystem/v2-0007", "R", "Routine"),
    "N": ("http://terminology.hl7.org/CodeSystem/v2-0007", "N", "Newborn (Birth in healthcare facility)"),
    "U": ("http://terminology.hl7.org/CodeSystem/v2-0007", "U", "Urgent"),
    "C": ("http://terminology.hl7.org/CodeSystem/v2-0007", "C", "Elective"),
}

# HL7 table 0069 -> Encounter.serviceType (IG: HospitalService); the IG maps five codes
HOSPITAL_SERVICE: Final[dict[str, tuple[str, str, str]]] = {
    "MED": ("http://terminology.hl7.org/CodeSystem/service-type", "382", "Medical Services"),
    "SUR": ("http://terminology.hl7.org/CodeSystem/v2-0069", "SUR", "Surgical Service"),
    "URO": ("http://terminology.hl7.org/CodeSystem/service-type", "222", "Urology"),
    "PUL": ("http://terminology.hl7.org/CodeSystem/v2-0069", "PUL", "Pulmonary Service"),
    "CAR": ("http://terminology.hl7.org/CodeSystem/v2-0069", "CAR", "Cardiac Service"),
}

LANGUAGES: Final[dict[str, str]] = {
    "ar": "Arabic",
    "bn": "Bengali",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "de-AT": "German (Austria)",
    "de-CH": "German (Switzerland)",
    "de-DE": "German (Germany)",
    "el": "Greek",
    "en": "English",
    "en-AU": "English (Australia)",
    "en-CA": "English (Canada)",
    "en-GB": "English (Great Britain)",
    "en-IN": "English (India)",
    "en-NZ": "English (New Zeland)",
    "en-SG": "English (Singapore)",
    "en-US": "English (United States)",
    "es": "Spanish",
    "es-AR": "Spanish (Argentina)",
    "es-ES": "Spanish (Spain)",
    "es-UY": "Spanish (Uruguay)",
    "fi": "Finnish",
    "fr": "French",
    "fr-BE": "French (Belgium)",
    "fr-CH": "French (Switzerland)",
    "fr-FR": "French (France)",
    "fy": "Frysian",
    "fy-NL": "Frysian (Netherlands)",
    "hi": "Hindi",
    "hr": "Croatian",
    "it": "Italian",
    "it-CH": "Italian (Switzerland)",
    "it-IT": "Italian (Italy)",
    "ja": "Japanese",
    "ko": "Korean",
    "nl": "Dutch",
    "nl-BE": "Dutch (Belgium)",
    "nl-NL": "Dutch (Netherlands)",
    "no": "Norwegian",
    "no-NO": "Norwegian (Norway)",
    "pa": "Punjabi",
    "pl": "Polish",
    "pt": "Portuguese",
    "pt-BR": "Portuguese (Brazil)",
    "ru": "Russian",
    "ru-RU": "Russian (Russia)",
    "sr": "Serbian",
    "sr-RS": "Serbian (Serbia)",
    "sv": "Swedish",
    "sv-SE": "Swedish (Sweden)",
    "te": "Telegu",
    "zh": "Chinese",
    "zh-CN": "Chinese (China)",
    "zh-HK": "Chinese (Hong Kong)",
    "zh-SG": "Chinese (Singapore)",
    "zh-TW": "Chinese (Taiwan)",
}

_LANGUAGE_TAGS: Final[dict[str, str]] = {tag.lower(): tag for tag in LANGUAGES}


def translated_concept(cwe: Composite, table: dict[str, tuple[str, str, str]], hl7_table: str) -> Json | None:
    """CWE -> CodeableConcept (IG CWE[CodeableConcept]) plus the IG's target coding when CWE.1 is
    a code of ``hl7_table`` (``"HL70002"``): named so in CWE.3, or CWE.3 left empty."""
    concept = cwe_concept(cwe)
    if concept is None:
        return None
    system_name = cwe.get(3).strip().upper()
    if system_name and system_name != hl7_table:
        return concept  # a local or other code system's code is not the table's, even if it looks alike
    target = table.get(clean_code(cwe.get(1)).upper())
    if target is not None:
        _add_coding(concept, {"system": target[0], "code": target[1], "display": target[2]})
    return concept


def language_concept(cwe: Composite) -> Json | None:
    """PID-15 / NK1-20 -> CodeableConcept, with the IG's BCP-47 coding when CWE.1 is one of its
    language tags (whatever CWE.3 says: senders name ISO 639 in many ways, or not at all)."""
    concept = cwe_concept(cwe)
    if concept is None:
        return None
    tag = _LANGUAGE_TAGS.get(clean_code(cwe.get(1)).replace("_", "-").lower())
    if tag is not None:
        _add_coding(concept, {"system": BCP47, "code": tag, "display": LANGUAGES[tag]})
    return concept


def _add_coding(concept: Json, coding: Json) -> None:
    codings: list[Json] = concept.setdefault("coding", [])
    if not any(c.get("system") == coding["system"] and c.get("code") == coding["code"] for c in codings):
        codings.append(coding)
