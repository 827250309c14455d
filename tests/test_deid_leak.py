from typing import Any

import pytest

from core.errors import IdentifierLeak
from deid import check_no_leak
from deid.policy import PSEUDONYM_SYSTEM

PHI = {
    "John Smith": "NAME",
    "Ann": "NAME",
    "Anna": "NAME",
    "12345678": "ID",
    "4711": "ID",
    "(555) 123-4567": "PHONE",
    "19800312": "DATE",
    "1980": "DATE",
    "王芳": "NAME",
}


def _obs(**extra):
    return {
        "resourceType": "Observation",
        "id": "abc",
        "status": "final",
        "code": {"text": "Glucose"},
        **extra,
    }


def test_clean_resources_pass():
    check_no_leak([_obs(valueString="Annual review; Savannah; code 14711; 1980-03-19")], PHI)


@pytest.mark.parametrize(
    ("planted", "kind"),
    [
        ({"valueString": "seen by john smith today"}, "NAME"),
        ({"valueString": "Mr. Smith"}, "NAME"),
        ({"note": [{"text": "MRN: 12345678"}]}, "ID"),
        ({"valueString": "code 4711"}, "ID"),
        ({"valueString": "call 555 123 4567"}, "PHONE"),
        ({"valueString": "call +1-555-123-4567"}, "PHONE"),
        ({"valueString": "born 19800312"}, "DATE"),
        ({"valueString": "患者王芳"}, "NAME"),
        ({"valueString": "full width １２３４５６７８"}, "ID"),
        ({"code": {"coding": [{"system": "urn:local", "code": "12345678"}]}}, "ID"),
        ({"valueInteger": 5551234567}, "PHONE"),
        ({"valueString": "4711"}, "ID"),
    ],
)
def test_planted_leak_is_found_and_never_echoed(planted, kind):
    resource = _obs(**planted)
    with pytest.raises(IdentifierLeak) as info:
        check_no_leak([{"resourceType": "Patient", "id": "p"}, resource], PHI)
    message = str(info.value)
    assert kind in message
    assert "resources[1] Observation." in message
    for value in PHI:
        if len(value) >= 4:
            assert value.casefold() not in message.casefold()
    for digits in ("12345678", "4711", "5551234567", "19800312"):
        assert digits not in message


def test_leak_names_the_path():
    with pytest.raises(IdentifierLeak, match=r"NAME in resources\[0\] Observation\.note\[1\]\.text"):
        check_no_leak([_obs(note=[{"text": "ok"}, {"text": "John Smith"}])], PHI)


def test_id_or_reference_that_is_a_reported_value_is_a_leak():
    with pytest.raises(IdentifierLeak, match="ID"):
        check_no_leak([_obs(subject={"reference": "Patient/12345678"})], PHI)
    with pytest.raises(IdentifierLeak, match="ID"):
        check_no_leak([{"resourceType": "Patient", "id": "12345678"}], PHI)


def test_hex_ids_containing_digits_are_not_leaks():
    resource = _obs(subject={"reference": "Patient/0f4711ab12345678"})
    resource["id"] = "a4711b"
    check_no_leak([resource], PHI)


def test_pseudonym_identifier_is_treated_as_a_token():
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "x",
        "identifier": [{"system": PSEUDONYM_SYSTEM, "value": "9a4711"}],
    }
    check_no_leak([patient], PHI)
    patient["identifier"][0]["system"] = "urn:mrn"
    with pytest.raises(IdentifierLeak):
        check_no_leak([patient], PHI)


def test_element_name_that_is_a_value_is_not_echoed_in_the_path():
    with pytest.raises(IdentifierLeak) as info:
        check_no_leak([_obs(Anna="x")], PHI)
    assert "anna" not in str(info.value).casefold()


def test_iso_dates_are_left_to_the_scrubber_but_raw_forms_are_checked():
    check_no_leak([_obs(valueString="seen 2024-03-05, 2024-03-05T08:30")], {"2024-03-05": "DATE"})
    with pytest.raises(IdentifierLeak, match="DATE"):
        check_no_leak([_obs(valueString="seen 20240305")], {"20240305": "DATE"})


def test_short_values_and_bare_years_are_not_searched():
    check_no_leak([_obs(valueString="Ann, 1980 cohort, AB")], {"Ann": "NAME", "1980": "DATE", "AB": "ID"})


def test_no_phi_values_means_no_leak():
    check_no_leak([_obs(valueString="anything")], {})


def test_a_patient_named_like_an_element_is_not_a_leak():
    # A corpus patient's family name is literally "Patient"; `patient` is an element name.
    resource = {"resourceType": "Immunization", "id": "i1", "patient": {"reference": "Patient/abc123"}}
    check_no_leak([resource], {"Patient": "NAME"})
