"""map_message end to end on small synthetic messages: what it returns, ids, errors, PHI."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import MappingError, UnsupportedMessage
from core.fhir import transaction_bundle
from mapping import MappedMessage, MappingOptions, PatientKey, map_message

MSH = "MSH|^~\\&|LAB|HOSP|SIDECAR|HOSP|20240305101500+0800||{type}|{control}|P|2.5.1"
PID = (
    "PID|1||MRN-4711^^^HOSP^MR~990011^^^NATIONAL^NI||ZHANG^WEI^MING^^DR||19800215|M|||"
    "88 Garden Road^Apt 5^Springfield^ZJ^310000^CHN^H||"
    "(021)5550-1234^PRN^PH~^NET^Internet^wei@example.org||||||ACC-77"
)


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields set (by field number) and the rest empty."""
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join([name, *values])


PV1 = segment(
    "PV1",
    {
        1: "1",
        2: "I",
        3: "WARD3^12^1",
        7: "D123^HOUSE^GREGORY",
        10: "MED",
        19: "V-2024-001^^^HOSP",
        44: "20240301080000",
    },
)
OBR = segment(
    "OBR",
    {
        1: "1",
        2: "PL-1^ORDERS",
        3: "FL-9^LAB",
        4: "24317-0^CBC panel^LN",
        7: "20240305090000",
        16: "D123^HOUSE^GREGORY",
        22: "20240305100000",
        25: "F",
    },
)
OBX_HGB = "OBX|1|NM|718-7^Hemoglobin^LN||13.5|g/dL^grams per deciliter^UCUM|12.0-16.0|N|||F"
OBX_WBC = "OBX|2|NM|6690-2^Leukocytes^LN||11.2|10*3/uL|4.0-10.0|H|||F|||20240305093000"


def message(kind: str, *segments: str, control: str = "C1") -> str:
    return "\r".join([MSH.format(type=kind, control=control), *segments])


def by_type(mapped: MappedMessage, resource_type: str) -> list[dict[str, Any]]:
    return [r for r in mapped.resources if r["resourceType"] == resource_type]


ORU = message("ORU^R01^ORU_R01", PID, PV1, OBR, OBX_HGB, "NTE|1||Sample slightly hemolysed", OBX_WBC)


# -- the shape of the result -------------------------------------------------------------------


def test_oru_resources_and_references():
    mapped = map_message(ORU)
    assert mapped.message_type == "ORU^R01"
    assert mapped.control_id == "C1"
    (patient,) = by_type(mapped, "Patient")
    (encounter,) = by_type(mapped, "Encounter")
    (report,) = by_type(mapped, "DiagnosticReport")
    hgb, wbc = by_type(mapped, "Observation")
    subject = {"reference": f"Patient/{patient['id']}"}
    assert encounter["subject"] == subject
    assert report["subject"] == hgb["subject"] == wbc["subject"] == subject
    assert hgb["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert report["result"] == [{"reference": f"Observation/{o['id']}"} for o in (hgb, wbc)]
    assert mapped.patient_keys == {patient["id"]: PatientKey(authority="HOSP", value="MRN-4711")}
    transaction_bundle(mapped.resources)


def test_oru_field_mapping():
    mapped = map_message(ORU, MappingOptions(default_timezone="Asia/Shanghai"))
    (report,) = by_type(mapped, "DiagnosticReport")
    hgb, wbc = by_type(mapped, "Observation")
    assert report["status"] == "final"
    assert report["effectiveDateTime"] == "2024-03-05T09:00:00+08:00"
    assert report["issued"] == "2024-03-05T10:00:00+08:00"
    assert [i["value"] for i in report["identifier"]] == ["PL-1", "FL-9"]
    assert hgb["valueQuantity"] == {
        "value": 13.5,
        "unit": "grams per deciliter",
        "system": "http://unitsofmeasure.org",
        "code": "g/dL",
    }
    assert hgb["referenceRange"][0]["low"]["value"] == 12.0
    assert hgb["effectiveDateTime"] == "2024-03-05T09:00:00+08:00"  # OBR-7, OBX-14 empty
    assert wbc["effectiveDateTime"] == "2024-03-05T09:30:00+08:00"  # its own OBX-14
    assert wbc["interpretation"][0]["coding"][0]["code"] == "H"
    assert hgb["note"] == [{"text": "Sample slightly hemolysed"}]


def test_patient_field_mapping():
    (patient,) = by_type(map_message(ORU), "Patient")
    assert patient["name"] == [{"family": "ZHANG", "given": ["WEI", "MING"], "prefix": ["DR"]}]
    assert patient["gender"] == "male"
    assert patient["birthDate"] == "1980-02-15"
    assert patient["identifier"][0]["system"] == "urn:id:HOSP"
    assert patient["address"][0]["line"] == ["88 Garden Road", "Apt 5"]
    assert patient["telecom"] == [
        {"system": "phone", "value": "(021)5550-1234", "use": "home"},
        {"system": "email", "value": "wei@example.org"},
    ]


def test_encounter_field_mapping():
    (encounter,) = by_type(map_message(ORU), "Encounter")
    assert encounter["class"]["code"] == "IMP"
    assert encounter["status"] == "in-progress"
    assert encounter["identifier"][0]["value"] == "V-2024-001"
    assert encounter["period"] == {"start": "2024-03-01T08:00:00+00:00"}


@pytest.mark.parametrize(
    ("event", "status"),
    [
        ("A01", "in-progress"),
        ("A03", "finished"),
        ("A11", "cancelled"),
        ("A05", "planned"),
        ("A14", "planned"),
    ],
)
def test_adt_event_sets_encounter_status(event, status):
    mapped = map_message(message(f"ADT^{event}", "EVN|" + event, PID, PV1))
    (encounter,) = by_type(mapped, "Encounter")
    assert encounter["status"] == status
    assert mapped.unmapped_segments == ("EVN",)


def test_adt_without_visit_content_has_no_encounter():
    mapped = map_message(message("ADT^A31", PID, "PV1|1"))
    assert [r["resourceType"] for r in mapped.resources] == ["Patient"]


def test_a17_maps_both_patients_and_visits():
    second = "PID|2||MRN-0815^^^HOSP^MR||LI^NA"
    mapped = map_message(message("ADT^A17", PID, PV1, second, "PV1|2|O"))
    patients = by_type(mapped, "Patient")
    encounters = by_type(mapped, "Encounter")
    assert len(patients) == 2
    assert [e["subject"]["reference"] for e in encounters] == [f"Patient/{p['id']}" for p in patients]


def test_merge_links_the_old_patient():
    mapped = map_message(message("ADT^A40", "EVN|A40", PID, "MRG|OLD-1^^^HOSP^MR"))
    survivor, old = by_type(mapped, "Patient")
    assert survivor["link"] == [{"other": {"reference": f"Patient/{old['id']}"}, "type": "replaces"}]
    assert old["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    assert old["active"] is False
    assert old["identifier"][0]["value"] == "OLD-1"
    assert mapped.unmapped_segments == ("EVN",)
    assert mapped.phi_values["OLD-1"] == "ID"


def test_unmapped_segments_in_order_with_repeats():
    mapped = map_message(
        message(
            "ADT^A01", "EVN|A01", PID, "NK1|1|ZHANG^LI", "NK1|2|ZHANG^MEI", PV1, "ZPI|x", "AL1|1", "NK1|3"
        )
    )
    # NK1s map to RelatedPerson; AL1|1 and NK1|3 carry nothing but a set ID
    assert mapped.unmapped_segments == ("EVN", "ZPI")


def test_obx_without_obr_gives_observations_only():
    mapped = map_message(message("ORU^R01", PID, OBX_HGB, OBX_WBC))
    assert [r["resourceType"] for r in mapped.resources] == ["Patient", "Observation", "Observation"]


def test_nte_after_obr_is_left_unmapped():
    mapped = map_message(message("ORU^R01", PID, OBR, "NTE|1||Order comment", OBX_HGB))
    assert mapped.unmapped_segments == ("NTE",)
    assert "note" not in by_type(mapped, "Observation")[0]


def test_text_results_resolve_escapes():
    obx = "OBX|1|TX|11535-2^Report^LN||IMPRESSION:\\.br\\No acute findings \\T\\ stable.||||||F"
    (observation,) = by_type(map_message(message("ORU^R01", PID, OBR, obx)), "Observation")
    assert observation["valueString"] == "IMPRESSION:\nNo acute findings & stable."


def test_coded_result():
    obx = "OBX|1|CWE|22314-9^Hep A IgM^LN||260385009^Negative^SCT||||||F"
    (observation,) = by_type(map_message(message("ORU^R01", PID, OBR, obx)), "Observation")
    assert observation["valueCodeableConcept"] == {
        "coding": [{"system": "http://snomed.info/sct", "code": "260385009", "display": "Negative"}]
    }


def test_repeating_coded_result_is_one_component_per_repetition():
    # IG OBX[Observation-Component]: "IF OBX-5 LST.count GREATER THAN 1 AND OBX-2 IS NOT NA".
    obx = "OBX|1|CWE|8867-4^Heart rate^LN||160^High^L~120^Normal^L||||||F"
    (observation,) = by_type(map_message(message("ORU^R01", PID, OBR, obx)), "Observation")
    assert "valueCodeableConcept" not in observation
    values = [c["valueCodeableConcept"]["coding"][0]["code"] for c in observation["component"]]
    assert values == ["160", "120"]
    assert {c["code"]["coding"][0]["code"] for c in observation["component"]} == {"8867-4"}


@pytest.mark.parametrize(
    ("obx11", "status"), [("F", "final"), ("P", "preliminary"), ("C", "corrected"), ("W", "entered-in-error")]
)
def test_result_status_the_ig_maps(obx11, status):
    obx = f"OBX|1|NM|718-7^Hemoglobin^LN||13.5|g/dL|||||{obx11}"
    (observation,) = by_type(map_message(message("ORU^R01", PID, OBR, obx)), "Observation")
    assert observation["status"] == status
    assert "_status" not in observation


@pytest.mark.parametrize("obx11", ["S", "I", "O", "R", "U", "V", "B"])
def test_result_status_the_ig_leaves_open_is_unknown_with_the_v2_code_kept(obx11):
    obx = f"OBX|1|NM|718-7^Hemoglobin^LN||13.5|g/dL|||||{obx11}"
    (observation,) = by_type(map_message(message("ORU^R01", PID, OBR, obx)), "Observation")
    assert observation["status"] == "unknown"
    (extension,) = observation["_status"]["extension"]
    assert extension["url"] == "http://hl7.org/fhir/StructureDefinition/alternate-codes"
    assert extension["valueCodeableConcept"]["coding"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0085", "code": obx11}
    ]


def test_cancelled_result_keeps_x_beside_the_status():  # IG OBX-11 "X" rows
    obx = "OBX|1|NM|718-7^Hemoglobin^LN||||||||X"
    (observation,) = by_type(map_message(message("ORU^R01", PID, OBR, obx)), "Observation")
    assert observation["status"] == "cancelled"
    assert observation["_status"]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "X"


def test_not_asked_result_has_a_data_absent_reason():  # IG OBX-11 "N" rows
    obx = "OBX|1|NM|718-7^Hemoglobin^LN||||||||N"
    (observation,) = by_type(map_message(message("ORU^R01", PID, OBR, obx)), "Observation")
    assert observation["status"] == "unknown"
    assert observation["dataAbsentReason"]["coding"][0]["code"] == "not-asked"


def test_report_status_the_ig_leaves_open_is_unknown_with_the_v2_code_kept():
    obr = OBR.removesuffix("|F") + "|M"  # OBR-25 M: corrected, not final (no IG target)
    (report,) = by_type(map_message(message("ORU^R01", PID, obr, OBX_HGB)), "DiagnosticReport")
    assert report["status"] == "unknown"
    coding = report["_status"]["extension"][0]["valueCodeableConcept"]["coding"][0]
    assert coding == {"system": "http://terminology.hl7.org/CodeSystem/v2-0123", "code": "M"}


def test_rp_result_content_type_is_type_and_subtype():  # IG RP[Attachment]: RP.3 "/" RP.4
    obx = "OBX|1|RP|SLIDE^Digital slide^L||http://img.example/s/1^^IM^MRXS||||||F"
    (observation,) = by_type(map_message(message("ORU^R01", PID, OBR, obx)), "Observation")
    (extension,) = observation["extension"]
    assert extension["valueAttachment"] == {"contentType": "image/mrxs", "url": "http://img.example/s/1"}


def test_order_observation_does_not_take_the_obr_time():
    # IG OBR[ServiceRequest]: OBR-7 has no target ("should not be populated in a message
    # corresponding to a ServiceRequest"); in a result message an empty OBX-14 means OBR-7.
    orc = "ORC|NW|PL-1^ORDERS"
    order = map_message(message("OML^O21^OML_O21", PID, orc, OBR, OBX_HGB))
    (observation,) = by_type(order, "Observation")
    assert "effectiveDateTime" not in observation
    (result, _) = by_type(map_message(ORU), "Observation")
    assert result["effectiveDateTime"] == "2024-03-05T09:00:00+00:00"


@pytest.mark.parametrize("trigger", ["R30", "R31", "R32", "R33"])
def test_other_result_triggers(trigger):
    mapped = map_message(message(f"ORU^{trigger}", PID, OBR, OBX_HGB))
    assert mapped.message_type == f"ORU^{trigger}"
    assert len(by_type(mapped, "Observation")) == 1


def test_line_endings_and_bom_do_not_matter():
    baseline = map_message(ORU).resources
    assert map_message("\ufeff" + ORU.replace("\r", "\n") + "\n").resources == baseline
    assert map_message("  " + ORU.replace("\r", "\r\n") + "\r\n\r\n").resources == baseline


# -- deterministic ids ------------------------------------------------------------------------------

_ID = re.compile(r"[0-9a-f]{32}")


def test_mapping_twice_gives_identical_resources():
    assert map_message(ORU).resources == map_message(ORU).resources


def test_a_later_message_about_the_same_things_gives_the_same_ids():
    first = map_message(ORU)
    preliminary_again = map_message(ORU.replace("|C1|", "|C2|"))
    assert [r["id"] for r in first.resources] == [r["id"] for r in preliminary_again.resources]
    adt = map_message(message("ADT^A08", PID, PV1, control="X9"))
    assert by_type(adt, "Patient")[0]["id"] == by_type(first, "Patient")[0]["id"]
    assert by_type(adt, "Encounter")[0]["id"] == by_type(first, "Encounter")[0]["id"]


def test_patient_key_prefers_mr_then_first_then_pid2_then_pid4():
    def key(pid: str) -> PatientKey:
        (only,) = map_message(message("ADT^A08", pid)).patient_keys.values()
        return only

    assert key("PID|1||111^^^A^PI~222^^^B^MR") == PatientKey("B", "222")
    assert key("PID|1||111^^^A^PI~222^^^B^PN") == PatientKey("A", "111")
    assert key("PID|1||333^^^&1.2.3&ISO") == PatientKey("1.2.3", "333")
    assert key("PID|1|444") == PatientKey("", "444")
    assert key("PID|1|||555^^^OLD") == PatientKey("OLD", "555")


def test_ids_are_hashes_and_contain_no_identifier():
    for text in (ORU, message("ADT^A01", PID, PV1)):
        mapped = map_message(text)
        identifiers = [v for v, kind in mapped.phi_values.items() if kind == "ID"]
        for resource in mapped.resources:
            assert _ID.fullmatch(resource["id"])
            for identifier in identifiers:
                assert identifier not in resource["id"]


def test_repeated_codes_in_one_order_get_distinct_ids():
    mapped = map_message(message("ORU^R01", PID, OBR, OBX_HGB, OBX_HGB, OBX_HGB))
    ids = [o["id"] for o in by_type(mapped, "Observation")]
    assert len(set(ids)) == 3
    transaction_bundle(mapped.resources)


def test_same_patient_twice_in_one_message_is_one_patient():
    mapped = map_message(message("ORU^R01", PID, OBR, OBX_HGB, PID, OBR.replace("FL-9", "FL-10"), OBX_WBC))
    assert len(by_type(mapped, "Patient")) == 1
    assert len(by_type(mapped, "DiagnosticReport")) == 2


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["RDE^O11", "DFT^P03", "OML^O33", "ORU^W01", "ACK"])
def test_types_without_a_message_map_go_through_the_generic_map(kind):
    mapped = map_message(message(kind, PID))
    assert mapped.message_type == kind
    assert [r["resourceType"] for r in mapped.resources] == ["Patient"]


def test_message_without_pid_maps_nothing_and_reports_everything():
    mapped = map_message(message("QRY^Q01", "QRD|20240305|R|I|Q-1", OBR, OBX_HGB))
    assert mapped.resources == []
    assert {item.segment for item in mapped.report} >= {"QRD", "OBR", "OBX"}


def test_a_numeric_message_code_is_unsupported():
    with pytest.raises(UnsupportedMessage, match="not an HL7 message type"):
        map_message(message("123^A01", PID))


def test_garbage_message_type_is_not_quoted():
    with pytest.raises(MappingError, match="MSH-9 is not a message type code") as caught:
        map_message(message("ZHANG WEI^1980", PID))
    assert not isinstance(caught.value, UnsupportedMessage)
    assert "ZHANG" not in str(caught.value)


def test_missing_message_type_is_an_error():
    with pytest.raises(MappingError, match="MSH-9"):
        map_message("MSH|^~\\&|A|B|C|D|20240101||||P|2.5\r" + PID)


def test_bad_timezone_option_is_a_mapping_error():
    with pytest.raises(MappingError, match="timezone"):
        map_message(ORU, MappingOptions(default_timezone="Not/AZone"))


def test_a_bug_becomes_a_mapping_error_that_names_the_place_not_the_data(monkeypatch):
    import mapping.observation

    def broken(*_args: Any) -> dict[str, Any]:
        raise ValueError("invalid value MRN-4711")

    monkeypatch.setattr(mapping.observation, "observation_value", broken)
    with pytest.raises(MappingError) as caught:
        map_message(ORU)
    reason = str(caught.value)
    assert reason.startswith("internal mapping error ValueError at mapping.")
    assert "MRN-4711" not in reason
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def test_bytes_input_is_refused_with_a_reason():
    with pytest.raises(MappingError, match="decoded text"):
        map_message(ORU.encode())  # type: ignore[arg-type]


def _phi_like(text: str) -> list[str]:
    mapped = map_message(text)
    return [v for v in mapped.phi_values if len(v) >= 4]


def test_truncated_messages_fail_only_with_mapping_errors_that_quote_no_data():
    phi = _phi_like(ORU)
    for end in range(0, len(ORU), 3):
        try:
            map_message(ORU[:end])
        except MappingError as exc:
            reason = str(exc)
            assert not any(value in reason for value in phi), reason


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from('MSHPIDOBX|^~\\&\r\n 0123ABC"\ufeff'), max_size=120))
def test_arbitrary_text_never_raises_anything_but_mapping_error(text):
    with contextlib.suppress(MappingError):
        map_message(text)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_messages_never_raise_anything_but_mapping_error(data):
    position = data.draw(st.integers(min_value=0, max_value=len(ORU) - 1))
    insert = data.draw(st.text(alphabet='|^~\\&\r"X0.', max_size=4))
    with contextlib.suppress(MappingError):
        map_message(ORU[:position] + insert + ORU[position + 1 :])


# -- PHI ----------------------------------------------------------------------------------------------


def test_phi_values_cover_the_identifying_strings():
    text = message(
        "ADT^A01",
        PID,
        "NK1|1|ZHANG^LI^^^^^L|SPO|12 Other Street^^Springfield^^310001|^PRN^PH^^^571^88776655",
        PV1,
        "MRG|OLD-77^^^HOSP^MR",
    )
    phi = map_message(text).phi_values
    expected = {
        "ZHANG": "NAME",
        "WEI": "NAME",
        "MING": "NAME",
        "WEI ZHANG": "NAME",
        "ZHANG WEI": "NAME",
        "LI": "NAME",
        "HOUSE": "NAME",
        "GREGORY HOUSE": "NAME",
        "MRN-4711": "ID",
        "990011": "ID",
        "ACC-77": "ID",
        "V-2024-001": "ID",
        "OLD-77": "ID",
        "19800215": "DATE",
        "1980-02-15": "DATE",
        "(021)5550-1234": "PHONE",
        "02155501234": "PHONE",
        "88776655": "PHONE",
        "57188776655": "PHONE",
        "88 Garden Road": "ADDRESS",
        "Apt 5": "ADDRESS",
        "310000": "ADDRESS",
        "12 Other Street": "ADDRESS",
        "wei@example.org": "EMAIL",
    }
    assert {k: phi.get(k) for k in expected} == expected
    for not_phi in ("C1", "M", "CHN", "ZJ", "MR", "HOSP", "I"):
        assert not_phi not in phi
    assert all(len(value) >= 2 for value in phi)


def test_phi_includes_order_numbers_and_staff_names():
    phi = map_message(ORU).phi_values
    assert phi["PL-1"] == phi["FL-9"] == "ID"
    assert phi["HOUSE, GREGORY"] == "NAME"
    assert "D123" not in phi  # staff identifiers are not patient identifiers


def test_repr_does_not_print_identified_data():
    mapped = map_message(ORU)
    assert "ZHANG" not in repr(mapped)
    assert "MRN-4711" not in repr(next(iter(mapped.patient_keys.values())))
