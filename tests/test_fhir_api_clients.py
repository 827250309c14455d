"""The FHIR API as two widely used FHIR clients from PyPI use it (issue 20): fhirclient
(SMART on FHIR's Python client) and fhirpy, against `sidecar serve`'s API over a real
socket, on SQLite and on PostgreSQL. No hand-made HTTP in the clients' tests: what they
send is what their users' code sends.

The store holds 1,000 Observations of one patient (100 ORU^R01 of 10 OBX over ten days)
and a few of another. Expected answers are computed here from the stored JSON with plain
Python, not through the server's search code.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from fhirclient import client as fhirclient_client
from fhirclient.models.observation import Observation as FcObservation
from fhirclient.models.patient import Patient as FcPatient
from fhirpy import SyncFHIRClient
from pydantic import SecretStr
from sqlalchemy import select

from bench.e2e_messages import message
from core.fhir import validate_resource
from core.tables import Resource
from tests.conftest import PG_ADMIN, _pg_available, _require
from tests.deployments import Embedded

TOKEN, POPULATION_TOKEN = "t0k3n-of-the-llm-service", "t0k3n-of-research"
LOINC = "http://loinc.org"
POTASSIUM = "2823-3"
DAYS, PER_DAY = 10, 10  # ORUs of patient A: 10 Observations each


def _seqs_of_a() -> list[int]:
    # bench.e2e_messages: one patient when the pool is 1; the time is START + seq seconds;
    # seq % 10 == 9 is an ADT.
    return [d * 86_400 + j for d in range(DAYS) for j in range(PER_DAY + 1) if j != 9]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    database = None
    if request.param == "postgresql":
        _require(_pg_available(), "PostgreSQL at 127.0.0.1:5432")
        database = f"sidecar_t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
    url = None
    if database:
        url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{database}"
    dep = Embedded(
        tmp_path_factory.mktemp("fhir") / "data",
        database_url=url,
        api_port=0,
        api_tokens={"llm": SecretStr(TOKEN), "research": SecretStr(POPULATION_TOKEN)},
        api_population_clients=["research"],
    )
    dep.start()
    try:
        dep.deliver(*[message(seq, "A", patient_count=1) for seq in _seqs_of_a()])
        dep.deliver(*[message(seq, "B", patient_count=2) for seq in (1, 3, 5)])  # patient B
        assert dep.app is not None and dep.app.api is not None
        with dep.db.sessions() as s:
            rows = s.execute(select(Resource.resource_type, Resource.patient, Resource.body)).all()
        yield {"dep": dep, "base": f"http://127.0.0.1:{dep.app.api.port}/fhir", "rows": rows}
    finally:
        dep.stop()
        if database:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _stored(served: dict[str, Any], rtype: str, patient: str | None = None) -> list[dict[str, Any]]:
    return [
        json.loads(body) for t, p, body in served["rows"] if t == rtype and (patient is None or p == patient)
    ]


def _patient_a(served: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for rtype, patient, _body in served["rows"]:
        if rtype == "Observation" and patient:
            counts[patient] = counts.get(patient, 0) + 1
    return max(counts, key=counts.__getitem__)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def test_fhirclient_reads_the_capability_statement_and_a_patient(served: dict[str, Any]) -> None:
    smart = fhirclient_client.FHIRClient(settings={"app_id": "sidecar-test", "api_base": served["base"]})
    smart.server.get_capability()  # no token: the statement is public, as the spec expects
    statement = smart.server.capabilityStatement
    assert statement.fhirVersion == "4.0.1" and statement.kind == "instance"
    declared = {r.type: r for r in statement.rest[0].resource}
    assert {"Patient", "Observation", "DiagnosticReport"} <= set(declared)
    assert {"code", "date", "patient", "_lastUpdated"} <= {
        p.name for p in declared["Observation"].searchParam
    }
    assert [o.name for o in declared["Patient"].operation] == ["everything", "export"]

    smart.server.session.headers["Authorization"] = f"Bearer {TOKEN}"
    patient_id = _patient_a(served)
    patient = FcPatient.read(patient_id, smart.server)
    assert patient.id == patient_id and patient.meta.versionId
    observation = _stored(served, "Observation", patient_id)[0]
    read = FcObservation.read(observation["id"], smart.server)
    assert read.subject.reference == f"Patient/{patient_id}"


def test_fhirpy_searches_by_patient_code_and_date_range_and_gets_exactly_the_matches(
    served: dict[str, Any],
) -> None:
    client = SyncFHIRClient(served["base"], authorization=f"Bearer {TOKEN}")
    patient = _patient_a(served)
    stored = _stored(served, "Observation", patient)
    days = sorted({o["effectiveDateTime"][:10] for o in stored})
    assert len(days) >= DAYS - 1  # the shifted dates keep their spread
    low, high = days[2], days[6]
    found = (
        client.resources("Observation")
        .search(patient=patient, code=f"{LOINC}|{POTASSIUM}", date__ge=low, date__lt=high)
        .fetch_all()
    )
    expected = {
        o["id"]
        for o in stored
        if any(c.get("system") == LOINC and c.get("code") == POTASSIUM for c in o["code"]["coding"])
        and _instant(f"{low}T00:00:00+00:00")
        <= _instant(o["effectiveDateTime"])
        < _instant(f"{high}T00:00:00+00:00")
    }
    assert 10 <= len(expected) < len([o for o in stored if POTASSIUM in str(o["code"])])
    assert {o.id for o in found} == expected
    # Without a system the code matches too; another patient's potassium never does.
    codes = client.resources("Observation").search(patient=patient, code=POTASSIUM).fetch_all()
    assert {o.id for o in codes} == {o["id"] for o in stored if POTASSIUM in str(o["code"])}
    assert client.resources("Observation").search(patient=patient, code=f"{LOINC}|nope").fetch_all() == []


def test_fhirpy_pages_through_a_thousand_results_and_counts_them(served: dict[str, Any]) -> None:
    client = SyncFHIRClient(served["base"], authorization=f"Bearer {TOKEN}")
    patient = _patient_a(served)
    search = client.resources("Observation").search(patient=patient).limit(100)
    ids = [o.id for o in search.fetch_all()]
    assert len(ids) == len(set(ids)) == DAYS * PER_DAY * 10 == 1000
    assert search.count() == 1000
    newest_first = (
        client.resources("Observation").search(patient=patient).sort("-date").limit(250).fetch_all()
    )
    dates = [_instant(o.effectiveDateTime) for o in newest_first]
    assert len(dates) == 1000 and dates == sorted(dates, reverse=True)


def test_fhirpy_fetches_everything_of_a_patient(served: dict[str, Any]) -> None:
    client = SyncFHIRClient(served["base"], authorization=f"Bearer {TOKEN}")
    patient = _patient_a(served)
    bundle = client.resource("Patient", id=patient).execute(
        "$everything", method="get", params={"_count": 400}
    )
    ids: list[str] = []
    while True:
        ids += [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])]
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            break
        bundle = client.execute(following[0], method="get")
    expected = {f"{t}/{json.loads(b)['id']}" for t, p, b in served["rows"] if p == patient}
    assert len(ids) == len(set(ids)) and set(ids) == expected
    assert f"Patient/{patient}" in ids and bundle["total"] == len(expected)
    only = client.resource("Patient", id=patient).execute(
        "$everything", method="get", params={"_type": "DiagnosticReport"}
    )
    assert {e["resource"]["resourceType"] for e in only["entry"]} == {"DiagnosticReport"}
    assert only["total"] == DAYS * PER_DAY


def test_population_search_is_for_granted_clients_only(served: dict[str, Any]) -> None:
    from fhirpy.base.exceptions import ForbiddenError

    narrow = SyncFHIRClient(served["base"], authorization=f"Bearer {TOKEN}")
    with pytest.raises(ForbiddenError):
        narrow.resources("Observation").search(code=POTASSIUM).fetch()
    wide = SyncFHIRClient(served["base"], authorization=f"Bearer {POPULATION_TOKEN}")
    patients = wide.resources("Patient").fetch_all()
    assert len(patients) == 2
    potassium = wide.resources("Observation").search(code=POTASSIUM).fetch_all()
    assert len(potassium) == DAYS * PER_DAY + 3
    assert len({o.subject.reference for o in potassium}) == 2


def test_the_capability_statement_is_valid_fhir(served: dict[str, Any]) -> None:
    client = SyncFHIRClient(served["base"])
    statement = client.execute("metadata", method="get")
    validate_resource(dict(statement))
