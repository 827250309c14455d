"""Issue 19: allergies, diagnoses, procedures and the insured land where the IG says.

AL1 -> AllergyIntolerance, DG1 -> Condition and Encounter.diagnosis, PR1 -> Procedure (with
its Practitioners), IN1-10/11 -> Coverage.policyHolder, IN1-16 -> Coverage.subscriber. Every
check reads the IG's own CSV rows and finds the value the row names at the row's FHIR path,
following references (``asserter(Practitioner)``, ``diagnosis.condition(Condition.code)``),
in an ADT^A01 and in a DFT^P03 (the segment-driven map); the set of rows checked is the IG's
minus ``NOT_MAPPED``. The de-identified output is then searched for every staff and insured name.
"""

from __future__ import annotations

import csv
import json
import re
from datetime import datetime, timedelta
from typing import Any

import pytest

from deid import Vault, deidentify
from mapping import MappedMessage, clinical, map_message
from mapping.coverage import report_lines
from mapping.hl7.datatypes import cwe_concept, cx_identifier, xad_address, xpn_name
from mapping.hl7.dtm import to_date, to_date_time
from mapping.hl7.parse import Segment, parse
from tests.corpus import shared_file
from tests.test_mapping_people import concept_map, resolve, vocab_zone

Json = dict[str, Any]
SECRET = b"clinical-test-secret-0123456789a"


def segment(name: str, values: dict[int, str]) -> str:
    """A segment with these fields set (the others empty)."""
    fields = [""] * (max(values) + 1)
    for number, value in values.items():
        fields[number] = value
    return name + "|".join(fields)


AL1 = {1: "1", 2: "FA", 3: "256349002^Peanut^SCT", 4: "SV", 5: "Hives~Wheezing", 6: "20190615"}
DG1_FIRST = {
    1: "1",
    2: "I10",
    3: "J18.9^Pneumonia, unspecified organism^I10",
    4: "Community-acquired pneumonia",
    5: "202603010930",
    6: "A^Admitting^HL70052",
    15: "1",
    16: "4471^Marchetti^Ilaria^^^Dr^MD^^GENHOSP",
    19: "202603011015",
    20: "DX-1001^GENHOSP",
}
# The second diagnosis was sent in error (DG1-21 "D") and is due to the first (DG1-22).
DG1_SECOND = {
    1: "2",
    3: "J96.00^Acute respiratory failure^I10",
    4: "Respiratory failure",
    5: "202603011200",
    6: "W^Working^HL70052",
    15: "2",
    16: "5582^Okafor^Benedikt^^^^^^GENHOSP",
    19: "202603011230",
    20: "DX-1002^GENHOSP",
    21: "D",
    22: "DX-1001^GENHOSP",
}
PR1_PARENT = {
    1: "1",
    3: "0BH17EZ^Insertion of endotracheal airway^ICD10PCS",
    5: "202603011200",
    19: "PROC-2000^GENHOSP",
}
PR1 = {
    1: "2",
    2: "C4",
    3: "31500^Intubation^C4",
    4: "Emergency intubation",
    5: "202603011210",
    6: "D^Diagnostic^HL70230",
    7: "20",
    8: "6613^Lindqvist^Saoirse^^^^^^GENHOSP",
    9: "GA^General^HL70019",
    10: "30",
    11: "7724^Abernathy^Quentin^^^^^^GENHOSP",
    12: "8835^Villanueva^Thaddeus^^^^^^GENHOSP",
    15: "J96.00^Acute respiratory failure^I10",
    16: "59^Distinct procedural service^CPT4",
    19: "PROC-2001^GENHOSP",
    20: "A",
    23: "OR^3^^GENHOSP",
    25: "PROC-2000^GENHOSP",
}
IN1 = {
    1: "1",
    2: "PLN-SILVER^Silver Plan^L",
    3: "INS-88^^^NAIC^NIIP",
    4: "Harborline Health Assurance",
    10: "EMPGRP-5521^^^HRSYS^EI",
    11: "Calloway Freight Lines",
    16: "Fairweather^Desmond^R",
    17: "SPO^Spouse^HL70063",
    18: "19650923",
    19: "48 Quarry Lane^^Dunmore^PA^18512",
}
# Staff and the insured spouse, in the forms a leak would take.
IDENTIFYING = [
    "Marchetti", "Ilaria", "Okafor", "Benedikt", "Lindqvist", "Saoirse", "Abernathy", "Quentin",
    "Villanueva", "Thaddeus", "Desmond", "Quarry Lane", "18512", "19650923", "1965-09-23",
]  # fmt: skip


def message(kind: str, *, pr1: dict[int, str] = PR1, in1: dict[int, str] = IN1) -> str:
    return "\r".join(
        [
            f"MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260301130000||{kind}|CTRL-CLIN-0001|P|2.5.1",
            "PID|1||MRN5510033^^^GENHOSP^MR||Fairweather^Odalys||19680412|F",
            "PV1|1|I|W2^201^A^GENHOSP||||||||||||||||VN77102^^^GENHOSP^VN",
            segment("AL1", AL1),
            segment("DG1", DG1_FIRST),
            segment("DG1", DG1_SECOND),
            segment("PR1", PR1_PARENT),
            segment("PR1", pr1),
            segment("IN1", in1),
        ]
    )


KINDS = ["ADT^A01^ADT_A01", "DFT^P03^DFT_P03"]


# -- the IG's rows -------------------------------------------------------------------------


def ig_rows(sheet: str) -> list[dict[str, str]]:
    """The rows of an IG segment map that name a FHIR path, with their computable condition."""
    path = shared_file("spec", "v2-to-fhir", "segments", f"HL7 Segment - FHIR R4_ {sheet}.csv")
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[2:]
    return [
        {
            "sheet": sheet,
            "field": r[1].strip(),
            "v2type": r[3].strip(),
            "if": r[6].strip(),
            "path": r[9].strip(),
            "map": r[14].strip(),
            "vocabulary": r[15].strip(),
            "assign": r[16].strip().strip('"'),
        }
        for r in rows
        if len(r) > 16 and r[9].strip()
    ]


AL1_SHEET = "AL1[AllergyIntolerance] - AL1"
DG1_CONDITION = "DG1[Condition] - Sheet1"
DG1_ENCOUNTER = "DG1[Encounter] - Sheet1"
PR1_SHEET = "PR1[Procedure] - PR1[Procedure]"
IN1_SHEET = "IN1[Coverage] - Sheet1"
# The IN1 rows of this issue: policyHolder (IN1-10/11) and subscriber (IN1-16); the others (and
# IN1-10 as the subscriberId extension) are checked by test_mapping_coverage_in1.
IN1_PATHS_HERE = ("policyHolder", "subscriber")

# IG rows deliberately not mapped, and why.
NOT_MAPPED = {
    # The IG's alternative to criticality, "if severity was not used equivalent to criticality":
    # HL7 v2 defines AL1-4 as the allergy's overall severity, which is what criticality is.
    (AL1_SHEET, "AL1-4", "reaction.severity"),
}
# The DG1[Condition] sheet names the asserted-date extension by a URL that does not exist; its
# DG1[Encounter] sheet (and FHIR) name the extension's canonical URL, which is what is mapped.
URL_TYPOS = {"http://www.hl7.org/fhir/extension-condition-asserteddate": clinical.ASSERTED_DATE}
# Rows whose FHIR path is not a path (a spelling of the IG): what they mean in FHIR JSON.
PATH_MEANS = {
    "code[1].value": "code.coding[1].code",  # PR1-16: the modifier joined to the code
}

# Variants of PR1 that make a conditional row's condition true (the main PR1 has PR1-7 and a
# PR1-5 precise to the minute).
PR1_VARIANTS = {
    "IF PR1-7 NOT VALUED": {k: v for k, v in PR1.items() if k != 7},
    "IF PR1-7 VALUED AND PR1-5.5 NOT VALUED": {**PR1, 5: "20260301"},
}


def all_rows() -> list[dict[str, str]]:
    rows = [*ig_rows(AL1_SHEET), *ig_rows(DG1_CONDITION), *ig_rows(DG1_ENCOUNTER), *ig_rows(PR1_SHEET)]
    rows += [r for r in ig_rows(IN1_SHEET) if r["path"].startswith(IN1_PATHS_HERE)]
    return rows


def _row_id(row: dict[str, str]) -> str:
    return f"{row['sheet'].split(' ')[0]}:{row['field']}:{row['path']}:{row['if']}"


# -- reading the output --------------------------------------------------------------------


def _find(resources: list[Json], reference: Json, type_name: str) -> Json:
    """The resource a Reference points at: literally, or by identifier (IG EI[Condition])."""
    if "reference" in reference:
        kind, _, rid = reference["reference"].partition("/")
        assert kind == type_name, reference
        return next(r for r in resources if r["resourceType"] == kind and r["id"] == rid)
    value = reference["identifier"]["value"]
    found = [
        r
        for r in resources
        if r["resourceType"] == type_name and any(i.get("value") == value for i in r.get("identifier", []))
    ]
    assert len(found) == 1, reference
    return found[0]


def _extension_step(path: str) -> str | None:
    match = re.search(r"extension\[\d+\]", path)
    return match[0] if match else None


def _extension_urls(rows: list[dict[str, str]]) -> dict[tuple[str, str, str], str]:
    """(sheet, field, "extension[n]") -> the url the IG assigns that extension."""
    urls = {}
    for row in rows:
        step = _extension_step(row["path"])
        if step and re.search(r"\.(url|uri)\)?$", row["path"]) and row["assign"]:
            urls[(row["sheet"], row["field"], step)] = URL_TYPOS.get(row["assign"], row["assign"])
    return urls


def evaluate(resource: Json, path: str, resources: list[Json], ext_url: str | None) -> Any:
    """The value at an IG path, following ``element(Type.rest)`` into the referenced resource;
    ``extension[n]`` is the extension with the row's url (the IG numbers them per sheet)."""
    path = PATH_MEANS.get(path, path)
    head, paren, inner = path.partition("(")
    if ext_url is not None and "extension[" in head:
        before, _, after = re.split(r"(extension\[\d+\])", path, maxsplit=1)
        holder = resolve(resource, before.rstrip(".")) if before else resource
        if not isinstance(holder, dict):  # a primitive's extension: "_category" in FHIR JSON
            *parents, primitive = before.rstrip(".").split(".")
            holder = resolve(resource, ".".join([*parents, "_" + primitive]))
        chosen = next(e for e in holder["extension"] if e["url"] == ext_url)
        rest = re.sub(r"^\.", "", after).replace("uri", "url")
        return evaluate(chosen, rest, resources, None) if rest else chosen
    head = re.sub(r"coding\.uri$", "coding.system", head)
    value = resolve(resource, head.rstrip("."))
    if not paren:
        return value
    inner = re.sub(r"^\[\d+\]", "", inner.removesuffix(")"))
    type_name, _, rest = inner.partition(".")
    target = _find(resources, value, type_name)
    return evaluate(target, rest, resources, ext_url) if rest else target


def _dtm(seg: Segment, number: int) -> str | None:
    return to_date_time(seg.value(number), vocab_zone())


def _concept_target(vocabulary: str, code: str) -> tuple[str, str, str]:
    return concept_map(vocabulary)[code]


def check(row: dict[str, str], seg: Segment, actual: Any, kind: str) -> None:
    """Assert that ``actual`` (found at the row's path) is what the row says it holds."""
    field = row["field"]
    number = int(field.split("-")[1]) if "-" in field else 0
    where = (row["sheet"], field, row["path"], actual)
    if row["map"] == "XCN[Practitioner]":
        assert actual["resourceType"] == "Practitioner", where
        assert actual["identifier"][0]["value"] == seg.value(number, 1), where
        assert actual["name"][0]["family"] == seg.value(number, 2), where
    elif row["map"] == "PL[Location]":  # the ward of the theatre: its most specific part names it
        assert actual["resourceType"] == "Location" and actual["mode"] == "instance", where
        assert {"value": seg.value(number, 2)} in actual["identifier"] or any(
            i["value"] == seg.value(number, 2) for i in actual["identifier"]
        ), where
    elif row["map"] == "XON[Organization]":
        assert actual["resourceType"] == "Organization" and actual["name"] == seg.value(number), where
    elif row["path"] == "subscriber(RelatedPerson)":
        assert actual["resourceType"] == "RelatedPerson", where
        assert actual["name"] == [xpn_name(seg.first(16), vocab_zone())]
        assert actual["birthDate"] == to_date(seg.value(18))
        assert actual["address"] == [xad_address(seg.first(19), vocab_zone())]
        assert any(c["code"] == seg.value(17) for c in actual["relationship"][0]["coding"])
    elif row["path"] == "subscriber(Patient)":
        assert actual["resourceType"] == "Patient", where
    elif field == "PR1-16":  # the assignment "PR1-3.1 + ':' + PR1-16.1"
        assert actual == f"{seg.value(3)}:{seg.value(16)}", where
    elif field == "PR1-7":  # the assignment "Procedure.performedPeriod.start+PR1-7" (minutes)
        start = datetime.fromisoformat(_dtm(seg, 5) or "")
        assert actual == (start + timedelta(minutes=int(seg.value(7)))).isoformat(), where
    elif row["assign"]:
        assert actual == URL_TYPOS.get(row["assign"], row["assign"]), where
    elif field == "PR1":  # status: the message context decides; "unknown" when it is not clear
        assert actual == ("completed" if kind.startswith("DFT") else "unknown"), where
    elif row["map"] in ("CWE[code]", "CWE[Code]"):  # a code through the row's concept map
        assert actual == _concept_target(row["vocabulary"], seg.value(number))[1], where
    elif row["map"] in ("CWE[CodeableConcept]", "CNE[CodeableConcept]"):
        codings = actual["coding"]
        if row["vocabulary"].startswith("AllergenType") or row["vocabulary"].startswith("AllergySeverity"):
            system, code, display = _concept_target(row["vocabulary"], seg.value(number))
            assert {"system": system, "code": code, "display": display} in codings, where
        else:
            wanted = cwe_concept(seg.first(number))
            assert wanted is not None
            if field == "PR1-3" and seg.value(16):  # the PR1-16 row joins the modifier to the code
                wanted["coding"][0]["code"] += ":" + seg.value(16)
            assert all(c in codings for c in wanted["coding"]), where
            if row["vocabulary"]:  # DiagnosisType: the IG's target coding beside the sender's
                target = concept_map(row["vocabulary"]).get(seg.value(number))
                if target is not None:
                    assert {"system": target[0], "code": target[1], "display": target[2]} in codings, where
    elif row["map"] == "CX[Identifier]":
        assert actual == cx_identifier(seg.first(number), vocab_zone()), where
    elif row["map"] == "ST[CodeableConcept]":
        assert actual == seg.value(number), where
    elif row["map"].startswith("EI["):
        # An Identifier, or the resource a reference by identifier names (EI[Condition]).
        identifier = actual["identifier"][0] if "resourceType" in actual else actual
        assert identifier["value"] == seg.value(number), where
    elif row["v2type"] in ("DTM", "DT"):
        assert actual == _dtm(seg, number), where
    elif row["v2type"] == "NM":
        assert actual == int(seg.value(number)), where
    else:
        assert row["v2type"] == "ST", row
        assert actual == seg.value(number), where


# -- the mapped messages -------------------------------------------------------------------


@pytest.fixture(scope="module", params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _segments(text: str, name: str) -> list[Segment]:
    return [s for s in parse(text).segments if s.name == name]


def _of(resources: list[Json], resource_type: str) -> list[Json]:
    return [r for r in resources if r["resourceType"] == resource_type]


def _subject(resources: list[Json], row: dict[str, str], seg: Segment) -> Json:
    """The resource a row's path starts from, for the segment ``seg``."""
    if row["sheet"] == AL1_SHEET:
        (allergy,) = _of(resources, "AllergyIntolerance")
        return allergy
    if row["sheet"] == DG1_ENCOUNTER:
        (encounter,) = _of(resources, "Encounter")
        # Only the diagnosis of this DG1: the one whose Condition carries its DG1-20.
        mine = [
            d
            for d in encounter["diagnosis"]
            if _find(resources, d["condition"], "Condition")["identifier"][0]["value"] == seg.value(20)
        ]
        return {**encounter, "diagnosis": mine}
    if row["sheet"] == DG1_CONDITION:
        return next(c for c in _of(resources, "Condition") if c["identifier"][0]["value"] == seg.value(20))
    if row["sheet"] == PR1_SHEET:
        return next(p for p in _of(resources, "Procedure") if p["identifier"][0]["value"] == seg.value(19))
    (coverage,) = _of(resources, "Coverage")
    return coverage


def _text_for(row: dict[str, str], kind: str) -> tuple[str, Segment]:
    """The message a row is checked in (a variant when its condition needs one) and its segment."""
    if row["sheet"] == PR1_SHEET and row["if"] in PR1_VARIANTS:
        text = message(kind, pr1=PR1_VARIANTS[row["if"]])
        return text, _segments(text, "PR1")[1]
    if row["path"] == "subscriber(Patient)":
        text = message(kind, in1={**IN1, 17: "SEL^Self^HL70063"})
        return text, _segments(text, "IN1")[0]
    text = message(kind)
    name = row["field"].split("-")[0]
    candidates = _segments(text, name)
    if name == "PR1":
        return text, candidates[1]
    if name == "DG1":
        # The first DG1 that values the field (DG1-21/22 only the second does).
        number = int(row["field"].split("-")[1])
        return text, next(s for s in candidates if s.raw(number))
    return text, candidates[0]


def test_every_ig_row_lands_where_the_ig_says(kind):
    rows = all_rows()
    urls = _extension_urls(rows)
    mapped_texts: dict[str, MappedMessage] = {}
    checked = set()
    for row in rows:
        if (row["sheet"], row["field"], row["path"]) in NOT_MAPPED:
            continue
        text, seg = _text_for(row, kind)
        mapped = mapped_texts.setdefault(text, map_message(text))  # validates every resource
        start = _subject(mapped.resources, row, seg)
        step = _extension_step(row["path"])
        url = urls[(row["sheet"], row["field"], step)] if step else None
        check(row, seg, evaluate(start, row["path"], mapped.resources, url), kind)
        checked.add(_row_id(row))
    assert checked == {_row_id(r) for r in rows if (r["sheet"], r["field"], r["path"]) not in NOT_MAPPED}
    assert len(checked) == len(rows) - len(NOT_MAPPED)


def test_the_rows_checked_cover_every_segment_map():
    sheets = {r["sheet"] for r in all_rows()}
    assert sheets == {AL1_SHEET, DG1_CONDITION, DG1_ENCOUNTER, PR1_SHEET, IN1_SHEET}
    fields = {r["field"] for r in all_rows() if (r["sheet"], r["field"], r["path"]) not in NOT_MAPPED}
    assert {
        "AL1-2", "AL1-3", "AL1-4", "AL1-5", "AL1-6", "DG1-3", "DG1-6", "DG1-15", "DG1-16", "DG1-22",
        "PR1-5", "PR1-7", "PR1-8", "PR1-11", "PR1-12", "PR1-16", "PR1-25", "IN1-11", "IN1-16",
    } <= fields  # fmt: skip


# -- the IG's concept maps -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "table", "column"),
    [
        ("AllergenType[AllergyIntoleranceCategory]", clinical.ALLERGY_CATEGORY, 1),
        ("AllergenType[AllergyIntoleranceOriginalCategory]", clinical.ALLERGY_CATEGORY_ORIGINAL, 2),
        ("AllergyType", clinical.ALLERGY_TYPE, 1),
        ("AllergySeverity[AllergyIntolerance.criticality]", clinical.CRITICALITY, 1),
        ("AllergySeverity[AllergyIntolerance.criticality-original]", clinical.CRITICALITY_ORIGINAL, 2),
    ],
)
def test_allergy_vocabularies_are_the_ig_concept_maps(name, table, column):
    assert table == {code: target[column] for code, target in concept_map(name).items()}


def test_diagnosis_type_is_the_ig_concept_map():
    assert concept_map("DiagnosisType") == clinical.DIAGNOSIS_TYPE


# -- behaviour around the rows -------------------------------------------------------------


@pytest.fixture(scope="module")
def mapped(kind: str) -> MappedMessage:
    return map_message(message(kind))


def test_the_encounter_lists_both_diagnoses_in_order(mapped):
    (encounter,) = _of(mapped.resources, "Encounter")
    conditions = {c["id"]: c for c in _of(mapped.resources, "Condition")}
    ranks = [(d["rank"], conditions[d["condition"]["reference"].split("/")[1]]["code"]["text"])
             for d in encounter["diagnosis"]]  # fmt: skip
    assert ranks == [(1, "Community-acquired pneumonia"), (2, "Respiratory failure")]
    deleted = next(c for c in conditions.values() if c["identifier"][0]["value"] == "DX-1002")
    assert deleted["verificationStatus"]["coding"][0]["code"] == "entered-in-error"


def test_only_the_fields_without_a_rule_are_reported(mapped):
    lines = [line for line in report_lines(mapped) if line.startswith(("AL1", "DG1", "PR1", "IN1"))]
    assert lines == [
        "DG1 (segment 4): fields DG1-2 not mapped",
        "PR1 (segment 7): fields PR1-2, PR1-9, PR1-10, PR1-20 not mapped",
    ]


def test_a_resent_visit_updates_the_same_resources(kind):
    first = map_message(message(kind))
    again = map_message(
        message(kind).replace("CTRL-CLIN-0001", "CTRL-CLIN-0002").replace("ADT^A01", "ADT^A08")
    )
    for resource_type in ("AllergyIntolerance", "Condition", "Procedure", "Practitioner", "RelatedPerson"):
        assert [r["id"] for r in _of(first.resources, resource_type)] == [
            r["id"] for r in _of(again.resources, resource_type)
        ], resource_type


def test_a_diagnosis_without_a_visit_is_a_condition_and_its_visit_fields_are_reported():
    text = "\r".join(line for line in message(KINDS[0]).split("\r") if not line.startswith("PV1"))
    mapped = map_message(text)
    assert len(_of(mapped.resources, "Condition")) == 2
    assert not _of(mapped.resources, "Encounter")
    lines = "\n".join(report_lines(mapped))
    assert "DG1 (segment 3): fields DG1-2, DG1-6, DG1-15 not mapped" in lines


def test_a_diagnosis_in_text_only_and_an_unknown_allergen_type():
    text = message(KINDS[0]).replace(segment("DG1", DG1_FIRST), "DG1|1||^^|Chest pain, unclear cause")
    text = text.replace("AL1|1|FA|", "AL1|1|MC|")
    mapped = map_message(text)
    assert {"text": "Chest pain, unclear cause"} in [c["code"] for c in _of(mapped.resources, "Condition")]
    (allergy,) = _of(mapped.resources, "AllergyIntolerance")
    assert "category" not in allergy and "type" not in allergy  # MC: no target in either concept map


def test_guarantor_and_in2_values_are_identifying_values():
    gt1 = {
        1: "1", 3: "Brightwater^Linnea", 4: "Brightwater^Osgood", 16: "Pembrook^Alder", 19: "EMP-7781",
        45: "Strand^Maelis", 46: "^PRN^PH^^1^570^5550188",
    }  # fmt: skip
    in2 = {1: "EID-4410", 2: "555-22-3333", 7: "Vantreight^Oriel", 61: "MBR-99120"}
    text = "\r".join([message(KINDS[0]), segment("GT1", gt1), segment("IN2", in2)])
    values = map_message(text).phi_values
    for value in (
        "Brightwater", "Osgood", "Pembrook", "EMP-7781", "Maelis", "5550188", "EID-4410", "555-22-3333",
        "Vantreight", "MBR-99120", "Lindqvist", "48 Quarry Lane", "EMPGRP-5521",
    ):  # fmt: skip
        assert value in values, value


# -- de-identification ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def deidentified(mapped: MappedMessage) -> list[Json]:
    keys = {pid: (k.authority, k.value) for pid, k in mapped.patient_keys.items()}
    result = deidentify(mapped.resources, keys, mapped.phi_values, Vault(SECRET), validate=True)
    return [r.resource for r in result.resources]


def test_deidentified_output_holds_no_staff_or_subscriber_name(deidentified):
    text = json.dumps(deidentified, ensure_ascii=False).lower()
    for value in IDENTIFYING:
        assert value.lower() not in text, value
    assert "dx-1001" not in text and "proc-2001" not in text  # the sender's record numbers


def test_deidentified_resources_keep_their_clinical_links(deidentified):
    ids = {(r["resourceType"], r["id"]) for r in deidentified}
    (encounter,) = _of(deidentified, "Encounter")
    for diagnosis in encounter["diagnosis"]:
        assert ("Condition", diagnosis["condition"]["reference"].split("/")[1]) in ids
    assert {d["rank"] for d in encounter["diagnosis"]} == {1, 2}
    for condition in _of(deidentified, "Condition"):
        assert "identifier" not in condition and "extension" not in condition
        assert ("Practitioner", condition["asserter"]["reference"].split("/")[1]) in ids
    procedure = next(p for p in _of(deidentified, "Procedure") if "performer" in p)
    assert [p.get("function", {}).get("coding", [{}])[0].get("code") for p in procedure["performer"]] == [
        "88189002", "304292004", None,
    ]  # fmt: skip
    assert procedure["category"] and procedure["reasonCode"] and "partOf" not in procedure
    (coverage,) = _of(deidentified, "Coverage")
    assert ("Organization", coverage["policyHolder"]["reference"].split("/")[1]) in ids
    assert ("RelatedPerson", coverage["subscriber"]["reference"].split("/")[1]) in ids
    for practitioner in _of(deidentified, "Practitioner"):
        assert set(practitioner) <= {"resourceType", "id", "meta", "active", "qualification"}


@pytest.mark.parametrize(("minutes", "when"), [("99999999999999", "202603011210"), ("30", "99991231235959")])
def test_minutes_past_the_calendar_leave_the_start_only(minutes, when):
    mapped = map_message(message(KINDS[0], pr1={**PR1, 5: when, 7: minutes}))
    procedure = next(
        p for p in _of(mapped.resources, "Procedure") if p["identifier"][0]["value"] == "PROC-2001"
    )
    assert "performedPeriod" not in procedure and procedure["performedDateTime"].startswith(when[:4])
