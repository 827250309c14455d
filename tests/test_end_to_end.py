"""One message through every zone, on both deployments (acceptance of the skeleton)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select, text

import audit
from connectors import MllpClient
from core.tables import Resource
from tests.deployments import Embedded, Production, msa
from tests.fixtures.messages import ADT_A01, IDENTIFIERS, ORU_R01, encoded


def assert_no_identifiers(blob: str, where: str) -> None:
    leaked = [value for value in IDENTIFIERS if value.lower() in blob.lower()]
    assert not leaked, f"identifiers in {where}: {leaked}"


@pytest.fixture(params=["embedded", "postgres+rabbitmq"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path):
    dep: Embedded | Production
    if request.param == "embedded":
        dep = Embedded(tmp_path / "data")
    else:
        dep = Production(
            tmp_path / "data", request.getfixturevalue("pg_url"), request.getfixturevalue("rabbit_vhost")
        )
    dep.start()
    try:
        yield dep
    finally:
        if isinstance(dep, Embedded):
            dep.stop()
        else:
            codes = dep.stop()
            assert codes.get("serve") == 0, f"serve did not drain and exit 0: {codes}\n{dep.logs()}"


def test_message_travels_every_zone(deployment) -> None:
    with MllpClient().connect("127.0.0.1", deployment.port, timeout=30) as client:
        for message, control_id in ((ADT_A01, "CTRL-ADT-0001"), (ORU_R01, "CTRL-LAB-0001")):
            fields = msa(client.send(encoded(message)))
            assert fields[1] == "AA", fields
            assert fields[2] == control_id

    deployment.settle()

    with deployment.db.sessions() as s:
        rows = s.execute(select(Resource.resource_type, Resource.body)).all()
    types = {t for t, _ in rows}
    assert {
        "Patient",
        "Encounter",
        "Observation",
        "DiagnosticReport",
        "DocumentReference",
        "Provenance",
    } <= types
    stored = "\n".join(body for _, body in rows)
    assert_no_identifiers(stored, "stored resources")
    patient = next(json.loads(b) for t, b in rows if t == "Patient")
    assert "name" not in patient and "address" not in patient and "telecom" not in patient
    assert patient["birthDate"] != "1976-04-12"
    assert [i["system"] for i in patient["identifier"]] == ["urn:sidecar:pseudonym"]

    events = deployment.event_bodies()
    keys = {e["type"].rsplit(".fhir.", 1)[-1] for e in events}
    assert {"Patient.created", "Observation.created", "DocumentReference.created"} <= keys, keys
    assert any(e["type"].endswith("summary.lab-report.completed") for e in events)
    assert all(e["subject"] == f"Patient/{patient['id']}" for e in events if "subject" in e)
    assert_no_identifiers(json.dumps(events, ensure_ascii=False), "published events")

    chain = audit.verify(deployment.db.engine)
    assert chain.ok and chain.entries >= 6, chain
    with deployment.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET detail = :d WHERE seq = 3"), {"d": '{"edited":true}'})
    tampered = audit.verify(deployment.db.engine)
    assert not tampered.ok
    assert tampered.first_broken == 3
