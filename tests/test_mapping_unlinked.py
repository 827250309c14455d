"""Identity is not a precondition for mapping (issue 19): a patient without identifier maps to a
Patient scoped to its message, a message without PID maps what it carries, and through
`sidecar serve` both are stored, published and counted as ``unlinked``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connectors import MllpClient
from core.errors import MappingError
from core.fhir import validate_resource
from core.tables import ReidEntry, Resource
from deid import Vault, deidentify
from deid.policy import PSEUDONYM_SYSTEM
from mapping import MappedMessage, map_message
from mapping.coverage import report_lines
from mapping.ids import MESSAGE_SCOPE_AUTHORITY
from mapping.subject import NO_IDENTIFIER_REASON, NO_PID_REASON, unlinked_reasons
from sidecar.stats import collect
from tests.deployments import Embedded, msa
from tests.fixtures.messages import encoded

SECRET = b"unlinked-test-secret-0123456789abcdef"

ORU_MSH = "MSH|^~\\&|LIS|REFLAB|SIDECAR|GENHOSP|20260301121000+0800||ORU^R01|CTRL-UNL-{n}|P|2.5.1"
ADT_MSH = "MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260301081500+0800||ADT^A01|CTRL-UNL-{n}|P|2.5.1"
# A patient named and dated, but without any identifier: PID-2, -3 and -4 empty.
PID_NO_ID = "PID|1||||Quimby^Harriet^Ann||19760412|F|||77 Larkspur Lane^^Springfield^IL^62704"
# PID-3 with only empty repetitions (and an empty CX with an authority).
PID_EMPTY_REPS = "PID|1||~^^^GENHOSP^MR||Quimby^Harriet^Ann||19760412|F"
RESULTS = (
    "OBR|1|ORD-77-P|ACC2026-77|24323-8^Comprehensive metabolic panel^LN|||20260301113000+0800\r"
    "OBX|1|NM|2823-3^Potassium [Moles/volume] in Serum or Plasma^LN||6.1|mmol/L|3.5-5.1|H|||F"
    "|||20260301113000+0800\r"
    "OBX|2|NM|2951-2^Sodium [Moles/volume] in Serum or Plasma^LN||139|mmol/L|135-145|N|||F"
)
VISIT = (
    "PV1|1|I|W4^412^B^GENHOSP||||||||||||||||VN55012^^^GENHOSP^VN|||||||||||||||||||||||||20260301081500+0800"
)
IDENTIFYING = ("Quimby", "Harriet", "Larkspur", "62704", "19760412", "1976-04-12", "VN55012", "CTRL-UNL")


def oru(n: int, pid: str | None) -> str:
    return "\r".join([ORU_MSH.format(n=n), *([pid] if pid else []), RESULTS])


def adt(n: int, pid: str | None) -> str:
    return "\r".join([ADT_MSH.format(n=n), "EVN|A01|20260301081500+0800", *([pid] if pid else []), VISIT])


def of_type(mapped: MappedMessage, resource_type: str) -> list[dict[str, Any]]:
    return [r for r in mapped.resources if r["resourceType"] == resource_type]


def deidentified(mapped: MappedMessage) -> list[dict[str, Any]]:
    keys = {pid: (key.authority, key.value) for pid, key in mapped.patient_keys.items()}
    result = deidentify(mapped.resources, keys, mapped.phi_values, Vault(SECRET), validate=True)
    return [item.resource for item in result.resources]


def assert_nothing_identifying(resources: list[dict[str, Any]]) -> None:
    blob = json.dumps(resources, ensure_ascii=False)
    assert [v for v in IDENTIFYING if v in blob] == []


@pytest.mark.parametrize("pid", [PID_NO_ID, PID_EMPTY_REPS], ids=["no-PID-3", "empty-repetitions"])
def test_a_patient_without_identifier_maps_to_a_patient_scoped_to_its_message(pid: str) -> None:
    mapped = map_message(oru(1, pid))
    [patient] = of_type(mapped, "Patient")
    assert "identifier" not in patient
    assert patient["name"][0]["family"] == "Quimby"  # everything else of the PID still maps
    assert [k.authority for k in mapped.patient_keys.values()] == [MESSAGE_SCOPE_AUTHORITY]
    subject = {"reference": f"Patient/{patient['id']}"}
    assert len(of_type(mapped, "Observation")) == 2
    assert all(r["subject"] == subject for r in mapped.resources if r["resourceType"] != "Patient")
    assert unlinked_reasons(mapped) == [NO_IDENTIFIER_REASON]

    # Deterministic: a resend maps to the same Patient; another message (even with the very
    # same PID) to another one, since nothing links the two.
    assert of_type(map_message(oru(1, pid)), "Patient")[0]["id"] == patient["id"]
    assert of_type(map_message(oru(2, pid)), "Patient")[0]["id"] != patient["id"]

    out = deidentified(mapped)
    [deid_patient] = [r for r in out if r["resourceType"] == "Patient"]
    # The de-identified Patient carries the pseudonym and nothing the message identified it by.
    assert deid_patient["identifier"] == [{"system": PSEUDONYM_SYSTEM, "value": deid_patient["id"]}]
    assert deid_patient["id"] != patient["id"]
    assert_nothing_identifying(out)


def test_a_patient_identified_only_by_pid_2_is_not_unlinked() -> None:
    mapped = map_message(oru(1, "PID|1|EXT-99^^^OTHERHOSP||||Quimby^Harriet"))
    assert [k.authority for k in mapped.patient_keys.values()] == ["OTHERHOSP"]
    assert unlinked_reasons(mapped) == []


def test_two_patients_without_identifier_in_one_message_stay_two() -> None:
    text = "\r".join([ORU_MSH.format(n=1), PID_NO_ID, RESULTS, "PID|2||||Okonkwo^Chidi||19500101|M", RESULTS])
    mapped = map_message(text)
    patients = of_type(mapped, "Patient")
    assert len(patients) == 2 and patients[0]["id"] != patients[1]["id"]
    subjects = {r["subject"]["reference"] for r in of_type(mapped, "Observation")}
    assert subjects == {f"Patient/{p['id']}" for p in patients}
    assert unlinked_reasons(mapped) == [NO_IDENTIFIER_REASON, NO_IDENTIFIER_REASON]
    out = deidentified(mapped)  # two pseudonyms, not a "same identifier" refusal
    assert len({r["id"] for r in out if r["resourceType"] == "Patient"}) == 2


def test_a_result_message_without_pid_maps_its_results_without_subject() -> None:
    mapped = map_message(oru(1, None))
    assert of_type(mapped, "Patient") == []
    [report] = of_type(mapped, "DiagnosticReport")
    observations = of_type(mapped, "Observation")
    assert len(observations) == 2
    assert report["result"] == [{"reference": f"Observation/{o['id']}"} for o in observations]
    assert all("subject" not in r for r in mapped.resources)  # R4: subject 0..1 for both
    for resource in mapped.resources:
        validate_resource(resource)
    assert unlinked_reasons(mapped) == [NO_PID_REASON]
    assert report_lines(mapped)[0] == NO_PID_REASON  # what `sidecar convert --report` prints

    # De-identification keys dates and ids with the message's scope: shifted, not refused.
    out = deidentified(mapped)
    [deid_report] = [r for r in out if r["resourceType"] == "DiagnosticReport"]
    assert deid_report["effectiveDateTime"] != report["effectiveDateTime"]
    assert all("subject" not in r for r in out)
    assert_nothing_identifying(out)


def test_an_adt_message_without_pid_maps_what_it_carries() -> None:
    mapped = map_message(adt(1, None))
    [encounter] = of_type(mapped, "Encounter")
    assert "subject" not in encounter  # R4: Encounter.subject 0..1
    assert encounter["identifier"][0]["value"] == "VN55012"
    assert of_type(mapped, "Patient") == []
    assert unlinked_reasons(mapped) == [NO_PID_REASON]
    out = deidentified(mapped)
    # PV1-3 names a bed: a Location of its own, which names no patient either.
    assert sorted(r["resourceType"] for r in out) == ["Encounter", "Location"]
    assert_nothing_identifying(out)


def test_an_order_without_pid_gets_an_empty_patient_scoped_to_it() -> None:
    # ServiceRequest.subject is 1..1 in R4: the order needs a Patient to point at.
    text = "\r".join(
        [
            "MSH|^~\\&|OE|GENHOSP|SIDECAR|GENHOSP|20260301081500+0800||ORM^O01|CTRL-UNL-5|P|2.5.1",
            "ORC|NW|ORD-55-P",
            "OBR|1|ORD-55-P||2823-3^Potassium^LN",
        ]
    )
    mapped = map_message(text)
    [patient] = of_type(mapped, "Patient")
    assert set(patient) == {"resourceType", "id"}
    [order] = of_type(mapped, "ServiceRequest")
    assert order["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert unlinked_reasons(mapped) == [NO_PID_REASON]
    deidentified(mapped)


def test_a_long_sender_is_digested_in_the_scope() -> None:
    long_sender = "A" * 500
    mapped = map_message(oru(1, PID_NO_ID).replace("|LIS|", f"|{long_sender}|", 1))
    [key] = mapped.patient_keys.values()
    assert len(key.value) < 400 and long_sender not in key.value  # fits reid_map.identifier
    assert key.value.endswith("|PID@1")


def test_only_bytes_that_are_not_hl7_are_refused() -> None:
    with pytest.raises(MappingError):
        map_message("this is not an HL7 message")


def test_unlinked_messages_are_acked_stored_published_and_counted(tmp_path: Path) -> None:
    messages = [
        (oru(11, PID_NO_ID), "CTRL-UNL-11"),
        (oru(12, None), "CTRL-UNL-12"),
        (adt(13, PID_EMPTY_REPS), "CTRL-UNL-13"),
    ]
    dep = Embedded(tmp_path / "data")
    dep.start()
    try:
        with MllpClient().connect("127.0.0.1", dep.port, timeout=30) as client:
            for message, control_id in messages:
                fields = msa(client.send(encoded(message)))
                assert fields[1:3] == ["AA", control_id]
            # A resend is the same message: stored once, counted once.
            assert msa(client.send(encoded(messages[0][0])))[1] == "AA"
        dep.settle()

        stats = collect(dep.db)
        assert stats["unlinked"] == 3
        assert stats["inbox"]["processed"] == 3 and stats["dead_letters"] == 0
        with dep.db.sessions() as s:
            rows = s.execute(select(Resource.resource_type, Resource.body)).all()
            scoped = s.execute(
                select(ReidEntry.pseudonym).where(ReidEntry.authority == MESSAGE_SCOPE_AUTHORITY)
            ).scalars()
            pseudonyms = set(scoped)
        stored: dict[str, list[dict[str, Any]]] = {}
        for resource_type, body in rows:
            stored.setdefault(resource_type, []).append(json.loads(body))
        # Two Patients (the PIDs without identifier), each under its own pseudonym; the
        # message without PID stored its report and results without subject.
        assert {p["id"] for p in stored["Patient"]} < pseudonyms and len(stored["Patient"]) == 2
        assert any("subject" not in r for r in stored["DiagnosticReport"])
        assert len(stored["Observation"]) == 4 and "Encounter" in stored
        assert_nothing_identifying([json.loads(body) for _, body in rows])

        events = dep.event_bodies()
        published = {e["data"]["resourceType"] for e in events if ".fhir." in e["type"]}
        assert {"Patient", "Observation", "DiagnosticReport", "Encounter"} <= published
        assert {e["subject"].removeprefix("Patient/") for e in events if "subject" in e} == pseudonyms
        assert_nothing_identifying([e["data"] for e in events])
    finally:
        dep.stop()
