"""The vocabulary maps in mapping.vocab agree with the V2-to-FHIR IG concept maps (CSV)."""

from __future__ import annotations

import csv

import pytest

from mapping import vocab
from mapping.encounter import encounter_status
from mapping.hl7.parse import parse
from tests.corpus import shared_file


def concept_map(name: str) -> list[tuple[str, str, str]]:
    """(v2 code, FHIR code, FHIR system) rows of one IG concept map; unmapped rows have ""."""
    path = shared_file("spec", "v2-to-fhir", "codesystems", f"HL7 Concept Map_ {name} - Sheet1.csv")
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[2:]  # two header lines
    return [(r[0].strip(), r[6].strip(), r[9].strip()) for r in rows if r and r[0].strip()]


def mapped(name: str) -> dict[str, str]:
    return {v2: fhir for v2, fhir, _ in concept_map(name) if fhir}


def test_administrative_sex():
    assert mapped("AdministrativeSex") == vocab.ADMINISTRATIVE_SEX


def test_patient_class_to_encounter_class():
    ig = {v2: (system, fhir) for v2, fhir, system in concept_map("PatientClass[EncounterClass]")}
    ours = {code: (system, fhir) for code, (system, fhir, _display) in vocab.PATIENT_CLASS.items()}
    assert ours == ig


def test_patient_class_to_encounter_status():
    assert mapped("PatientClass[EncounterStatus]") == vocab.PATIENT_CLASS_STATUS


def test_interpretation_codes():
    ig = mapped("InterpretationCodes")
    assert {code: code for code in vocab.INTERPRETATION} == ig
    systems = {system for _, fhir, system in concept_map("InterpretationCodes") if fhir}
    assert systems == {vocab.V3_INTERPRETATION}


@pytest.mark.parametrize(
    ("table", "ours"),
    [
        ("ObservationResultStatusCodesInterpretation", vocab.OBSERVATION_STATUS),
        ("ResultStatus[Non-Queries]", vocab.REPORT_STATUS),
    ],
)
def test_result_status_is_the_ig_map(table, ours):
    # Exactly the IG's rows: a code the IG leaves open gives "unknown" with the v2 code kept in
    # the alternate-codes extension (vocab.result_status), never a status of our own choosing.
    assert ours == mapped(table)


def test_result_status_outside_the_map():
    found = vocab.result_status("s", vocab.OBSERVATION_STATUS, vocab.V2_0085)
    assert found["status"] == "unknown"
    assert found["_status"] == {
        "extension": [
            {
                "url": vocab.ALTERNATE_CODES,
                "valueCodeableConcept": {"coding": [{"system": vocab.V2_0085, "code": "S"}]},
            }
        ]
    }
    assert vocab.result_status("F", vocab.OBSERVATION_STATUS, vocab.V2_0085) == {"status": "final"}
    assert vocab.result_status("", vocab.REPORT_STATUS, vocab.V2_0123) == {"status": "unknown"}


def test_name_use():
    assert mapped("NameType") == vocab.NAME_USE


def test_telecom_use():
    assert mapped("TelecommunicationUseCode") == vocab.TELECOM_USE


def test_telecom_equipment():
    for v2, fhir, system in concept_map("TelecommunicationEquipmentType"):
        if system.endswith("contact-point-system"):
            assert vocab.TELECOM_SYSTEM[v2.upper()] == fhir
        else:  # CP maps to the *use* "mobile" in the IG
            assert (v2, fhir) == (vocab.MOBILE_EQUIPMENT, "mobile")


def test_address_use_and_type():
    assert mapped("AddressType[Use]") == vocab.ADDRESS_USE
    assert mapped("AddressType[Type]") == vocab.ADDRESS_TYPE


def test_identifier_types():
    ig = mapped("IdentifierType")
    assert all(code == fhir for code, fhir in ig.items())
    assert set(ig) - {"NNxxx"} == set(vocab.IDENTIFIER_TYPES)
    assert vocab.is_identifier_type("NNCHN")


def test_yes_no():
    assert {code: str(value).lower() for code, value in vocab.YES_NO.items()} == mapped("YesNoIndicator")


def test_event_encounter_status_agrees_with_the_ig_except_documented_choices():
    documented = {"A04", "A08"}  # see vocab.EVENT_ENCOUNTER_STATUS
    inpatient = parse("MSH|^~\\&|||||||ADT^A01|1|P|2.5\rPV1|1|I").segments[1]
    for event, status in mapped("Event[EncounterStatus]").items():
        if event not in documented:
            assert encounter_status(inpatient, event) == status, event
    assert encounter_status(inpatient, "A04") == "in-progress"


def test_discharge_time_finishes_the_encounter():
    pv1 = parse("MSH|^~\\&|||||||ADT^A08|1|P|2.5\rPV1|1|I" + "|" * 43 + "20240101").segments[1]
    assert pv1.value(45) == "20240101"
    assert encounter_status(pv1, "A08") == "finished"
