"""Issue 19: the IG's segment maps for people and visit context land where the IG says.

NK1 -> RelatedPerson, PID-15/16/17 -> Patient.communication / maritalStatus / religion
extension, PV1-4/10 -> Encounter.type / serviceType. Every check reads the IG's own CSV rows
(``../shared/spec/v2-to-fhir``) and finds the value the row names at the row's FHIR path;
the de-identified output is then searched for every identifying value of the NK1.
"""

from __future__ import annotations

import csv
import json
import re
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from core.fhir import validate_resource
from deid import Vault, deidentify
from deid.policy import PSEUDONYM_SYSTEM
from mapping import MappedMessage, map_message, people_vocab, visit_vocab, vocab
from mapping.hl7.datatypes import cwe_concept, cx_identifier, xad_address, xpn_name, xtn_contact
from mapping.hl7.dtm import to_date
from mapping.hl7.parse import Segment, parse
from mapping.patient import RELIGION_EXTENSION
from mapping.related import NOT_A_PERSON
from tests.corpus import shared_file

Json = dict[str, Any]
SECRET = b"people-test-secret-0123456789abc"
ZONE_NAME = "UTC"


def nk1_segment(values: dict[int, str]) -> str:
    """An NK1 segment with these fields set (the others empty)."""
    fields = [""] * (max(values) + 1)
    for number, value in values.items():
        fields[number] = value
    return "NK1" + "|".join(fields)


NK1_FIELDS = {
    1: "1",
    2: "Ravensworth^Eunice^May",
    3: "SPO^Spouse^HL70063",
    4: "12 Birch Road^^Fairview^OR^97024^USA^H",
    5: "^PRN^PH^^1^503^5550199",
    6: "^WPN^PH^^1^503^5550123",
    7: "C^Emergency Contact^HL70131",
    8: "20200101",
    9: "20301231",
    12: "EMP-4471^^^ACMEWORKS^EI",
    15: "F",
    16: "19780315",
    20: "fr^French^ISO639",
    30: "Whitcombe^Torvald",
    31: "^PRN^CP^^1^541^5550177",
    32: "9 Harbor Street^^Salem^MA^01970^USA",
    33: "KIN-99812^^^GENHOSP^PI",
    37: "512-44-9012",
    40: "^NET^Internet^eunice.ravensworth@example.org",
    41: "^ORN^PH^^1^971^5550133",
}
# Every identifying value of the NK1 above, in the forms a leak would take.
NK1_IDENTIFIERS = [
    "Ravensworth", "Eunice", "Whitcombe", "Torvald", "Birch Road", "Fairview", "97024",
    "Harbor Street", "01970", "5550199", "5550123", "5550177", "5550133", "EMP-4471", "KIN-99812",
    "512-44-9012", "512449012", "eunice.ravensworth", "19780315", "1978-03-15",
]  # fmt: skip

MESSAGE = (
    "MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260301081500||ADT^A01^ADT_A01|CTRL-PPL-0001|P|2.5.1\r"
    "EVN|A01|20260301081500\r"
    "PID|1||MRN4410022^^^GENHOSP^MR||Pennington^Lucinda||19750202|F|||3 Maple Avenue^^Madison^WI^53703||"
    "^PRN^PH^^1^608^5550110||en^English^ISO639|M^Married^HL70002|JWN^Jehovah's Witness^HL70006\r"
    f"{nk1_segment(NK1_FIELDS)}\r"
    "NK1|2|Pennington^Thaddeus|CHD^Child^HL70063\r"
    "NK1|3|Acme Works|EMR^Employer^HL70063\r"
    "PV1|1|I|W4^412^B^GENHOSP|E^Emergency^HL70007|||9921^Okonkwo^Chidi|||MED^Medical Service^HL70069"
    "|||||||||VN55019^^^GENHOSP^VN\r"
)


# -- the IG's rows -------------------------------------------------------------------------


def segment_rows(name: str) -> list[dict[str, str]]:
    """The mapped rows of one IG segment map: field, FHIR path, datatype map, vocabulary,
    assignment, condition narrative."""
    path = shared_file("spec", "v2-to-fhir", "segments", f"HL7 Segment - FHIR R4_ {name}.csv")
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[2:]
    return [
        {
            "field": r[1].strip(),
            "v2type": r[3].strip(),
            "path": r[9].strip(),
            "map": r[14].strip(),
            "vocabulary": r[15].strip(),
            "assign": r[16].strip().strip('"'),
            "condition": r[8].strip(),
        }
        for r in rows
        if len(r) > 16 and r[9].strip()
    ]


def resolve(resource: Json, path: str) -> Any:
    """The value at an IG path (``identifier[3].type.coding.code``); IG indexes are 1-based and
    a list met without an index gives its first item."""
    value: Any = resource
    for step in path.split("."):
        match = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", step)
        assert match, path
        value = value.get(match[1]) if isinstance(value, dict) else None
        if isinstance(value, list):
            index = int(match[2]) - 1 if match[2] else 0
            value = value[index] if index < len(value) else None
        if value is None:
            return None
    return value


def expected(row: dict[str, str], seg: Segment) -> Any:
    """What the row says the FHIR path holds, from the v2 field by the row's datatype map."""
    if row["assign"]:
        return row["assign"]
    number = int(row["field"].split("-")[1])
    field = seg.first(number)
    kind = row["map"]
    if kind == "XPN[HumanName]":
        return xpn_name(field, vocab_zone())
    if kind == "XAD[Address]":
        return xad_address(field, vocab_zone())
    if kind == "XTN[ContactPoint]":
        contact = xtn_contact(field, None)
        assert contact is not None
        return {"value": contact["value"]}  # the use is the row's telecom[n].use, checked apart
    if kind == "CX[Identifier]":
        return cx_identifier(field, vocab_zone())
    if kind == "CWE[Code]":
        assert row["vocabulary"] == "AdministrativeSex"
        return vocab.ADMINISTRATIVE_SEX[field.get(1)]
    if kind == "CWE[CodeableConcept]":
        return cwe_concept(field)
    if row["v2type"] in ("DT", "DTM"):
        return to_date(seg.value(number))
    assert row["v2type"] == "ST", row  # the SSN: its value is the text itself
    return seg.value(number)


def vocab_zone() -> ZoneInfo:
    return ZoneInfo(ZONE_NAME)


def holds(actual: Any, wanted: Any, row: dict[str, str]) -> bool:
    if row["map"] == "XTN[ContactPoint]":
        return isinstance(actual, dict) and actual.get("value") == wanted["value"]
    if row["map"] == "CWE[CodeableConcept]":
        # The sender's codings all there (a vocabulary map may add the IG's target coding).
        return isinstance(actual, dict) and all(c in actual.get("coding", []) for c in wanted["coding"])
    return bool(actual == wanted)


# -- the mapped message --------------------------------------------------------------------


@pytest.fixture(scope="module")
def mapped() -> MappedMessage:
    return map_message(MESSAGE)  # validates every resource against the R4B models


def _one(mapped: MappedMessage, resource_type: str) -> Json:
    found = [r for r in mapped.resources if r["resourceType"] == resource_type]
    assert len(found) == 1, resource_type
    return found[0]


def _related(mapped: MappedMessage) -> list[Json]:
    return [r for r in mapped.resources if r["resourceType"] == "RelatedPerson"]


def _segment(name: str, index: int = 0) -> Segment:
    return [s for s in parse(MESSAGE).segments if s.name == name][index]


def test_every_nk1_row_of_the_ig_lands_where_the_ig_says(mapped):
    seg = _segment("NK1")
    related = _related(mapped)[0]
    rows = segment_rows("NK1[RelatedPerson] - Sheet1")
    checked = set()
    for row in rows:
        if row["condition"].startswith("If outside the US"):
            continue  # the SSN's "SB" type: the US rows (SS) apply
        wanted = expected(row, seg)
        assert wanted is not None, row
        actual = resolve(related, row["path"])
        assert holds(actual, wanted, row), (row["field"], row["path"], actual, wanted)
        checked.add(row["field"])
    # Every field the IG maps to RelatedPerson is among them: none left out.
    assert checked == {
        f"NK1-{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 20, 30, 31, 32, 33, 37, 40, 41)
    }


def test_the_related_person_belongs_to_the_patient(mapped):
    patient = _one(mapped, "Patient")
    for related in _related(mapped):
        assert related["patient"] == {"reference": f"Patient/{patient['id']}"}


def test_relationship_and_contact_role_gain_the_ig_codings(mapped):
    relationship = _related(mapped)[0]["relationship"]
    codings = [c for concept in relationship for c in concept["coding"]]
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
        "code": "SPS",
        "display": "spouse",
    } in codings
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0131",
        "code": "C",
        "display": "Emergency Contact",
    } in codings
    assert {"system": people_vocab.BCP47, "code": "fr", "display": "French"} in (
        _related(mapped)[0]["communication"][0]["language"]["coding"]
    )


def test_an_organisation_in_nk1_is_no_related_person_but_a_patient_contact(mapped):
    assert "EMR" in NOT_A_PERSON
    assert len(_related(mapped)) == 2  # NK1|3 names an employer
    nk1_positions = [i for i, s in enumerate(parse(MESSAGE).segments) if s.name == "NK1"]
    assert not set(nk1_positions) & {item.index for item in mapped.report}
    [contact] = _one(mapped, "Patient")["contact"]
    assert contact["name"]["family"] == "Acme Works"
    assert any(c["code"] == "EMR" for c in contact["relationship"][0]["coding"])


def test_related_person_ids_are_deterministic_per_patient_and_set_id(mapped):
    again = map_message(MESSAGE.replace("CTRL-PPL-0001", "CTRL-PPL-0002"))
    assert [r["id"] for r in _related(again)] == [r["id"] for r in _related(mapped)]
    assert len({r["id"] for r in _related(mapped)}) == 2
    other = map_message(MESSAGE.replace("MRN4410022", "MRN4410023"))
    assert not {r["id"] for r in _related(other)} & {r["id"] for r in _related(mapped)}
    # Two NK1s with one set ID still give two resources.
    twice = map_message(MESSAGE.replace("NK1|2|", "NK1|1|"))
    assert len({r["id"] for r in _related(twice)}) == 2


@pytest.mark.parametrize("field", ["PID-15", "PID-16"])
def test_pid_language_and_marital_status_land_where_the_ig_says(mapped, field):
    patient = _one(mapped, "Patient")
    rows = [r for r in segment_rows("PID[Patient] - PID") if r["field"] == field]
    assert rows
    for row in rows:
        assert holds(resolve(patient, row["path"]), expected(row, _segment("PID")), row), row


def test_pid_religion_is_the_ig_extension(mapped):
    patient = _one(mapped, "Patient")
    rows = [r for r in segment_rows("PID[Patient] - PID") if r["field"] == "PID-17"]
    url = next(r["assign"] for r in rows if r["path"].endswith(".url"))
    assert url == RELIGION_EXTENSION
    value_row = next(r for r in rows if r["path"].endswith(".valueCodeableConcept"))
    extensions = [e for e in patient["extension"] if e["url"] == url]
    assert len(extensions) == 1
    assert holds(extensions[0]["valueCodeableConcept"], expected(value_row, _segment("PID")), value_row)
    codings = extensions[0]["valueCodeableConcept"]["coding"]
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation", "code": "1025",
            "display": "Jehovah's Witnesses"} in codings  # fmt: skip


def test_pid_vocabularies_gain_the_ig_codings(mapped):
    patient = _one(mapped, "Patient")
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
        "code": "M",
        "display": "Married",
    } in (patient["maritalStatus"]["coding"])
    assert {"system": people_vocab.BCP47, "code": "en", "display": "English"} in (
        patient["communication"][0]["language"]["coding"]
    )


@pytest.mark.parametrize("field", ["PV1-4", "PV1-10"])
def test_pv1_admission_type_and_hospital_service_land_where_the_ig_says(mapped, field):
    encounter = _one(mapped, "Encounter")
    rows = [r for r in segment_rows("PV1[Encounter] - PV1") if r["field"] == field]
    assert rows
    for row in rows:
        assert holds(resolve(encounter, row["path"]), expected(row, _segment("PV1")), row), row


def test_pv1_vocabularies_gain_the_ig_codings(mapped):
    encounter = _one(mapped, "Encounter")
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0007",
        "code": "E",
        "display": "Emergency",
    } in (encounter["type"][0]["coding"])
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/service-type",
        "code": "382",
        "display": "Medical Services",
    } in (encounter["serviceType"]["coding"])


def test_a_code_of_another_system_gets_no_table_coding():
    text = MESSAGE.replace("M^Married^HL70002", "M^Mittel^LOCAL").replace(
        "E^Emergency^HL70007", "E^Elective^L"
    )
    result = map_message(text)
    patient, encounter = _one(result, "Patient"), _one(result, "Encounter")
    assert patient["maritalStatus"] == {
        "coding": [{"system": "urn:id:LOCAL", "code": "M", "display": "Mittel"}]
    }
    assert encounter["type"] == [{"coding": [{"system": "urn:id:L", "code": "E", "display": "Elective"}]}]


def test_explicit_nulls_delete_marital_status_and_service_type():
    text = MESSAGE.replace("M^Married^HL70002", '""').replace("MED^Medical Service^HL70069", '""')
    result = map_message(text)
    cleared = {key.split("/")[0]: elements for key, elements in result.cleared.items()}
    assert "maritalStatus" in cleared["Patient"]
    assert "serviceType" in cleared["Encounter"]


# -- the IG's concept maps -----------------------------------------------------------------


def concept_map(name: str) -> dict[str, tuple[str, str, str]]:
    path = shared_file("spec", "v2-to-fhir", "codesystems", f"HL7 Concept Map_ {name} - Sheet1.csv")
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[2:]
    return {
        r[0].strip(): (r[9].strip(), r[6].strip(), r[8].strip())
        for r in rows
        if r[0].strip() and r[6].strip()
    }


@pytest.mark.parametrize(
    ("name", "table"),
    [
        ("Relationship", people_vocab.RELATIONSHIP),
        ("ContactRole", people_vocab.CONTACT_ROLE),
        ("MaritalStatus", people_vocab.MARITAL_STATUS),
        ("Religion", people_vocab.RELIGION),
        ("AdmissionType", people_vocab.ADMISSION_TYPE),
        ("HospitalService", people_vocab.HOSPITAL_SERVICE),
        ("ReadmissionIndicator", visit_vocab.READMISSION),
        ("AmbulatoryStatus", visit_vocab.AMBULATORY_STATUS),
        ("BedStatus", visit_vocab.BED_STATUS),
        ("EncounterPriority", visit_vocab.ENCOUNTER_PRIORITY),
        ("ModeOfArrivalCode", visit_vocab.MODE_OF_ARRIVAL),
        ("ProviderRole", visit_vocab.PROVIDER_ROLE),
        ("YesNoIndicator", visit_vocab.YES_NO),
        ("LivingWillCode", visit_vocab.LIVING_WILL),
    ],
)
def test_vocabulary_tables_are_the_ig_concept_maps(name, table):
    assert table == concept_map(name)


def test_language_tags_are_the_ig_primary_language_map():
    path = shared_file("spec", "v2-to-fhir", "codesystems", "HL7 Concept Map_ PrimaryLanguage - Sheet1.csv")
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[2:]
    assert {r[6].strip(): r[8].strip() for r in rows if r[6].strip()} == people_vocab.LANGUAGES


# -- de-identification ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def deidentified(mapped) -> list[Json]:
    keys = {pid: (k.authority, k.value) for pid, k in mapped.patient_keys.items()}
    result = deidentify(mapped.resources, keys, mapped.phi_values, Vault(SECRET), validate=True)
    return [r.resource for r in result.resources]


def test_deidentified_output_holds_no_identifying_value_of_nk1(deidentified):
    text = json.dumps(deidentified, ensure_ascii=False)
    digits = re.sub(r"\D", "", text)
    for value in NK1_IDENTIFIERS:
        assert value.lower() not in text.lower(), value
        if sum(c.isdigit() for c in value) >= 6:
            assert re.sub(r"\D", "", value) not in digits, value


def test_deidentified_related_person_keeps_what_they_are_not_who(deidentified):
    related = [r for r in deidentified if r["resourceType"] == "RelatedPerson"]
    patient = next(r for r in deidentified if r["resourceType"] == "Patient")
    assert len(related) == 2
    first = related[0]
    assert set(first) <= {"resourceType", "id", "meta", "patient", "relationship", "gender", "communication"}
    assert first["patient"] == {"reference": f"Patient/{patient['id']}"}
    assert patient["identifier"][0]["system"] == PSEUDONYM_SYSTEM
    assert any(c["code"] == "SPS" for concept in first["relationship"] for c in concept["coding"])
    assert first["gender"] == "female"
    assert first["communication"][0]["language"]["coding"][-1]["code"] == "fr"
    for resource in deidentified:
        validate_resource(resource)


def test_deidentified_patient_and_encounter_keep_context_but_not_religion(deidentified):
    patient = next(r for r in deidentified if r["resourceType"] == "Patient")
    encounter = next(r for r in deidentified if r["resourceType"] == "Encounter")
    assert any(c["code"] == "M" for c in patient["maritalStatus"]["coding"])
    assert any(c["code"] == "en" for c in patient["communication"][0]["language"]["coding"])
    assert "extension" not in patient
    text = json.dumps(deidentified)
    assert "Jehovah" not in text and "JWN" not in text and RELIGION_EXTENSION not in text
    assert encounter["type"][0]["coding"][0]["code"] == "E"
    assert any(c["code"] == "MED" for c in encounter["serviceType"]["coding"])
