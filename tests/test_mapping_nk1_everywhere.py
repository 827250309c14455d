"""Issue 19: NK1 -> RelatedPerson beyond ADT, and the relative's values in the free-text scrub.

The IG places NK1 after the PID of ORU_R01, OML_O21 and VXU_V04 (``messages/``); each NK1 there
becomes a RelatedPerson of the PID before it, and an NK1 before any PID is reported. Every
identifying field of an NK1 (names, mother's maiden name, addresses, phones, birth date, employee
number, identifiers) is a known value, so a note that repeats one is scrubbed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from deid import Vault, deidentify
from mapping import MappedMessage, map_message
from mapping.hl7.parse import parse
from mapping.phi import collect
from tests.test_mapping_people import nk1_segment

Json = dict[str, Any]
SECRET = b"nk1-everywhere-secret-0123456789"

MSH = "MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260301081500||{type}|{control}|P|2.5.1"
PID_A = "PID|1||MRN-5501^^^GENHOSP^MR||Ashdown^Philippa||19680411|F"
PID_B = "PID|2||MRN-5502^^^GENHOSP^MR||Brackwater^Osric||19900921|M"


RELATIVE = {
    1: "1",
    2: "Quillfeather^Ysolde",
    3: "SPO^Spouse^HL70063",
    4: "47 Tamarisk Lane^^Oakvale^OR^97321",
    5: "^PRN^PH^^1^503^8673302",
    12: "EMPNO-73920^^^ACMEWORKS^EI",
    16: "19700817",
    26: "Vantongeren^Hildreth",
    33: "KIN-448120^^^GENHOSP^PI",
    40: "^PRN^PH^^1^541^2290417",
    41: "^ORN^CP^^1^971^6648821",
}
NK1 = nk1_segment(RELATIVE)
# A note a clinician might write, quoting the relative's name and phones as they are in NK1-2,
# NK1-5, NK1-40 and NK1-41, the maiden name of NK1-26 and the employee number of NK1-12.
NOTE = (
    "Discussed with wife Ysolde Quillfeather (maiden name Vantongeren), reachable at 541 2290417 "
    "or 971-6648821 or 5038673302; employer ref EMPNO-73920"
)
NOTE_VALUES = ["Quillfeather", "Ysolde", "Vantongeren", "2290417", "6648821", "8673302", "EMPNO-73920"]

OBR = "OBR|1|PL-881^LAB|FL-881^LAB|2951-2^Sodium^LN|||20260301080000"
OBX_NOTE = f"OBX|1|TX|8251-1^Service comment^LN||{NOTE}||||||F"
ORC = "ORC|NW|PL-881^LAB|FL-881^LAB|||||||||"
RXA = "RXA|0|1|20260301|20260301|08^HepB^CVX|0.5|mL^mL^UCUM||00^New^NIP001"


def message(kind: str, *segments: str, control: str = "NK1-1") -> str:
    return "\r".join([MSH.format(type=kind, control=control), *segments]) + "\r"


def related(mapped: MappedMessage) -> list[Json]:
    return [r for r in mapped.resources if r["resourceType"] == "RelatedPerson"]


def patient_id(mapped: MappedMessage, mrn: str) -> str:
    return str(
        next(
            r["id"]
            for r in mapped.resources
            if r["resourceType"] == "Patient" and any(i.get("value") == mrn for i in r.get("identifier", []))
        )
    )


MESSAGES = {
    "ORU^R01": message("ORU^R01^ORU_R01", PID_A, NK1, OBR, OBX_NOTE),
    "OML^O21": message("OML^O21^OML_O21", PID_A, NK1, ORC, OBR),
    "VXU^V04": message("VXU^V04^VXU_V04", PID_A, NK1, ORC, RXA),
}


@pytest.mark.parametrize("kind", sorted(MESSAGES))
def test_nk1_after_pid_is_a_related_person_of_that_patient(kind):
    mapped = map_message(MESSAGES[kind])
    (person,) = related(mapped)
    assert person["patient"] == {"reference": f"Patient/{patient_id(mapped, 'MRN-5501')}"}
    assert person["name"][0]["family"] == "Quillfeather"
    assert person["relationship"][0]["coding"][0]["code"] == "SPO"
    assert person["birthDate"] == "1970-08-17"
    assert "NK1" not in mapped.unmapped_segments


@pytest.mark.parametrize(
    "kind",
    ["ORU^R01^ORU_R01", "OML^O21^OML_O21", "VXU^V04^VXU_V04"],
)
def test_nk1_before_any_pid_is_reported_not_mapped(kind):
    mapped = map_message(message(kind, NK1, PID_A, ORC, OBR, RXA if kind.startswith("VXU") else OBX_NOTE))
    assert related(mapped) == []
    assert "NK1" in mapped.unmapped_segments


@pytest.mark.parametrize(
    ("kind", "tail"),
    [
        ("ORU^R01^ORU_R01", (OBR, OBX_NOTE)),
        ("OML^O21^OML_O21", (ORC, OBR)),
        ("VXU^V04^VXU_V04", (ORC, RXA)),
    ],
)
def test_each_nk1_belongs_to_the_pid_before_it(kind, tail):
    second = nk1_segment({1: "1", 2: "Brackwater^Ida", 3: "MTH^Mother^HL70063"})
    mapped = map_message(message(kind, PID_A, NK1, *tail, PID_B, second, *tail))
    by_name = {r["name"][0]["family"]: r["patient"]["reference"] for r in related(mapped)}
    assert by_name == {
        "Quillfeather": f"Patient/{patient_id(mapped, 'MRN-5501')}",
        "Brackwater": f"Patient/{patient_id(mapped, 'MRN-5502')}",
    }


def test_an_organisation_nk1_is_a_patient_contact_not_a_related_person():
    employer = "NK1|2|Acme Works|EMR^Employer^HL70063"
    mapped = map_message(message("ORU^R01^ORU_R01", PID_A, employer, OBR, OBX_NOTE))
    assert related(mapped) == []
    assert "NK1" not in mapped.unmapped_segments
    patient = next(r for r in mapped.resources if r["resourceType"] == "Patient")
    assert patient["contact"][0]["name"]["family"] == "Acme Works"
    # An organisation's NK1 with no name, telecom, address or organisation maps to nothing.
    bare = map_message(message("ORU^R01^ORU_R01", PID_A, "NK1|2||EMR^Employer^HL70063", OBR, OBX_NOTE))
    assert "NK1" in bare.unmapped_segments


def test_an_nte_after_nk1_is_not_a_note_of_the_observation_before_it():
    mapped = map_message(message("ORU^R01^ORU_R01", PID_A, OBR, OBX_NOTE, NK1, "NTE|1||after the NK1"))
    observation = next(r for r in mapped.resources if r["resourceType"] == "Observation")
    assert "note" not in observation
    assert "NTE" in mapped.unmapped_segments


def test_every_identifying_field_of_nk1_is_a_known_value():
    known = collect(parse(message("ORU^R01^ORU_R01", PID_A, NK1)))
    for value in (
        "Quillfeather",
        "Ysolde",
        "Vantongeren",
        "Hildreth",
        "47 Tamarisk Lane",
        "Oakvale",
        "97321",
    ):
        assert value in known, value
    for value in ("8673302", "2290417", "6648821", "5412290417", "9716648821"):
        assert known.get(value) == "PHONE", value
    assert known.get("EMPNO-73920") == "ID"  # NK1-12
    assert known.get("KIN-448120") == "ID"  # NK1-33
    assert known.get("19700817") == "DATE"  # NK1-16


def _deidentified(mapped: MappedMessage) -> str:
    keys = {pid: (k.authority, k.value) for pid, k in mapped.patient_keys.items()}
    result = deidentify(mapped.resources, keys, mapped.phi_values, Vault(SECRET), validate=True)
    return json.dumps([r.resource for r in result.resources], ensure_ascii=False)


@pytest.mark.parametrize(
    "kind",
    ["ORU^R01^ORU_R01", "ADT^A01^ADT_A01"],
)
def test_relatives_name_and_phone_in_an_obx_note_are_scrubbed(kind):
    mapped = map_message(message(kind, PID_A, NK1, OBR, OBX_NOTE))
    note = json.dumps(mapped.resources)
    assert all(value in note for value in NOTE_VALUES)  # the mapping itself keeps the note
    text = _deidentified(mapped)
    for value in NOTE_VALUES:
        assert value.lower() not in text.lower(), value
    assert "Service comment" in text or "8251-1" in text  # the observation itself survives


def test_relatives_values_are_scrubbed_where_no_rule_maps_the_nk1():
    # An organisation NK1 maps to a Patient.contact, which de-identification drops; whoever it
    # names is still scrubbed from the note.
    employer = nk1_segment({1: "1", 2: "Quillfeather^Ysolde", 3: "EMR^Employer^HL70063", 40: RELATIVE[40]})
    mapped = map_message(message("ORU^R01^ORU_R01", PID_A, employer, OBR, OBX_NOTE))
    text = _deidentified(mapped)
    for value in ("Quillfeather", "Ysolde", "2290417"):
        assert value.lower() not in text.lower(), value
