"""HL7 composite data types to FHIR data types (mapping.hl7.datatypes, numeric, ucum)."""

from __future__ import annotations

import pytest

from mapping.hl7.datatypes import (
    cwe_concept,
    cx_identifier,
    ei_identifier,
    xad_address,
    xpn_name,
    xtn_contact,
)
from mapping.hl7.dtm import zone
from mapping.hl7.numeric import nm_value, parse_number, reference_range, sn_value, unit_parts
from mapping.hl7.parse import Composite, parse
from mapping.ucum import is_plausible_ucum

UTC = zone("UTC")
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
UCUM = "http://unitsofmeasure.org"


def c(raw: str) -> Composite:
    """The first repetition of a field value written as on the wire (default delimiters)."""
    return parse(f"MSH|^~\\&|||||||ZZZ^Z01|1|P|2.5\rZZZ|{raw}").segments[1].first(1)


# -- CX / EI ---------------------------------------------------------------------------------


def test_cx_with_iso_oid_authority():
    identifier = cx_identifier(c("A123^^^EHR LAB&1.11.111.4&ISO^MR^Facility&Oid&ISO"), UTC)
    assert identifier == {
        "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
        "system": "urn:oid:1.11.111.4",
        "value": "A123",
        "assigner": {"display": "EHR LAB"},
    }


def test_cx_with_namespace_only_and_period():
    identifier = cx_identifier(c("1234567^4^M11^test^MR^University Hospital^19241011^19241012"), UTC)
    assert identifier is not None
    assert identifier["system"] == "urn:id:test"
    assert identifier["period"] == {"start": "1924-10-11", "end": "1924-10-12"}


def test_cx_without_authority_and_with_a_local_type():
    assert cx_identifier(c("0000112234^^^^A"), UTC) == {"type": {"text": "A"}, "value": "0000112234"}
    assert cx_identifier(c("123"), UTC) == {"value": "123"}


def test_cx_namespace_with_spaces_becomes_a_valid_uri():
    identifier = cx_identifier(c("9^^^Imaginary Hospital^PI"), UTC)
    assert identifier is not None
    assert identifier["system"] == "urn:id:Imaginary%20Hospital"


def test_cx_national_person_identifier_type():
    identifier = cx_identifier(c("123456782^^^NLMINBIZA^NNNLD"), UTC)
    assert identifier is not None
    assert identifier["type"] == {"coding": [{"system": V2_0203, "code": "NNNLD"}]}


def test_cx_without_value_is_nothing():
    assert cx_identifier(c("^^^HOSP^MR"), UTC) is None


def test_ei_identifier_for_orders():
    assert ei_identifier(c("R-511^NIST Lab Filler"), "FILL") == {
        "type": {"coding": [{"system": V2_0203, "code": "FILL"}]},
        "system": "urn:id:NIST%20Lab%20Filler",
        "value": "R-511",
    }
    placer = ei_identifier(c("986^IA PHIMS^2.16.840.1.114222.4.3.3.5.1.2^ISO"), "PLAC")
    assert placer is not None
    assert placer["system"] == "urn:oid:2.16.840.1.114222.4.3.3.5.1.2"


# -- XPN / XAD / XTN --------------------------------------------------------------------------


def test_xpn_full_name():
    assert xpn_name(c("EVERYMAN&&&&Aniston^ADAM^A^III^Dr.^MD^L"), UTC) == {
        "family": "EVERYMAN",
        "given": ["ADAM", "A"],
        "prefix": ["Dr."],
        "suffix": ["III", "MD"],
        "use": "official",
    }


def test_xpn_uses_and_partial_names():
    assert xpn_name(c("^Jannie^^^^^N"), UTC) == {"given": ["Jannie"], "use": "nickname"}
    assert xpn_name(c("SMITH^^^^^^M"), UTC) == {"family": "SMITH", "use": "maiden"}
    assert xpn_name(c("^^^^^^S"), UTC) is None  # a name type alone is not a name
    assert xpn_name(c("DOE^JOHN^^^^^XYZ"), UTC) == {"family": "DOE", "given": ["JOHN"]}


def test_xad_address_with_street_subcomponents():
    assert xad_address(c("Dorpsweg 16&Dorpsweg&16^^Groningen^^9737AA^NL^M"), UTC) == {
        "line": ["Dorpsweg 16"],
        "city": "Groningen",
        "postalCode": "9737AA",
        "country": "NL",
        "type": "postal",
    }
    assert xad_address(c("&Uhlandstrasse^^Marbach^^71726^DEU"), UTC) == {
        "line": ["Uhlandstrasse"],
        "city": "Marbach",
        "postalCode": "71726",
        "country": "DEU",
    }


def test_xad_use_and_second_line():
    assert xad_address(c("260 GOODWIN CREST DRIVE^APT 2^BIRMINGHAM^AL^35209^^H"), UTC) == {
        "line": ["260 GOODWIN CREST DRIVE", "APT 2"],
        "city": "BIRMINGHAM",
        "state": "AL",
        "postalCode": "35209",
        "use": "home",
    }
    assert xad_address(c("^^^^^^H"), UTC) is None


def test_xtn_old_style_number_takes_the_fields_default_use():
    assert xtn_contact(c("(416)111-1111"), "home") == {
        "system": "phone",
        "value": "(416)111-1111",
        "use": "home",
    }


def test_xtn_v25_parts_and_codes():
    assert xtn_contact(c("^PRN^PH^^^203^2290210"), "home") == {
        "system": "phone",
        "value": "203 2290210",
        "use": "home",
    }
    assert xtn_contact(c("^WPN^PH^^1^555^5550123^12"), None) == {
        "system": "phone",
        "value": "+1 555 5550123 X12",
        "use": "work",
    }
    assert xtn_contact(c("^PRS^CP^^^^^^^^^555-1212"), None) == {
        "system": "phone",
        "value": "555-1212",
        "use": "mobile",
    }


def test_xtn_email():
    assert xtn_contact(c("^NET^Internet^fred@example.org"), "home") == {
        "system": "email",
        "value": "fred@example.org",
    }
    assert xtn_contact(c("^^^jane@example.org"), "home") == {
        "system": "email",
        "value": "jane@example.org",
        "use": "home",
    }


def test_xtn_email_in_the_old_number_component():
    assert xtn_contact(c("fred@example.org^NET^Internet"), None) == {
        "system": "email",
        "value": "fred@example.org",
    }


def test_xtn_without_number_is_nothing():
    assert xtn_contact(c("^PRN^PH"), "home") is None


# -- CWE ----------------------------------------------------------------------------------------


def test_cwe_with_known_systems_and_alternate_coding():
    concept = cwe_concept(c("22314-9^Hepatitis A IgM^LN^HAVM^Hep A IgM antibodies^L^2.52^^Original words"))
    assert concept == {
        "coding": [
            {
                "system": "http://loinc.org",
                "version": "2.52",
                "code": "22314-9",
                "display": "Hepatitis A IgM",
            },
            {"system": "urn:id:L", "code": "HAVM", "display": "Hep A IgM antibodies"},
        ],
        "text": "Original words",
    }


@pytest.mark.parametrize(
    ("system_name", "uri"),
    [
        ("SCT", "http://snomed.info/sct"),
        ("I9CDX", "http://hl7.org/fhir/sid/icd-9-cm"),
        ("I10", "http://hl7.org/fhir/sid/icd-10"),
        ("UCUM", UCUM),
        ("HL70078", "http://terminology.hl7.org/CodeSystem/v2-0078"),
        ("99USL", "urn:id:99USL"),
        ("", None),
    ],
)
def test_cwe_coding_systems(system_name, uri):
    concept = cwe_concept(c(f"X1^Thing^{system_name}"))
    assert concept is not None
    assert concept["coding"][0].get("system") == uri


def test_cwe_text_only():
    assert cwe_concept(c("^Body Height")) == {"text": "Body Height"}
    assert cwe_concept(c("^^^^^^^^Diarrhea, stomach pain")) == {"text": "Diarrhea, stomach pain"}
    assert cwe_concept(c("")) is None


# -- NM / SN / units / ranges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("4.06", 4.06),
        ("221", 221),
        ("-3", -3),
        ("+2.5", 2.5),
        (".5", 0.5),
        ("007", 7),
        ("1e5", None),
        ("nan", None),
    ],
)
def test_parse_number(text, number):
    assert parse_number(text) == number


def test_nm_with_ucum_unit():
    assert nm_value("40.1", c("%")) == {
        "valueQuantity": {"value": 40.1, "unit": "%", "system": UCUM, "code": "%"}
    }
    assert nm_value("0.70", c("[IU]/mL^international unit per milliliter^UCUM")) == {
        "valueQuantity": {
            "value": 0.7,
            "unit": "international unit per milliliter",
            "system": UCUM,
            "code": "[IU]/mL",
        }
    }


def test_nm_with_non_ucum_units_keeps_the_text_only():
    assert nm_value("4.06", c("tera.l-1")) == {"valueQuantity": {"value": 4.06, "unit": "tera.l-1"}}
    assert nm_value("4.2", c("mEq/L^mEq/L^L")) == {"valueQuantity": {"value": 4.2, "unit": "mEq/L"}}


def test_nm_with_another_registered_unit_system():
    assert unit_parts(c("266016^MDC_DIM_MMHG^MDC")) == {
        "unit": "MDC_DIM_MMHG",
        "system": "urn:iso:std:iso:11073:10101",
        "code": "266016",
    }


def test_nm_that_is_not_a_number():
    assert nm_value("<0.5", c("mg/dL")) == {
        "valueQuantity": {"value": 0.5, "comparator": "<", "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}
    }
    assert nm_value("see note", c("")) == {"valueString": "see note"}


def test_sn_quantity_with_and_without_comparator():
    assert sn_value(c("^182"), c("mg/dl")) == {
        "valueQuantity": {"value": 182, "unit": "mg/dl", "system": UCUM, "code": "mg/dl"}
    }
    assert sn_value(c("=^4.2"), c("")) == {"valueQuantity": {"value": 4.2}}
    assert sn_value(c(">=^10"), c("")) == {"valueQuantity": {"value": 10, "comparator": ">="}}


def test_sn_ratio_range_and_text():
    assert sn_value(c("^1^:^128"), c("")) == {
        "valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 128}}
    }
    assert sn_value(c("^2^-^5"), c("mg")) == {
        "valueRange": {
            "low": {"value": 2, "unit": "mg", "system": UCUM, "code": "mg"},
            "high": {"value": 5, "unit": "mg", "system": UCUM, "code": "mg"},
        }
    }
    assert sn_value(c("^2^+"), c("")) == {"valueString": "2 +"}
    assert sn_value(c("<>^3"), c("")) == {"valueString": "<> 3"}
    assert sn_value(c("^abc"), c("")) == {"valueString": "abc"}


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [("3.5-5.0", 3.5, 5.0), ("4.3 to 6.2", 4.3, 6.2), ("70_105", 70, 105), ("(1.6-12.0)", 1.6, 12.0)],
)
def test_reference_range_low_high(text, low, high):
    found = reference_range(text, c("mmol/L"))
    assert found is not None
    assert found["low"]["value"] == low
    assert found["high"]["value"] == high
    assert found["low"]["code"] == "mmol/L"
    assert found["text"] == text


def test_reference_range_text_only():
    assert reference_range("<0.50 IU/mL", c("")) == {"text": "<0.50 IU/mL"}
    assert reference_range("Negative", c("")) == {"text": "Negative"}
    assert reference_range("", c("")) is None


@pytest.mark.parametrize(
    "code",
    [
        "mg/dl",
        "mmol/L",
        "%",
        "fl",
        "g/dL",
        "10*3/uL",
        "10*6/uL",
        "{cells}/uL",
        "pg/{cell}",
        "[IU]/mL",
        "mm[Hg]",
        "/min",
        "kg/m2",
        "s-1",
        "Cel",
        "meq/L",
        "U/l",
        "mL/min/{1.73_m2}",
    ],
)
def test_plausible_ucum(code):
    assert is_plausible_ucum(code)


@pytest.mark.parametrize(
    "code",
    ["k/uL", "M/uL", "tera.l-1", "beats/min", "µg/l", "mEq/L", "IU/L", "MOC", "266016", "per minute", ""],
)
def test_not_plausible_ucum(code):
    assert not is_plausible_ucum(code)
