"""Orders, documents, appointments, immunizations, merges and text reports, on synthetic messages."""

from __future__ import annotations

import base64
from typing import Any

from core.fhir import transaction_bundle
from mapping import MappedMessage, map_message

MSH = "MSH|^~\\&|APP|HOSP|SIDECAR|HOSP|20240305101500+0800||{type}|CTRL-1|P|2.5.1"
PID = "PID|1||MRN-4711^^^HOSP^MR||ZHANG^WEI||19800215|M"
PV1 = "PV1|1|O|CLINIC^1||||||||||||||||V-9^^^HOSP"


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields set (by field number) and the rest empty."""
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join([name, *values])


def message(kind: str, *segments: str) -> str:
    return "\r".join([MSH.format(type=kind), *segments])


def by_type(mapped: MappedMessage, resource_type: str) -> list[dict[str, Any]]:
    return [r for r in mapped.resources if r["resourceType"] == resource_type]


def test_orm_pairs_each_orc_with_its_own_obr():
    mapped = map_message(
        message(
            "ORM^O01",
            PID,
            PV1,
            seg("ORC", {1: "NW", 2: "PL-1^HIS", 5: "SC", 9: "20240305100000"}),
            seg("OBR", {1: "1", 2: "PL-1^HIS", 4: "24725-4^CT Head^LN", 5: "S", 6: "20240306080000"}),
            "NTE|1||Patient is claustrophobic",
            seg("ORC", {1: "NW", 2: "PL-2^HIS", 3: "FL-2^RIS", 5: "CM"}),
            "OBR|2|PL-2^HIS||30746-2^XR Chest^LN",
        )
    )
    first, second = by_type(mapped, "ServiceRequest")
    assert first["code"]["coding"][0]["code"] == "24725-4"
    assert second["code"]["coding"][0]["code"] == "30746-2"
    assert first["status"] == "active" and second["status"] == "completed"
    assert first["intent"] == "order" and first["priority"] == "stat"
    assert first["note"] == [{"text": "Patient is claustrophobic"}]
    assert {i["type"]["coding"][0]["code"] for i in second["identifier"]} == {"PLAC", "FILL"}
    assert first["subject"]["reference"].startswith("Patient/")
    assert first["encounter"]["reference"].startswith("Encounter/")
    transaction_bundle(mapped.resources)


def test_oml_obr_without_its_own_orc_is_its_own_order():
    mapped = map_message(
        message("OML^O21", PID, "ORC|NW|A-1", "OBR|1|A-1||GLU^Glucose^L", "OBR|2|A-2||NA^Sodium^L")
    )
    codes = [s["code"]["coding"][0]["code"] for s in by_type(mapped, "ServiceRequest")]
    assert codes == ["GLU", "NA"]


def test_mdm_text_lines_and_embedded_pdf_become_content():
    pdf = base64.b64encode(b"%PDF-1.4 fake").decode()
    mapped = map_message(
        message(
            "MDM^T02",
            "EVN|T02|20240305",
            PID,
            PV1,
            seg(
                "TXA",
                {
                    1: "1",
                    2: "CN^Consult note",
                    3: "TX",
                    6: "20240305101500+0800",
                    12: "DOC-1^HIS",
                    17: "AU",
                    19: "AV",
                    25: "Consult",
                },
            ),
            "OBX|1|TX|11488-4^Consult note^LN||Line one||||||F",
            "OBX|2|TX|11488-4^Consult note^LN||Line two||||||F",
            f"OBX|3|ED|PDF^Report^L||^application^pdf^Base64^{pdf}||||||F",
        )
    )
    (document,) = by_type(mapped, "DocumentReference")
    assert document["status"] == "current" and document["docStatus"] == "final"
    assert document["masterIdentifier"]["value"] == "DOC-1"
    attachments = [c["attachment"] for c in document["content"]]
    assert attachments[0] == {"contentType": "application/pdf", "data": pdf}
    assert base64.b64decode(attachments[1]["data"]).decode() == "Line one\nLine two"
    assert document["context"]["encounter"][0]["reference"].startswith("Encounter/")
    transaction_bundle(mapped.resources)


def test_siu_maps_an_appointment_with_the_patient():
    mapped = map_message(
        message(
            "SIU^S12",
            seg(
                "SCH",
                {
                    1: "P-1",
                    2: "F-1",
                    7: "CHECKUP^Checkup^HL70276",
                    8: "ROUTINE^Routine^HL70277",
                    9: "30",
                    10: "min",
                    11: "^^^20240310090000+0800",
                    25: "Booked",
                },
            ),
            "NTE|1||Bring previous images",
            PID,
            "RGS|1",
            "AIS|1||US^Ultrasound^L|20240310090000+0800",
        )
    )
    (appointment,) = by_type(mapped, "Appointment")
    (patient,) = by_type(mapped, "Patient")
    assert appointment["status"] == "booked"
    assert appointment["start"] == "2024-03-10T09:00:00+08:00"
    assert appointment["end"] == "2024-03-10T09:30:00+08:00"
    assert appointment["minutesDuration"] == 30
    assert appointment["comment"] == "Bring previous images"
    assert appointment["participant"] == [
        {"actor": {"reference": f"Patient/{patient['id']}"}, "status": "accepted"}
    ]
    transaction_bundle(mapped.resources)


def test_vxu_maps_rxa_to_immunization():
    mapped = map_message(
        message(
            "VXU^V04",
            PID,
            "ORC|RE||IZ-1^HIS",
            seg(
                "RXA",
                {
                    1: "0",
                    2: "1",
                    3: "20240301",
                    5: "08^HepB^CVX",
                    6: "0.5",
                    7: "mL^mL^UCUM",
                    15: "LOT-7",
                    16: "20250101",
                    17: "MSD^Merck^MVX",
                    20: "CP",
                    21: "A",
                },
            ),
            "RXR|IM^Intramuscular^HL70162|LA^Left arm^HL70163",
            "OBX|1|CE|64994-7^Funding eligibility^LN|1|V02^VFC eligible^HL70064||||||F",
        )
    )
    (immunization,) = by_type(mapped, "Immunization")
    assert immunization["status"] == "completed"
    assert immunization["vaccineCode"]["coding"][0]["code"] == "08"
    assert immunization["occurrenceDateTime"] == "2024-03-01"
    assert immunization["doseQuantity"]["value"] == 0.5
    assert immunization["lotNumber"] == "LOT-7"
    assert immunization["route"]["coding"][0]["code"] == "IM"
    (observation,) = by_type(mapped, "Observation")
    assert observation["partOf"] == [{"reference": f"Immunization/{immunization['id']}"}]
    transaction_bundle(mapped.resources)


def test_vxu_deleted_dose_is_entered_in_error():
    mapped = map_message(
        message(
            "VXU^V04", PID, seg("RXA", {1: "0", 2: "1", 3: "20240301", 5: "08^HepB^CVX", 6: "999", 21: "D"})
        )
    )
    (immunization,) = by_type(mapped, "Immunization")
    assert immunization["status"] == "entered-in-error"
    assert "doseQuantity" not in immunization


def test_text_report_gets_presented_form_and_conclusion():
    mapped = map_message(
        message(
            "ORU^R01",
            PID,
            "OBR|1||RAD-1|71045^XR chest^CPT|||20240305090000|||||||||||||||20240305100000|||F",
            "OBX|1|TX|18782-3^Findings^LN||Lungs are clear.~Heart size normal.||||||F",
            "OBX|2|TX|19005-8^Impression^LN||No acute disease.||||||F",
        )
    )
    (report,) = by_type(mapped, "DiagnosticReport")
    assert report["conclusion"] == "No acute disease."
    (form,) = report["presentedForm"]
    assert form["contentType"] == "text/plain"
    assert (
        base64.b64decode(form["data"]).decode() == "Lungs are clear.\nHeart size normal.\nNo acute disease."
    )


def test_numeric_report_has_no_presented_form():
    mapped = map_message(
        message(
            "ORU^R01",
            PID,
            "OBR|1||L-1|24317-0^CBC^LN",
            "OBX|1|NM|718-7^Hemoglobin^LN||13.5|g/dL|||||F",
            "OBX|2|ST|8251-1^Comment^LN||Hemolysed||||||F",
        )
    )
    (report,) = by_type(mapped, "DiagnosticReport")
    assert "presentedForm" not in report and "conclusion" not in report


def test_a40_merge_old_patient_is_replaced_by_the_survivor():
    mapped = map_message(message("ADT^A40", "EVN|A40", PID, "MRG|OLD-9^^^HOSP^MR||||||ZHANG^W"))
    survivor, old = by_type(mapped, "Patient")
    assert survivor["link"][0]["type"] == "replaces"
    assert old["link"][0]["type"] == "replaced-by"
    assert old["name"][0]["family"] == "ZHANG"
    assert set(mapped.patient_keys) == {survivor["id"], old["id"]}
    transaction_bundle(mapped.resources)


def test_mdm_ed_without_data_still_says_what_the_document_is():
    # IG OBX[DocumentReference] OBX-5 ED -> content.attachment; ED[Attachment]: ED.3 -> contentType.
    mapped = map_message(
        message(
            "MDM^T02",
            PID,
            seg("TXA", {1: "1", 2: "DI", 3: "TX", 12: "DOC-2^HIS", 17: "AU"}),
            "OBX|1|ED|02585^TransthoracicEcho^PCV4||^application^pdf^Base64^||||||F",
        )
    )
    (document,) = by_type(mapped, "DocumentReference")
    assert [c["attachment"] for c in document["content"]] == [{"contentType": "application/pdf"}]
    assert not [item for item in mapped.report if item.segment == "OBX"]
