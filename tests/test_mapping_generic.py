"""The segment-driven map (``mapping.generic``): message types without a message map of their own."""

from __future__ import annotations

from typing import Any

from core.fhir import transaction_bundle
from mapping import map_message, report_lines

PID = "PID|1||MRN-4711^^^HOSP^MR||ZHANG^WEI||19800215|M"
PV1 = "PV1|1|I|W1^101^1"


def message(kind: str, *segments: str) -> str:
    msh = f"MSH|^~\\&|APP|HOSP|SIDECAR|HOSP|20240305101500+0800||{kind}|CTRL-1|P|2.5.1"
    return "\r".join([msh, *segments])


def of_type(resources: list[dict[str, Any]], resource_type: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == resource_type]


def test_rde_pairs_orc_rxo_rxe_and_rxr_into_one_medication_request():
    mapped = map_message(
        message(
            "RDE^O11",
            PID,
            PV1,
            "ORC|NW|PL-7^HIS|FL-7^PHARM||IP",
            "RXO|00071^Aspirin^NDC|100||mg^mg^UCUM",
            "RXE|^^^20240305|00072^Aspirin 100^NDC|100||mg^mg^UCUM",
            "NTE|1||after food",
            "RXR|PO^Oral^HL70162",
            "ORC|NW|PL-8^HIS",
            "RXE||00073^Paracetamol^NDC|500||mg^mg^UCUM",
        )
    )
    assert mapped.segment_driven
    first, second = of_type(mapped.resources, "MedicationRequest")
    assert first["medicationCodeableConcept"]["coding"][0]["code"] == "00072"  # RXE-2 wins over RXO-1
    assert first["status"] == "active"
    assert first["encounter"]
    assert first["note"] == [{"text": "after food"}]
    assert first["dosageInstruction"][0]["route"]["coding"][0]["code"] == "PO"
    assert first["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 100
    assert second["medicationCodeableConcept"]["coding"][0]["code"] == "00073"
    assert "RXE (segment 5): fields RXE-1 not mapped" in report_lines(mapped)
    transaction_bundle(mapped.resources)


def test_rds_dispense_points_at_the_request_of_its_group():
    mapped = map_message(
        message(
            "RDS^O13",
            PID,
            "ORC|RE|PL-7^HIS",
            "RXE||00071^Aspirin^NDC|100||mg^mg^UCUM",
            "RXD|1|00071^Aspirin^NDC|20240305120000+0800|30|TAB^tablet",
        )
    )
    (request,) = of_type(mapped.resources, "MedicationRequest")
    (dispense,) = of_type(mapped.resources, "MedicationDispense")
    assert dispense["authorizingPrescription"] == [{"reference": f"MedicationRequest/{request['id']}"}]
    assert dispense["whenHandedOver"] == "2024-03-05T12:00:00+08:00"
    assert dispense["quantity"]["value"] == 30


def test_ras_gives_one_administration_per_rxa():
    mapped = map_message(
        message(
            "RAS^O17",
            PID,
            "ORC|RE|PL-9^HIS",
            "RXA|0|1|20240305130000+0800||00071^Aspirin^NDC|100|mg^mg^UCUM",
            "RXA|0|2|20240305190000+0800||00071^Aspirin^NDC|100|mg^mg^UCUM|||||||||||||RE",
            "RXR|PO^Oral^HL70162",
        )
    )
    first, second = of_type(mapped.resources, "MedicationAdministration")
    assert first["effectiveDateTime"] == "2024-03-05T13:00:00+08:00"
    assert first["status"] == "completed" and second["status"] == "not-done"
    assert first["dosage"]["route"]["coding"][0]["code"] == "PO"
    assert first["id"] != second["id"]


def test_oul_specimen_orc_after_obr_and_observations():
    mapped = map_message(
        message(
            "OUL^R22",
            PID,
            "SPM|1|SP-1^HIS||BLD^Blood^HL70487|||||||||||||20240305080000+0800",
            "OBR|1|PL-1^HIS|FL-1^LAB|718-7^Hemoglobin^LN",
            "ORC|SC|PL-1^HIS|FL-1^LAB||CM",
            "OBX|1|NM|718-7^Hemoglobin^LN||13.2|g/dL^g/dL^UCUM|||||F",
            "NTE|1||hemolysed",
        )
    )
    (specimen,) = of_type(mapped.resources, "Specimen")
    (order,) = of_type(mapped.resources, "ServiceRequest")  # the ORC joined the OBR before it
    (observation,) = of_type(mapped.resources, "Observation")
    assert specimen["type"]["coding"][0]["code"] == "BLD"
    assert specimen["identifier"][0]["value"] == "SP-1"
    assert specimen["collection"] == {"collectedDateTime": "2024-03-05T08:00:00+08:00"}
    assert order["status"] == "completed"
    assert observation["specimen"] == {"reference": f"Specimen/{specimen['id']}"}
    assert observation["note"] == [{"text": "hemolysed"}]
    assert order["supportingInfo"] == [{"reference": f"Observation/{observation['id']}"}]


def test_problems_diagnoses_allergies_and_procedures():
    mapped = map_message(
        message(
            "DFT^P03",
            PID,
            PV1,
            "PRB|AD|20240305|I10^Hypertension^I10",
            "DG1|1||J18.9^Pneumonia^I10||20240304",
            "AL1|1|DA|70618^Penicillin^RXNORM|SV|Hives",
            "PR1|1||0JB^Appendectomy^ICD10PCS||20240304",
            "FT1|1|||20240305|20240305|CG|CPT-99213^Office visit^C4|||1",
        )
    )
    problem, diagnosis = of_type(mapped.resources, "Condition")
    assert problem["category"][0]["coding"][0]["code"] == "problem-list-item"
    assert diagnosis["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    assert diagnosis["encounter"]
    (allergy,) = of_type(mapped.resources, "AllergyIntolerance")
    assert allergy["category"] == ["medication"] and allergy["criticality"] == "high"
    assert allergy["reaction"] == [{"manifestation": [{"text": "Hives"}]}]
    (procedure,) = of_type(mapped.resources, "Procedure")
    assert procedure["performedDateTime"] == "2024-03-04"
    (charge,) = of_type(mapped.resources, "ChargeItem")
    assert charge["code"]["coding"][0]["code"] == "CPT-99213"
    assert charge["occurrenceDateTime"] == "2024-03-05" and charge["quantity"] == {"value": 1}


def test_a_message_without_pid_maps_nothing_and_reports_everything():
    mapped = map_message(
        message("QRY^Q01", "QRD|20240305|R|I|Q-1", "OBX|1|NM|718-7^Hemoglobin^LN||13.2", "PRB|AD||I10^HT^I10")
    )
    assert mapped.resources == []
    assert [item.segment for item in mapped.report] == ["QRD", "OBX", "PRB"]
    transaction_bundle(mapped.resources)


def test_ids_are_deterministic():
    text = message("PPR^PC1", PID, "PRB|AD|20240305|I10^Hypertension^I10", "SPM|1||BLD^Blood^HL70487")
    assert [r["id"] for r in map_message(text).resources] == [r["id"] for r in map_message(text).resources]
