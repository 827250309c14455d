"""Issue 19: staff and organisations of orders, results, documents and immunizations land where
the IG's segment maps say.

ORC/OBR[ServiceRequest] (requester, its organisation, addresses, telecom, callback number),
OBR[DiagnosticReport] (resultsInterpreter, performers), OBX[Observation] (performers),
TXA[DocumentReference] (author, authenticator), ORC/RXA[Immunization] (performer). Every check
reads the IG's own CSV rows and follows the row's path through the references to the
Practitioner, PractitionerRole and Organization resources of the output; the de-identified
output is then searched for every staff name.
"""

from __future__ import annotations

import csv
import json
import re
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from deid import Vault, deidentify
from mapping import MappedMessage, map_message
from mapping.coverage import MAPPED_FIELDS
from mapping.hl7.datatypes import xad_address, xtn_contact
from mapping.hl7.parse import Composite, Segment, parse
from mapping.orders import CALLBACK_EXTENSION
from tests.corpus import shared_file
from tests.test_mapping_people import nk1_segment, segment_rows

Json = dict[str, Any]
SECRET = b"staff-orders-secret-0123456789ab"
ZONE = ZoneInfo("UTC")


def segment(name: str, values: dict[int, str]) -> str:
    """A segment ``name`` with these fields set (the others empty)."""
    return name + nk1_segment(values)[3:]


# -- the people and organisations ----------------------------------------------------------------

ORDERING = "4455^Ashcombe^Percival^^^Dr^MD^^GENHOSP"  # ORC-12 of order 1 and TXA-9 of the document
OBR_ORDERING = "5566^Thistlewood^Rosalind^^^^MD^^GENHOSP"  # OBR-16 of order 2 (no ORC-12)
INTERPRETER = "1188&Quennell&Odessa&&&&MD&&GENHOSP^20260302080000^20260303080000"
TECHNICIAN = "2299&Bramblett&Ivo&&&&&&GENHOSP"
TRANSCRIPTIONIST = "3377&Fairweather&Opal&&&&&&GENHOSP"
OBSERVER = "7788^Lindqvist^Maren^^^^^^GENHOSP"
DIRECTOR = "6655^Okafor^Bertrand^^^Dr^MD^^GENHOSP"
AUTHENTICATOR = "9911^Pemberton^Clementine^^^^MD^^GENHOSP"
ADMINISTERING = "8822^Villanueva^Esperanza^^^^RN^^GENHOSP"
LAB_XON = "Harbor Reference Lab^L^^^^CLIA&2.16.840.1.113883.4.7&ISO^XX^^^05D0987654"
LAB_CWE = "05D0987654^Harbor Reference Lab^CLIA"
OTHER_LAB_CWE = "11D2233445^Inland Pathology^CLIA"

STAFF_NAMES = [
    "Ashcombe", "Percival", "Thistlewood", "Rosalind", "Quennell", "Odessa", "Bramblett",
    "Fairweather", "Lindqvist", "Maren", "Okafor", "Bertrand", "Pemberton", "Clementine",
    "Villanueva", "Esperanza", "Marchetti", "Gianluca",
]  # fmt: skip

PID = "PID|1||MRN5520011^^^GENHOSP^MR||Hollingsworth^Agatha||19690412|F\r"


def _msh(kind: str, control: str) -> str:
    return f"MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260302091500||{kind}|{control}|P|2.5.1\r"


ORU_OBR = {
    1: "1", 2: "PLC-1^HIS", 3: "FIL-1^LAB", 4: "24331-1^Lipid panel^LN", 7: "20260302080000",
    22: "20260302090000", 25: "F", 32: INTERPRETER, 34: TECHNICIAN,
    35: TRANSCRIPTIONIST,
}  # fmt: skip
_OBX = {2: "NM", 3: "2093-3^Cholesterol^LN", 5: "5.2", 6: "mmol/L^^UCUM", 11: "F", 14: "20260302083000"}
# OBX 1: everything (the OBX-25 VALUED rows); 2: no director (NOT VALUED rows); 3: OBX-15 only.
OBX_FULL = {1: "1", **_OBX, 15: LAB_CWE, 16: OBSERVER, 23: LAB_XON,
            24: "400 Quay Street^^Portland^OR^97201^USA^B", 25: DIRECTOR}  # fmt: skip
OBX_NO_DIRECTOR = {1: "2", **_OBX, 16: OBSERVER, 23: LAB_XON, 24: "400 Quay Street^^Portland^OR^97201^USA^B"}
OBX_PRODUCER = {1: "3", **_OBX, 15: OTHER_LAB_CWE, 16: OBSERVER}
ORU = (
    _msh("ORU^R01^ORU_R01", "CTRL-STF-0001")
    + PID
    + segment("OBR", ORU_OBR) + "\r"
    + "".join(segment("OBX", o) + "\r" for o in (OBX_FULL, OBX_NO_DIRECTOR, OBX_PRODUCER))
)  # fmt: skip

# Order 1: ORC-12/21-24 and OBR-17; order 2: no ORC-12, OBR-16 and ORC-14 (OBR-17 empty).
ORC_FULL = {1: "NW", 2: "PLC-10^HIS", 9: "20260302070000", 12: ORDERING, 14: "^WPN^PH^^1^503^5550188",
            21: "Riverside Clinic^L^^^^GENHOSP^XX^^^RC-77", 22: "18 Elm Court^^Salem^OR^97301^USA^B",
            23: "^WPN^PH^^1^503^5550144", 24: "77 Cedar Lane^^Salem^OR^97302^USA^O"}  # fmt: skip
OBR_CALLBACK = {1: "1", 2: "PLC-10^HIS", 4: "24331-1^Lipid panel^LN", 17: "^WPN^PH^^1^503^5550166"}
ORC_NO_PROVIDER = {1: "NW", 2: "PLC-11^HIS", 14: "^WPN^PH^^1^503^5550177"}
OBR_ORDERING_ONLY = {1: "2", 2: "PLC-11^HIS", 4: "2345-7^Glucose^LN", 16: OBR_ORDERING}
ORM = (
    _msh("ORM^O01^ORM_O01", "CTRL-STF-0002")
    + PID
    + "".join(
        segment(name, fields) + "\r"
        for name, fields in (
            ("ORC", ORC_FULL), ("OBR", OBR_CALLBACK), ("ORC", ORC_NO_PROVIDER), ("OBR", OBR_ORDERING_ONLY)
        )
    )
)  # fmt: skip

TXA = {1: "1", 2: "CN^Consult note", 3: "TX", 6: "20260302100000", 9: ORDERING, 10: AUTHENTICATOR,
       12: "DOC-88^HIS", 17: "AU"}  # fmt: skip
MDM = (
    _msh("MDM^T02^MDM_T02", "CTRL-STF-0003")
    + PID
    + "PV1|1|O\r"
    + segment("TXA", TXA) + "\r"
    + "OBX|1|TX|11488-4^Consult note^LN||Seen today.\r"
)  # fmt: skip

VXU = (
    _msh("VXU^V04^VXU_V04", "CTRL-STF-0004")
    + PID
    + segment("ORC", {1: "RE", 3: "IZ-5^HIS", 12: ORDERING}) + "\r"
    + segment("RXA", {1: "0", 2: "1", 3: "20260301", 5: "08^HepB^CVX", 6: "0.5", 7: "mL^mL^UCUM",
                      10: ADMINISTERING, 15: "LOT-7"}) + "\r"
)  # fmt: skip

# A medication order given at once (segment-driven map): RXO-14 prescriber, ORC-12 orderer.
PRESCRIBER = "3344^Marchetti^Gianluca^^^^MD^^GENHOSP"
RDE = (
    _msh("RDE^O11^RDE_O11", "CTRL-STF-0005")
    + PID
    + segment("ORC", {1: "NW", 2: "RX-3^HIS", 9: "20260302070000", 12: ORDERING}) + "\r"
    + segment("RXO", {1: "197361^Amlodipine 5 MG^RXNORM", 2: "5", 4: "mg^mg^UCUM", 14: PRESCRIBER}) + "\r"
    + segment("RXA", {1: "0", 2: "1", 3: "20260302080000", 5: "197361^Amlodipine 5 MG^RXNORM", 6: "5",
                      7: "mg^mg^UCUM"}) + "\r"
)  # fmt: skip


# -- reading the output along an IG path ---------------------------------------------------------


class Output:
    """A mapped message's resources, for following references."""

    def __init__(self, mapped: MappedMessage) -> None:
        self.mapped = mapped
        self.by_key = {f"{r['resourceType']}/{r['id']}": r for r in mapped.resources}

    def of_type(self, resource_type: str) -> list[Json]:
        return [r for r in self.mapped.resources if r["resourceType"] == resource_type]

    def target(self, reference: Any) -> Json | None:
        """The resource a reference names (a resource already followed to is itself)."""
        if isinstance(reference, dict) and "resourceType" in reference:
            return reference
        if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
            return self.by_key.get(reference["reference"])
        return None


def _split(path: str) -> list[str]:
    """Split an IG path at the dots outside parentheses."""
    steps, depth, current = [], 0, ""
    for char in path:
        if char == "." and depth == 0:
            steps.append(current)
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    return [*steps, current]


def candidates(value: Any, path: str, out: Output) -> list[Any]:
    """Every value an IG path can name: ``a[2].b`` is the 2nd item (1-based); a list met without
    an index gives any of its items, and so does ``extension[n]`` (the IG numbers the extensions
    a resource could carry in all, an output has only those it was sent); ``a(Type.path)``
    follows the reference in ``a`` to a resource of that type and reads ``path`` in it
    (``a(Type)``: the resource itself)."""
    found = [value]
    for step in _split(path.strip()):
        match = re.fullmatch(r"(\w+)(?:\[(\d+)\])?(?:\((.*)\))?", step)
        assert match, path
        name, index, inner = match[1], match[2], match[3]
        following: list[Any] = []
        for item in found:
            member = item.get(name) if isinstance(item, dict) else None
            items = member if isinstance(member, list) else [member]
            if index is not None and name != "extension":
                items = items[int(index) - 1 : int(index)]
            following.extend(i for i in items if i is not None)
        if inner is not None:
            following = [v for ref in following for v in _inside(ref, inner, out)]
        found = following
    return found


def _inside(reference: Any, inner: str, out: Output) -> list[Any]:
    resource_type, _, rest = inner.partition(".")
    resource_type = re.sub(r"\[\d+\]$", "", resource_type)
    target = out.target(reference)
    if target is None or target["resourceType"] != resource_type:
        return []
    return candidates(target, rest, out) if rest else [target]


def _practitioner(value: Any, out: Output) -> Json | None:
    """The Practitioner a value is, or refers to, or whose role refers to."""
    value = out.target(value)
    if isinstance(value, dict) and value.get("resourceType") == "PractitionerRole":
        value = out.target(value.get("practitioner"))
    return value if isinstance(value, dict) and value.get("resourceType") == "Practitioner" else None


def _names(practitioner: Json | None, family: str, number: str) -> bool:
    if practitioner is None:
        return False
    identifiers = [i.get("value") for i in practitioner.get("identifier", [])]
    return practitioner["name"][0]["family"] == family and number in identifiers


def holds(value: Any, row: dict[str, str], field: Composite, out: Output) -> bool:
    """Whether ``value`` (at the row's path) is what the row's datatype map makes of ``field``."""
    if row["assign"]:
        return bool(value == row["assign"])
    kind = row["map"]
    if row["path"].endswith(".url"):
        return bool(value == CALLBACK_EXTENSION)  # OBR-17's row names no url (see mapping.orders)
    if kind in ("XCN[Practitioner]", "XCN[PractitionerRole]"):
        return _names(_practitioner(value, out), field.get(2), field.get(1))
    if kind == "NDL[PractitionerRole]":
        role = out.target(value)
        return (
            role is not None
            and role["resourceType"] == "PractitionerRole"
            and _names(_practitioner(role, out), field.get(1, 2), field.get(1, 1))
            and (not field.get(2) or role["period"]["start"].startswith(field.get(2)[:4]))
        )
    if kind == "XON[Organization]":
        found = out.target(value)
        return found is not None and found.get("name") == field.get(1)
    if kind == "CWE[Organization]":
        found = out.target(value)
        return (
            found is not None
            and found.get("name") == field.get(2)
            and found["identifier"][0]["value"] == field.get(1)
        )
    if kind == "XAD[Address]":
        return bool(value == xad_address(field, ZONE))
    if kind == "XTN[ContactPoint]":
        contact = xtn_contact(field, None)
        return isinstance(value, dict) and contact is not None and value.get("value") == contact["value"]
    raise AssertionError(f"no check for {kind}: {row}")


STAFF_FIELDS = {"XCN", "XON", "NDL", "XAD", "XTN", "CWE"}


def staff_rows(name: str, fields: set[str] | None = None) -> list[dict[str, str]]:
    """The IG rows of the staff and organisation fields of one segment map (CWE only: OBX-15),
    with the computable condition ("IF OBX-25 VALUED", column 7) as ``condition``."""
    path = shared_file("spec", "v2-to-fhir", "segments", f"HL7 Segment - FHIR R4_ {name}.csv")
    with path.open(encoding="utf-8") as handle:
        conditions = [r[6].strip() for r in list(csv.reader(handle))[2:] if len(r) > 16 and r[9].strip()]
    rows = [{**r, "condition": c} for r, c in zip(segment_rows(name), conditions, strict=True)]
    return [
        r
        for r in rows
        if r["v2type"] in STAFF_FIELDS
        and (r["v2type"] != "CWE" or r["map"] == "CWE[Organization]")
        and (fields is None or r["field"] in fields)
    ]


def check_rows(rows: list[dict[str, str]], resource: Json, seg: Segment, out: Output) -> set[str]:
    """Assert every row holds; the fields checked."""
    checked = set()
    for row in rows:
        number = int(row["field"].split("-")[1])
        values = candidates(resource, row["path"], out)
        assert any(holds(v, row, seg.first(number), out) for v in values), (row, values)
        checked.add(row["field"])
    return checked


def _segments(text: str, name: str) -> list[Segment]:
    return [s for s in parse(text).segments if s.name == name]


def _valued(row: dict[str, str], seg: Segment) -> bool:
    """Whether the row's condition ("IF OBX-25 VALUED", "IF OBR-17 NOT VALUED") holds for ``seg``."""
    match = re.fullmatch(r"IF (\w+)-(\d+) (NOT )?VALUED", row["condition"])
    if match is None:
        return True
    return bool(seg.raw(int(match[2]))) != bool(match[3])


# -- the mapped messages -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oru() -> Output:
    return Output(map_message(ORU))  # validates every resource against the R4B models


@pytest.fixture(scope="module")
def orm() -> Output:
    return Output(map_message(ORM))


@pytest.fixture(scope="module")
def mdm() -> Output:
    return Output(map_message(MDM))


@pytest.fixture(scope="module")
def vxu() -> Output:
    return Output(map_message(VXU))


@pytest.fixture(scope="module")
def rde() -> Output:
    return Output(map_message(RDE))


def test_every_obr_diagnostic_report_row_lands_where_the_ig_says(oru):
    (report,) = oru.of_type("DiagnosticReport")
    rows = staff_rows("OBR[DiagnosticReport] - OBR")
    assert check_rows(rows, report, _segments(ORU, "OBR")[0], oru) == {"OBR-32", "OBR-34", "OBR-35"}
    # A second technician in OBR-34 is a performer too, with the same function (the IG's
    # performer[1]/[2] numbering assumes one of each).
    two = Output(map_message(ORU.replace(TECHNICIAN, f"{TECHNICIAN}~1234&Crowther&Leopold")))
    (report,) = two.of_type("DiagnosticReport")
    functions = [p["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] for p in report["performer"]]
    assert functions == ["SPRF", "SPRF", "TRANS"]
    second = _practitioner(report["performer"][1], two)
    assert second is not None and second["name"][0]["family"] == "Crowther"


def test_every_obx_observation_row_lands_where_the_ig_says(oru):
    observations = oru.of_type("Observation")
    obx = _segments(ORU, "OBX")
    rows = staff_rows("OBX[Observation] - OBX")
    checked = set()
    for observation, seg in zip(observations, obx, strict=True):
        wanted = [r for r in rows if _valued(r, seg) and seg.raw(int(r["field"].split("-")[1]))]
        # OBX-15 takes the performer[2] slot only when OBX-23/25 leave it free (the third OBX).
        wanted = [r for r in wanted if r["field"] != "OBX-15" or not seg.raw(23)]
        checked |= check_rows(wanted, observation, seg, oru)
    assert checked == {"OBX-15", "OBX-16", "OBX-23", "OBX-24", "OBX-25"}


def test_the_lab_sent_as_a_code_and_as_a_name_is_one_organization(oru):
    first = oru.of_type("Observation")[0]
    role = oru.target(first["performer"][1])
    assert role is not None and role["resourceType"] == "PractitionerRole"
    # OBX-15 (CLIA code) names the OBX-23 laboratory (XON.10 with CLIA authority): no third performer.
    assert len(first["performer"]) == 2
    labs = [o for o in oru.of_type("Organization") if o.get("name") == "Harbor Reference Lab"]
    assert len(labs) == 1 and role["organization"] == {"reference": f"Organization/{labs[0]['id']}"}


def test_every_orc_and_obr_service_request_row_lands_where_the_ig_says(orm):
    orders = orm.of_type("ServiceRequest")
    orcs, obrs = _segments(ORM, "ORC"), _segments(ORM, "OBR")
    assert len(orders) == 2
    checked = set()
    for order, orc, obr in zip(orders, orcs, obrs, strict=True):
        for name, seg in (("ORC[ServiceRequest] - ORC", orc), ("OBR[ServiceRequest] - OBR", obr)):
            rows = staff_rows(name)
            # "IF OBR-17 NOT VALUED" reads the order's OBR, "IF ORC-12 NOT VALUED" its ORC.
            wanted = [
                r
                for r in rows
                if seg.raw(int(r["field"].split("-")[1]))
                and _valued(r, obr if "OBR-" in r["condition"] else orc)
            ]
            checked |= check_rows(wanted, order, seg, orm)
    assert checked == {f"ORC-{n}" for n in (12, 14, 21, 22, 23, 24)} | {"OBR-16", "OBR-17"}


def test_orc_14_gives_way_to_obr_17(orm):
    first, second = orm.of_type("ServiceRequest")
    assert "extension" not in first  # OBR-17 valued: ORC-14 is not mapped
    assert first["requester"]["extension"][0]["valueContactPoint"]["value"] == "+1 503 5550166"
    assert second["extension"][0]["valueContactPoint"]["value"] == "+1 503 5550177"
    assert second["requester"]["reference"].startswith("Practitioner/")  # OBR-16, no ORC-12/21


def test_every_txa_row_lands_where_the_ig_says(mdm):
    (document,) = mdm.of_type("DocumentReference")
    rows = staff_rows("TXA[DocumentReference] - Sheet1")
    assert check_rows(rows, document, _segments(MDM, "TXA")[0], mdm) == {"TXA-9", "TXA-10"}


def test_every_immunization_row_lands_where_the_ig_says(vxu):
    (immunization,) = vxu.of_type("Immunization")
    checked = check_rows(staff_rows("ORC[Immunization] - ORC"), immunization, _segments(VXU, "ORC")[0], vxu)
    rows = staff_rows("RXA[Immunization] - RXA", {"RXA-10"})  # RXA-28 is a Location's address
    checked |= check_rows(rows, immunization, _segments(VXU, "RXA")[0], vxu)
    assert checked == {"ORC-12", "RXA-10"}
    functions = {
        p["function"]["coding"][0]["code"]: p["actor"]["reference"] for p in immunization["performer"]
    }
    assert functions["OP"].startswith("PractitionerRole/") and functions["AP"].startswith("Practitioner/")


def test_every_medication_row_lands_where_the_ig_says(rde):
    (request,) = rde.of_type("MedicationRequest")
    (administration,) = rde.of_type("MedicationAdministration")
    rxo, orc = _segments(RDE, "RXO")[0], _segments(RDE, "ORC")[0]
    checked = check_rows(staff_rows("RXO[MedicationRequest] - Sheet1", {"RXO-14"}), request, rxo, rde)
    rows = staff_rows("ORC[MedicationAdministration] - Sheet1")
    checked |= check_rows(rows, administration, orc, rde)
    assert checked == {"RXO-14", "ORC-12"}
    # Without RXO-14 the ORC-12 orderer is the requester.
    alone = Output(map_message(RDE.replace(PRESCRIBER, "")))
    (request,) = alone.of_type("MedicationRequest")
    requester = _practitioner(request["requester"], alone)
    assert requester is not None and requester["name"][0]["family"] == "Ashcombe"


def test_the_same_physician_is_one_practitioner_in_every_message(orm, mdm, vxu):
    def ashcombe(out: Output) -> str:
        found = [str(p["id"]) for p in out.of_type("Practitioner") if p["name"][0]["family"] == "Ashcombe"]
        assert len(found) == 1
        return found[0]

    assert ashcombe(orm) == ashcombe(mdm) == ashcombe(vxu)
    again = Output(map_message(ORM.replace("CTRL-STF-0002", "CTRL-STF-0099")))
    assert {p["id"] for p in again.of_type("Practitioner")} == {p["id"] for p in orm.of_type("Practitioner")}


def test_mapped_fields_are_not_reported(oru, orm, mdm, vxu, rde):
    staff_fields = {
        "OBR:DiagnosticReport": {32, 34, 35},
        "OBX:Observation": {15, 16, 23, 24, 25},
        "ORC:ServiceRequest": {12, 14, 21, 22, 23, 24},
        "OBR:ServiceRequest": {16, 17},
        "TXA": {9, 10},
        "ORC:Immunization": {12},
        "RXA": {10},
        "ORC:Medication": {12},
        "RXO": {14},
    }
    for role, fields in staff_fields.items():
        assert fields <= MAPPED_FIELDS[role], role
    for out in (oru, orm, mdm, vxu, rde):
        reported = {(item.segment, n) for item in out.mapped.report for n in item.fields}
        assert not {r for r in reported if r[0] in ("ORC", "OBR", "OBX", "TXA", "RXA", "RXO")}, reported


# -- de-identification ---------------------------------------------------------------------------


@pytest.mark.parametrize("message", [ORU, ORM, MDM, VXU, RDE], ids=["ORU", "ORM", "MDM", "VXU", "RDE"])
def test_deidentified_output_names_no_staff_and_keeps_references_resolvable(message):
    mapped = map_message(message)
    keys = {pid: (k.authority, k.value) for pid, k in mapped.patient_keys.items()}
    result = deidentify(mapped.resources, keys, mapped.phi_values, Vault(SECRET), validate=True)
    resources = [r.resource for r in result.resources]
    text = json.dumps(resources, ensure_ascii=False).lower()
    for name in STAFF_NAMES:
        assert name.lower() not in text, name
    for phone in ("5550188", "5550144", "5550166", "5550177", "cedar lane", "quay street", "elm court"):
        assert phone not in text, phone
    present = {f"{r['resourceType']}/{r['id']}" for r in resources}
    references = re.findall(r'"reference": "([^"]+)"', json.dumps(resources))
    assert references and set(references) <= present
    staff_links = {
        "ServiceRequest": "requester",
        "DiagnosticReport": "resultsInterpreter",
        "Observation": "performer",
        "DocumentReference": "author",
        "Immunization": "performer",
        "MedicationRequest": "requester",
        "MedicationAdministration": "performer",
    }

    def linked(found: list[Json]) -> list[str]:
        return [r["resourceType"] for r in found if staff_links.get(r["resourceType"], "") in r]

    # Every staff reference the mapper made survives de-identification (pointing at a kept resource).
    assert linked(resources) == linked(mapped.resources) != []
