"""Every message of the shared corpus maps, validates and bundles (types without a message map
through the segment-driven map); the malformed one fails with a clear reason; the results mean
what another converter's output means (compared by meaning)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.errors import MappingError, UnsupportedMessage
from core.fhir import transaction_bundle, validate_resource
from mapping import MappedMessage, map_message
from tests.corpus import corpus_files, message_type, split_messages

# Message types with a message map of their own (the comparison tests below use these).
MAPPED_TYPES = ("ADT", "ORU", "ORM", "OML", "MDM", "SIU", "VXU")


def _trigger(message: str) -> str:
    field_sep, component_sep = message[3], message[4]
    fields = message.split(field_sep)
    parts = fields[8].split(component_sep) if len(fields) > 8 else []
    return "^".join(parts[:2])


def mapped_kind(message: str) -> bool:
    """Every message type maps now (the rest through ``mapping.generic``)."""
    return bool(message_type(message))


# Files whose ADT/ORU message cannot be mapped, with the reason the mapper must give.
EXPECTED_FAILURES = {
    # MANIFEST: "MALFORMED on purpose ... MSH-2 ... contain U+FFFD replacement chars".
    "hapi__ExtendedMinLowerLayerProtocolTest_L116_ADT_A01.hl7": "MSH-2 encoding characters contain U+FFFD",
}


def test_bare_pid_segments_map_to_no_patient_and_are_reported() -> None:
    # A parser test message: both PIDs of this A17 swap are a bare set ID ("PID|1").
    (path,) = corpus_files("hapi__NewPipeParserTest_L670_ADT_A17.hl7")
    result = map_message(path.read_text(encoding="utf-8"))
    assert not [r for r in result.resources if r["resourceType"] == "Patient"]
    assert result.unmapped_segments.count("PID") == 2
    assert "ZZA" in result.unmapped_segments


def corpus_messages() -> list[tuple[str, str]]:
    """(label, message text) for every message of every corpus file; batches split."""
    found = []
    for path in corpus_files():
        messages = split_messages(path.read_text(encoding="utf-8"))
        for index, text in enumerate(messages):
            label = path.name if len(messages) == 1 else f"{path.name}#{index + 1}"
            found.append((label, text))
    return found


def test_every_corpus_message_maps_validates_and_bundles():
    failures: list[str] = []
    mapped = 0
    kinds: set[str] = set()
    for label, text in corpus_messages():
        if label in EXPECTED_FAILURES:
            continue
        try:
            result = map_message(text)
            for resource in result.resources:
                validate_resource(resource)
            transaction_bundle(result.resources)
        except MappingError as exc:
            failures.append(f"{label}: {exc}")
            continue
        mapped += 1
        kinds.add(_trigger(text))
    assert not failures, "\n".join(failures)
    assert mapped >= 100
    # The types that had no map before the segment-driven one, among others.
    assert {"RDE^O11", "RDS^O13", "RAS^O17", "PPR^PC1", "OUL^R22", "DFT^P03", "QRY^Q01", "RSP^K22"} <= kinds


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("RDE^O11", {"Patient", "MedicationRequest"}),
        ("RDS^O13", {"Patient", "MedicationDispense"}),
        ("RAS^O17", {"Patient", "MedicationAdministration"}),
        ("PPR^PC1", {"Patient", "Condition"}),
        ("OUL^R22", {"Patient", "Specimen", "Observation"}),
        ("DFT^P03", {"Patient", "Procedure", "Condition", "ChargeItem"}),
    ],
)
def test_new_message_types_map_to_their_resources(kind, expected):
    seen: set[str] = set()
    for _label, text in corpus_messages():
        if _trigger(text) == kind:
            seen |= {r["resourceType"] for r in map_message(text).resources}
    assert expected <= seen


def test_messages_without_a_patient_map_to_a_report_not_an_error():
    checked = 0
    for _label, text in corpus_messages():
        if _trigger(text) in ("QRY^Q01", "ERP^Z99"):
            mapped = map_message(text)
            assert mapped.report, "segments without a map must be reported"
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize(("name", "reason"), sorted(EXPECTED_FAILURES.items()))
def test_known_bad_messages_fail_with_a_clear_reason(name, reason):
    (path,) = corpus_files(name)
    with pytest.raises(MappingError, match=reason.replace("+", r"\+")) as caught:
        map_message(path.read_text(encoding="utf-8"))
    assert caught.value.__class__ is MappingError


def test_a_code_that_is_no_message_type_is_unsupported():
    with pytest.raises(UnsupportedMessage, match=r"MSH-9\.1 is not an HL7 message type"):
        map_message("MSH|^~\\&|APP|HOSP|SIDECAR|HOSP|20240305||123^A01|C-1|P|2.5\rPID|1||M-1^^^H^MR")


def test_no_resource_has_empty_elements_or_only_type_and_id():
    def check(value: Any, path: str) -> None:
        assert value not in ("", [], {}, None), path
        if isinstance(value, dict):
            for key, item in value.items():
                check(item, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                check(item, f"{path}[{index}]")

    for label, text in corpus_messages():
        if label in EXPECTED_FAILURES:
            continue
        for resource in map_message(text).resources:
            check(resource, f"{label}:{resource['resourceType']}")
            assert set(resource) - {"resourceType", "id"}, label


# -- meaning, against the Microsoft FHIR-Converter's output ------------------------------------


def _expected(path: Path) -> list[dict[str, Any]]:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    return [entry["resource"] for entry in bundle["entry"]]


def _of_type(resources: list[dict[str, Any]], resource_type: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == resource_type]


def _source_of(expected_path: Path) -> str:
    source = expected_path.with_name(expected_path.name.replace(".expected.json", ".hl7"))
    return source.read_text(encoding="utf-8")


def _mapped_for(expected_path: Path) -> MappedMessage:
    return map_message(_source_of(expected_path))


def _expected_files() -> list[Path]:
    """The other converter's outputs for ADT/ORU inputs."""
    return [
        p
        for p in corpus_files("msfc__*.expected.json")
        if message_type(_source_of(p).lstrip("\ufeff")) in MAPPED_TYPES
    ]


def test_patients_mean_the_same_as_the_other_converter():
    compared = 0
    for expected_path in _expected_files():
        expected = _of_type(_expected(expected_path), "Patient")
        ours = _of_type(_mapped_for(expected_path).resources, "Patient")
        for theirs, mine in zip(expected, ours, strict=False):
            where = expected_path.name
            assert mine.get("birthDate") == theirs.get("birthDate"), where
            assert mine.get("gender") == theirs.get("gender"), where
            # The other converter also folds guarantor/insured names into the Patient.
            assert {n.get("family") for n in mine["name"]} <= {n.get("family") for n in theirs["name"]}, where
            mine_ids = {i["value"] for i in mine["identifier"]}
            assert mine_ids <= {i.get("value") for i in theirs["identifier"]}, where
            compared += 1
    assert compared >= 15


def test_adt_a01_patient_details():
    (expected_path,) = corpus_files("msfc__ADT-A01-01.expected.json")
    (patient,) = _of_type(_mapped_for(expected_path).resources, "Patient")
    assert patient["name"][0]["family"] == "EVERYMAN"
    assert patient["birthDate"] == "1988-08-18"
    assert patient["gender"] == "male"
    assert "PATID1234" in {i["value"] for i in patient["identifier"]}


def test_observations_mean_the_same_as_the_other_converter():
    compared = 0
    for expected_path in _expected_files():
        ours = _of_type(_mapped_for(expected_path).resources, "Observation")
        by_code: dict[str, list[dict[str, Any]]] = {}
        for observation in ours:
            for coding in observation["code"].get("coding", []):
                by_code.setdefault(coding["code"], []).append(observation)
        for theirs in _of_type(_expected(expected_path), "Observation"):
            quantity = theirs.get("valueQuantity")
            if quantity is None:
                continue
            code = theirs["code"]["coding"][0]["code"]
            candidates = [o.get("valueQuantity", {}) for o in by_code.get(code, [])]
            unit = quantity.get("unit", quantity.get("code"))
            assert any(
                q.get("value") == quantity["value"] and q.get("unit", q.get("code")) == unit
                for q in candidates
            ), f"{expected_path.name}: {code}"
            compared += 1
    assert compared >= 30


def test_lab_oru_codes_values_and_units():
    (expected_path,) = corpus_files("msfc__LAB-ORU-1.expected.json")
    mapped = _mapped_for(expected_path)
    observations = {o["code"]["coding"][0]["code"]: o for o in _of_type(mapped.resources, "Observation")}
    assert observations["11273-0"]["valueQuantity"] == {"value": 4.06, "unit": "tera.l-1"}
    assert observations["20570-8"]["valueQuantity"]["unit"] == "%"
    assert observations["11125-2"]["status"] == "final"
    assert observations["11125-2"]["code"]["coding"][0]["system"] == "http://loinc.org"
    reports = _of_type(mapped.resources, "DiagnosticReport")
    assert [r["code"]["coding"][0]["code"] for r in reports] == ["24317-0", "26464-8"]
    assert all(len(r["result"]) == 5 for r in reports)
