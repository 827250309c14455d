"""Partial restatements (an ORU's PID, a sparse PV1) update a stored Patient or Encounter
element by element; other resources are replaced whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from connectors.inbox import DatabaseInbox
from core.settings import Settings
from core.tables import AuditEntry, Resource, ResourceHistory
from mapping import map_message
from mapping.updates import merge_update
from tests.deployments import Embedded
from tests.fixtures.messages import inbound
from worker.batch import process
from worker.context import build_context

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


def test_elements_the_message_deletes_are_not_kept() -> None:
    new = {"resourceType": "Patient", "id": "p1", "gender": "male"}
    merged = merge_update(STORED, new, clear=frozenset({"birthDate", "deceased"}))
    assert {k: v for k, v in merged.items() if k != "meta"} == {
        "resourceType": "Patient", "id": "p1", "gender": "male", "maritalStatus": {"text": "M"},
    }  # fmt: skip
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished", "period": {"start": "x"}}
    restated = {"resourceType": "Encounter", "id": "e1", "status": "in-progress"}
    status, both = frozenset({"status"}), frozenset({"status", "period"})
    kept = merge_update(encounter, restated, keep=status, clear=both)
    assert kept == {"resourceType": "Encounter", "id": "e1", "status": "finished"}  # keep wins


def test_the_mapper_reports_what_an_explicit_null_deletes() -> None:
    a08 = (
        "MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260305101500+0800||ADT^A08^ADT_A01|NUL-1|P|2.5.1\r"
        "EVN|A08|20260305101500+0800\r"
        # PID-5 "" with an alias in PID-9: the name stays. PID-7, -13, -29, -30 "": deleted.
        'PID|1||MRN6660101^^^GENHOSP^MR||""||""|F|Roe^Jane|||||""||||||||||||||""|""\r'
        'PV1|1|I|W4^412^B^GENHOSP||||||||||||||||V-6660101|||||||||||||||||||||||||""|""\r'
    )
    mapped = map_message(a08)
    by_type = {key.split("/")[0]: elements for key, elements in mapped.cleared.items()}
    assert by_type == {
        "Patient": frozenset({"birthDate", "telecom", "deceased"}),
        "Encounter": frozenset({"period"}),
    }
    # Absent fields are "no change", not deletes.
    assert map_message(LAB).cleared == {}


ADMISSION = (
    "MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260301081500+0800||ADT^A01^ADT_A01|UPD-1|P|2.5.1\r"
    "EVN|A01|20260301081500+0800\r"
    "PID|1||MRN6660101^^^GENHOSP^MR||Doe^Jane||19660412|F|||1 Main St^^Springfield^IL^62704\r"
    "PV1|1|I|W4^412^B^GENHOSP||||9921^Okonkwo^Chidi|||MED|||||||||V-6660101\r"
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


def _inbox(ctx: Any, *texts: str) -> list[int]:
    raws = [t.encode() for t in texts]
    inbox = DatabaseInbox(ctx.db)
    receipts = inbox.commit_many([inbound(r) for r in raws])
    inbox.close()
    return [r.inbox_id for r in receipts]


def _result(status: str, value: str, control_id: str) -> str:
    return (
        f"MSH|^~\\&|LIS|GENHOSP|SIDECAR|GENHOSP|20260302121000+0800||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r"
        "PID|1||MRN6660101^^^GENHOSP^MR\r"
        f"OBR|1|ORD-9|ACC-9|2823-3^Potassium^LN|||20260302113000+0800|||||||||||||||20260302120500+0800|||{status}\r"
        f"OBX|1|NM|2823-3^Potassium SerPl-sCnc^LN||{value}|mmol/L|3.5-5.1|N|||{status}\r"
    )


def test_an_older_entry_processed_late_does_not_undo_a_newer_one(tmp_path: Path) -> None:
    """Arrival order decides, not processing order: a replayed or late entry leaves what a
    newer entry stated, and only fills what the Patient lacked."""
    ctx = build_context(Settings(data_dir=tmp_path / "data"))
    older_a08 = ADMISSION.replace("ADT^A01", "ADT^A08").replace("|F|||1 Main St", "|U|||1 Main St")
    newer_a08 = DEATH.replace("UPD-3", "UPD-4").replace("Doe^Jane|||", "Doe^Jane||19660412|F", 1)
    preliminary, final = _result("P", "4.0", "UPD-5"), _result("F", "4.4", "UPD-6")
    old_adt, new_adt, old_result, new_result = _inbox(ctx, older_a08, newer_a08, preliminary, final)
    for inbox_id in (new_adt, new_result, old_adt, old_result):  # the newer ones first
        assert process(ctx, inbox_id).outcome == "processed"
    with ctx.db.sessions() as s:
        bodies = [json.loads(b) for b in s.execute(select(Resource.body)).scalars()]
        # One "messages.processed" entry per batch, each entry's summary under its inbox id.
        processed = select(AuditEntry).where(AuditEntry.action == "messages.processed")
        audits = {
            int(inbox_id): summary
            for e in s.execute(processed).scalars()
            for inbox_id, summary in json.loads(e.detail)["entries"].items()
        }
    ctx.db.dispose()
    (patient,) = [b for b in bodies if b["resourceType"] == "Patient"]
    assert patient["gender"] == "female"  # the newer A08's, not the older one's "unknown"
    assert patient["deceasedDateTime"]
    (observation,) = [b for b in bodies if b["resourceType"] == "Observation"]
    assert observation["status"] == "final" and observation["valueQuantity"]["value"] == 4.4
    assert any(r.startswith("Observation/") for r in audits[old_result]["stale"])
    assert "stale" not in audits[new_result]


def _visit_message(kind: str, control_id: str, pv1_tail: str = "") -> str:
    event = f"EVN|{kind[4:]}|20260304100000+0800\r" if kind.startswith("ADT") else ""
    return (
        f"MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260304100000+0800||{kind}|{control_id}|P|2.5.1\r"
        + event
        + "PID|1||MRN6660101^^^GENHOSP^MR\r"
        + "PV1|1|I|W4^412^B^GENHOSP||||||||||||||||V-6660101"
        + pv1_tail
        + "\r"
        + (
            "OBR|1|ORD-7|ACC-7|2823-3^Potassium^LN|||20260304090000+0800\r"
            "OBX|1|NM|2823-3^Potassium SerPl-sCnc^LN||4.0|mmol/L|3.5-5.1|N|||F\r"
            if kind.startswith("ORU")
            else ""
        )
    )


def test_a_result_after_discharge_does_not_reopen_the_visit(tmp_path: Path) -> None:
    discharged = "|" * 26 + "20260304095000+0800"  # PV1-45 discharge date/time
    dep = Embedded(tmp_path / "data")
    dep.start()
    try:
        statuses = []
        for message in (
            ADMISSION,
            _visit_message("ADT^A03^ADT_A03", "VIS-2", discharged),
            _visit_message("ORU^R01^ORU_R01", "VIS-3"),  # its PV1 alone would say in-progress
            _visit_message("ADT^A13^ADT_A01", "VIS-4"),  # cancel discharge: ADT reopens it
        ):
            dep.deliver(message.encode())
            with dep.db.sessions() as s:
                query = select(Resource.body).where(Resource.resource_type == "Encounter")
                (body,) = s.execute(query).scalars().all()
            statuses.append(json.loads(body)["status"])
    finally:
        dep.stop()
    assert statuses == ["in-progress", "finished", "finished", "in-progress"]


def test_a_death_recorded_in_error_is_deleted_by_an_explicit_null(tmp_path: Path) -> None:
    """A08 with PID-29 and PID-30 ``""``: HL7's "delete", so the stored deceased[x] goes,
    while what the correction does not mention (sex, birth year) stays."""
    correction = DEATH.replace("UPD-3", "UPD-9").replace("|20260305093000+0800|Y", '|""|""')
    dep = Embedded(tmp_path / "data")
    dep.start()
    try:
        for message in (ADMISSION, DEATH, correction):
            dep.deliver(message.encode())
        (patient,), versions = _patients(dep)
    finally:
        dep.stop()
    assert versions == 3
    assert not any(key.startswith("deceased") for key in patient)
    assert patient["gender"] == "female" and patient["birthDate"]
