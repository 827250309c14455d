"""Partial restatements (an ORU's PID, a sparse PV1) update a stored Patient or Encounter
element by element; other resources are replaced whole."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from core.tables import Resource, ResourceHistory
from mapping.updates import merge_update
from tests.deployments import Embedded

STORED = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"versionId": "1"},
    "gender": "female",
    "birthDate": "1966-04-23",
    "deceasedBoolean": False,
    "maritalStatus": {"text": "M"},
}


def test_elements_the_message_lacks_are_kept_and_those_it_has_replace() -> None:
    new = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "x"}, "gender": "male"}
    merged = merge_update(STORED, new)
    assert merged == {**STORED, "gender": "male", "meta": {"versionId": "x"}}


def test_a_choice_element_replaces_the_stored_one_of_another_type() -> None:
    new = {"resourceType": "Patient", "id": "p1", "deceasedDateTime": "2026-03-01"}
    merged = merge_update(STORED, new)
    assert merged["deceasedDateTime"] == "2026-03-01"
    assert "deceasedBoolean" not in merged
    assert merged["maritalStatus"] == {"text": "M"}  # "deceased" prefix only, nothing else


def test_other_types_and_other_ids_are_replaced_whole() -> None:
    observation = {"resourceType": "Observation", "id": "o1", "status": "corrected"}
    assert merge_update({**observation, "valueQuantity": {"value": 1}}, observation) == observation
    other = {"resourceType": "Patient", "id": "p2", "gender": "male"}
    assert merge_update(STORED, other) == other
    assert merge_update(None, other) == other


ADMISSION = (
    "MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260301081500+0800||ADT^A01^ADT_A01|UPD-1|P|2.5.1\r"
    "EVN|A01|20260301081500+0800\r"
    "PID|1||MRN6660101^^^GENHOSP^MR||Doe^Jane||19660412|F|||1 Main St^^Springfield^IL^62704\r"
    "PV1|1|I|W4^412^B^GENHOSP||||9921^Okonkwo^Chidi|||MED||||||||V-6660101\r"
)
LAB = (
    "MSH|^~\\&|LIS|GENHOSP|SIDECAR|GENHOSP|20260302121000+0800||ORU^R01^ORU_R01|UPD-2|P|2.5.1\r"
    "PID|1||MRN6660101^^^GENHOSP^MR\r"
    "OBR|1|ORD-1|ACC-1|2823-3^Potassium^LN|||20260302113000+0800|||||||||||||||20260302120500+0800|||F\r"
    "OBX|1|NM|2823-3^Potassium [Moles/volume] in Serum or Plasma^LN||4.2|mmol/L|3.5-5.1|N|||F\r"
)
DEATH = (
    "MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260305101500+0800||ADT^A08^ADT_A01|UPD-3|P|2.5.1\r"
    "EVN|A08|20260305101500+0800\r"
    "PID|1||MRN6660101^^^GENHOSP^MR||Doe^Jane||||||||||||||||||||||||20260305093000+0800|Y\r"
)


def _patients(dep: Embedded) -> tuple[list[dict[str, object]], int]:
    with dep.db.sessions() as s:
        query = select(Resource.body).where(Resource.resource_type == "Patient")
        bodies = [json.loads(b) for b in s.execute(query).scalars()]
        history = select(ResourceHistory.version).where(ResourceHistory.resource_type == "Patient")
        versions = len(s.execute(history).all())
    return bodies, versions


def test_a_lab_result_does_not_erase_what_the_admission_said(tmp_path: Path) -> None:
    dep = Embedded(tmp_path / "data")
    dep.start()
    try:
        dep.deliver(ADMISSION.encode())
        (admitted,), _ = _patients(dep)
        dep.deliver(LAB.encode())
        (after_lab,), versions_after_lab = _patients(dep)
        dep.deliver(DEATH.encode())
        (after_death,), versions_after_death = _patients(dep)
    finally:
        dep.stop()
    assert admitted["gender"] == "female" and "birthDate" in admitted
    assert after_lab == admitted  # nothing new: no version, no event
    assert versions_after_lab == 1
    # The A08 reports the death and nothing of the rest: a new version that keeps it.
    assert versions_after_death == 2
    assert after_death["deceasedDateTime"]
    assert after_death["gender"] == "female"
    assert after_death["birthDate"] == admitted["birthDate"]
