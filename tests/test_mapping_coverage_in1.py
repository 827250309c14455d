"""Issue 19: IN1 -> Coverage and the payer Organization land where the IG says.

Every IG row of IN1[Coverage] is checked against the mapped message (or named below as not
mapped, with the reason); the same insurer in two messages is one Organization; the
de-identified output holds no identifying value of the insured or the guarantor.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from deid import Vault, deidentify
from mapping import MappedMessage, map_message, people_vocab
from mapping.coverage import report_lines
from mapping.hl7.datatypes import cwe_concept, cx_identifier, xad_address
from mapping.hl7.dtm import to_date
from mapping.hl7.parse import Segment, parse
from mapping.insurance import SUBSCRIBER_ID_EXTENSION
from tests.test_mapping_people import resolve, segment_rows, vocab_zone

Json = dict[str, Any]
SECRET = b"coverage-test-secret-0123456789a"


def _segment_text(name: str, values: dict[int, str]) -> str:
    fields = [""] * (max(values) + 1)
    for number, value in values.items():
        fields[number] = value
    return name + "|".join(fields)


IN1_FIELDS = {
    1: "1",
    2: "PLN-GOLD^Gold Plan^L",
    3: "INS-77^^^NAIC^NIIP",
    4: "Blue Harbor Mutual",
    5: "PO Box 9^^Hartford^CT^06101",
    7: "^WPN^PH^^1^860^5550100",
    8: "GRP-123",
    9: "Acme Group",
    10: "GE-4411^^^ACMEHR^EI",
    11: "Acme Works Employer Group",
    12: "20250101",
    13: "20251231",
    15: "PPO^Preferred^HL70086",
    16: "Quillfeather^Bartholomew",
    17: "SPO^Spouse^HL70063",
    18: "19700505",
    19: "77 Elmsworth Street^^Hartford^CT^06103",
    36: "POL-998877",
    49: "SUB-55123^^^BHM^SN",
}
GT1_FIELDS = {
    1: "1",
    3: "Guarantorsen^Philippa",
    5: "41 Larkspur Lane^^Hartford^CT^06105",
    6: "^PRN^PH^^1^860^5550144",
    7: "^WPN^PH^^1^860^5550155",
    12: "321-54-9876",
}
# Every identifying value of the insured and the guarantor above, in the forms a leak would take.
IDENTIFYING = [
    "Quillfeather", "Bartholomew", "Elmsworth Street", "06103", "19700505", "1970-05-05",
    "POL-998877", "SUB-55123", "Guarantorsen", "Philippa", "Larkspur Lane", "06105", "5550144",
    "5550155", "321-54-9876", "321549876",
]  # fmt: skip


def _message(control: str, mrn: str, in1: dict[int, str]) -> str:
    return (
        f"MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260301081500||ADT^A01^ADT_A01|{control}|P|2.5.1\r"
        f"PID|1||{mrn}^^^GENHOSP^MR||Pennington^Lucinda||19750202|F\r"
        "PV1|1|I|W4^412^B^GENHOSP\r"
        f"{_segment_text('GT1', GT1_FIELDS)}\r"
        f"{_segment_text('IN1', in1)}\r"
        "IN2|1|123-45-6789\r"
    )


MESSAGE = _message("CTRL-IN1-0001", "MRN4410022", IN1_FIELDS)


@pytest.fixture(scope="module")
def mapped() -> MappedMessage:
    return map_message(MESSAGE)  # validates every resource against the R4B models


def _only(mapped: MappedMessage, resource_type: str) -> Json:
    found = [r for r in mapped.resources if r["resourceType"] == resource_type]
    assert len(found) == 1, resource_type
    return found[0]


def _payer(mapped: MappedMessage) -> Json:
    """The payer Organization (the one of insurer type; the policyHolder is the other)."""
    found = [r for r in mapped.resources if r["resourceType"] == "Organization" and "type" in r]
    assert len(found) == 1
    return found[0]


def _by_reference(mapped: MappedMessage, reference: dict[str, str]) -> Json:
    kind, _, rid = reference["reference"].partition("/")
    return next(r for r in mapped.resources if r["resourceType"] == kind and r["id"] == rid)


def _in1() -> Segment:
    return next(s for s in parse(MESSAGE).segments if s.name == "IN1")


# IG rows this mapper leaves out on purpose: none (IN1-10/11, the policyHolder, since issue 19).
NOT_MAPPED: set[tuple[str, str]] = set()


def test_every_in1_row_of_the_ig_lands_where_the_ig_says(mapped):
    coverage = _only(mapped, "Coverage")
    payer = _payer(mapped)
    seg = _in1()
    checked = set()
    for row in segment_rows("IN1[Coverage] - Sheet1"):
        field, path = row["field"], row["path"]
        if (field, path) in NOT_MAPPED:
            continue
        if path.startswith("policyHolder"):
            holder = _by_reference(mapped, coverage["policyHolder"])
            if field == "IN1-11":
                assert holder["name"] == seg.value(11)
            else:  # IN1-10 is no subscriber number ("EI"): an identifier of the policyHolder
                assert cx_identifier(seg.first(10), vocab_zone()) in holder["identifier"]
        elif path.startswith("extension[1]"):
            # IN1-49 (and IN1-10 when its CX.5 is "SN": here IN1-10 is empty) -> subscriberId.
            extension = coverage["extension"][0]
            assert extension["url"] == SUBSCRIBER_ID_EXTENSION
            number = int(field.split("-")[1])
            if seg.raw(number) and (number == 49 or seg.value(number, 5) == "SN"):
                assert extension["valueIdentifier"] == cx_identifier(seg.first(number), vocab_zone())
        elif field == "IN1-2":
            assert coverage["identifier"][0]["value"] == seg.value(2)
        elif field == "IN1-4":
            assert resolve(coverage, "payor.reference") == f"Organization/{payer['id']}"
            assert payer["name"] == seg.value(4)
        elif field == "IN1-5":
            assert payer["address"][0] == xad_address(seg.first(5), vocab_zone())
        elif field == "IN1-16":
            # IN1-17 is "spouse" here: the subscriber is a RelatedPerson of the patient.
            subscriber = _by_reference(mapped, coverage["subscriber"])
            assert subscriber["resourceType"] == "RelatedPerson"
            assert subscriber["name"][0]["family"] == "Quillfeather"
        elif row["map"] == "CWE[CodeableConcept]":
            wanted = cwe_concept(seg.first(int(field.split("-")[1])))
            assert wanted is not None
            actual = resolve(coverage, path)
            assert all(c in actual["coding"] for c in wanted["coding"]), (field, actual)
        else:
            assert row["v2type"] == "DT", row
            assert resolve(coverage, path) == to_date(seg.value(int(field.split("-")[1]))), field
        checked.add(field)
    assert checked == {
        "IN1-2",
        "IN1-4",
        "IN1-5",
        "IN1-10",
        "IN1-11",
        "IN1-12",
        "IN1-13",
        "IN1-15",
        "IN1-16",
        "IN1-17",
        "IN1-49",
    }
    assert coverage["status"] == "active"
    assert coverage["beneficiary"] == {"reference": f"Patient/{_only(mapped, 'Patient')['id']}"}


def test_relationship_carries_the_igs_concept_map_target(mapped):
    codings = _only(mapped, "Coverage")["relationship"]["coding"]
    system, code, _ = people_vocab.RELATIONSHIP["SPO"]
    assert {"system": system, "code": code} in [{"system": c["system"], "code": c["code"]} for c in codings]


def test_self_insured_names_the_patient_as_subscriber():
    mapped = map_message(MESSAGE.replace("SPO^Spouse^HL70063", "SEL^Self^HL70063"))
    coverage = _only(mapped, "Coverage")
    assert coverage["subscriber"] == coverage["beneficiary"]
    assert not any("IN1-16" in line for line in report_lines(mapped))


def test_unmapped_fields_and_in2_are_reported(mapped):
    lines = "\n".join(report_lines(mapped))
    for field in ("IN1-8", "IN1-9", "IN1-36"):
        assert re.search(rf"\b{field}\b", lines), field
    assert "IN2 (segment 5): not mapped" in lines
    assert "GT1 (segment 3): not mapped" in lines


def test_an_in1_without_insurer_is_reported_not_mapped():
    fields = {k: v for k, v in IN1_FIELDS.items() if k not in (3, 4)}
    mapped = map_message(_message("CTRL-IN1-0002", "MRN4410022", fields))
    assert not [r for r in mapped.resources if r["resourceType"] in ("Coverage", "Organization")]
    assert any(line.startswith("IN1 (segment 4): not mapped") for line in report_lines(mapped))


def test_one_insurer_across_two_messages_is_one_organization():
    first = _payer(map_message(MESSAGE))
    second_message = _message("CTRL-IN1-0003", "MRN7700001", {**IN1_FIELDS, 16: "Other^Person", 36: "POL-1"})
    second = _payer(map_message(second_message))
    assert first["id"] == second["id"]
    # Without IN1-3 the name keys it, whatever its spacing and case; it is not the IN1-3-keyed one.
    no_id = {k: v for k, v in IN1_FIELDS.items() if k != 3}
    by_name = _payer(map_message(_message("C1", "MRN1", no_id)))
    respaced = _payer(map_message(_message("C2", "MRN2", {**no_id, 4: "BLUE  harbor mutual"})))
    assert by_name["id"] == respaced["id"] != first["id"]


def test_two_in1_of_one_insurer_in_one_message_share_the_organization():
    second = _segment_text("IN1", {**IN1_FIELDS, 1: "2", 2: "PLN-SILVER"})
    mapped = map_message(MESSAGE + second + "\r")
    coverages = [r for r in mapped.resources if r["resourceType"] == "Coverage"]
    assert len(coverages) == 2
    assert coverages[0]["payor"] == coverages[1]["payor"]
    assert len([r for r in mapped.resources if r["resourceType"] == "Organization" and "type" in r]) == 1


def test_dft_maps_in1_through_the_generic_map():
    dft = MESSAGE.replace("ADT^A01^ADT_A01", "DFT^P03^DFT_P03")
    mapped = map_message(dft)
    assert _only(mapped, "Coverage")["payor"][0]["reference"].startswith("Organization/")


def test_insured_and_guarantor_values_are_identifying_values(mapped):
    for value in ("Quillfeather", "POL-998877", "19700505", "Guarantorsen", "321-54-9876", "5550155"):
        assert value in mapped.phi_values, value


@pytest.fixture(scope="module")
def deidentified(mapped) -> list[Json]:
    keys = {pid: (k.authority, k.value) for pid, k in mapped.patient_keys.items()}
    result = deidentify(mapped.resources, keys, mapped.phi_values, Vault(SECRET), validate=True)
    return [r.resource for r in result.resources]


def test_deidentified_output_holds_no_insured_or_guarantor_value(deidentified):
    text = json.dumps(deidentified, ensure_ascii=False).lower()
    for value in IDENTIFYING:
        assert value.lower() not in text, value


def test_deidentified_coverage_keeps_what_the_policy_allows(deidentified):
    coverage = next(r for r in deidentified if r["resourceType"] == "Coverage")
    payer = next(r for r in deidentified if r["resourceType"] == "Organization")
    patient = next(r for r in deidentified if r["resourceType"] == "Patient")
    assert set(coverage) == {
        "resourceType", "id", "meta", "status", "type", "beneficiary", "relationship", "period", "payor",
        "subscriber", "policyHolder",
    }  # fmt: skip
    assert coverage["beneficiary"] == {"reference": f"Patient/{patient['id']}"}
    subscriber = next(r for r in deidentified if r["resourceType"] == "RelatedPerson")
    assert coverage["subscriber"] == {"reference": f"RelatedPerson/{subscriber['id']}"}
    assert set(subscriber) <= {"resourceType", "id", "meta", "patient", "relationship"}
    assert coverage["payor"] == [{"reference": f"Organization/{payer['id']}"}]
    assert coverage["period"]["start"] != "2025-01-01"  # shifted like the patient's other dates
    assert payer["name"] == "Blue Harbor Mutual"
    assert "address" not in payer and "identifier" not in payer and "telecom" not in payer
