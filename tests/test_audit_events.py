"""Who touched patient X (issue 21, acceptance 1): two API clients read, search and ask
$everything for patient X, the pipeline stores X's messages and writes a summary, an
operator re-identifies X; ``GET /fhir/AuditEvent?patient=Patient/X`` returns each of those
accesses as an IHE BALP-shaped AuditEvent valid under fhir.resources, naming X alone, and
none of the accesses to patient Y. Only auditor clients may ask.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import select

from core.tables import AuditEntry
from sidecar.reid import reidentify
from tests.audited import OPERATOR, audited_sidecar, patient_ids
from tests.deployments import Embedded

TOKENS = {"alpha": "alpha-token-0123456789", "beta": "beta-token-0123456789", "auditor": "auditor-token-0123"}


@dataclass
class World:
    base: str
    x: str
    y: str
    dep: Embedded

    def get(self, client: str, path: str, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKENS[client]}"}
        return httpx.get(f"{self.base}{path}", params=params, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    dep = audited_sidecar(
        tmp_path_factory.mktemp("auditevents") / "data", TOKENS, run="X", patients=2, messages=4
    )
    try:
        x, y = patient_ids(dep)
        assert dep.app is not None and dep.app.api is not None
        world = World(f"http://127.0.0.1:{dep.app.api.port}/fhir", x, y, dep)
        for client in ("alpha", "beta"):
            assert world.get(client, f"/Patient/{x}").status_code == 200
            assert world.get(client, "/Observation", patient=f"Patient/{x}").status_code == 200
        assert world.get("alpha", f"/Patient/{x}/$everything").status_code == 200
        assert world.get("beta", f"/Patient/{y}").status_code == 200  # patient Y: never in X's answer
        assert world.get("beta", "/DiagnosticReport", patient=y).status_code == 200
        reidentify(dep.db, f"Patient/{x}", operator=OPERATOR, reason="ward round query", operators=[OPERATOR])
        yield world
    finally:
        dep.stop()


def _events(world: World, **params: Any) -> list[dict[str, Any]]:
    answer = world.get("auditor", "/AuditEvent", _count=1000, **params)
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return [e["resource"] for e in bundle["entry"]]


def _patients(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event["entity"] if e.get("role", {}).get("code") == "1"]


def _client(event: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in event["agent"] if a["requestor"])


def test_every_access_to_x_is_returned_as_a_valid_balp_auditevent_naming_x_alone(world: World) -> None:
    events = _events(world, patient=f"Patient/{world.x}")
    for event in events:
        AuditEvent.model_validate(event)  # raises on anything FHIR R4 does not allow
        assert _patients(event) == [f"Patient/{world.x}"]
    seen = {(_client(e)["name"], e["subtype"][0]["code"]) for e in events}
    for client in ("api:alpha", "api:beta"):
        assert (client, "read") in seen
        assert (client, "search-type") in seen
    assert ("api:alpha", "operation") in seen  # $everything
    assert ("operator:dr-audit", "reidentify") in seen
    assert ("worker:pipeline", "deidentify") in seen  # X's messages stored
    assert ("sidecar:outputs", "originate") in seen  # X's summary, written by the model zone
    summary = next(e for e in events if e["subtype"][0]["code"] == "originate")
    assert any(a["who"].get("reference", "").startswith("Device/") for a in summary["agent"])  # the model
    assert ("worker:relay", "disclose") in seen  # X's events published


def test_reads_and_queries_carry_the_balp_profile_purpose_and_address(world: World) -> None:
    events = _events(world, patient=f"Patient/{world.x}")
    reads = [e for e in events if e["subtype"][0]["code"] == "read"]
    assert {p for e in reads for p in e["meta"]["profile"]} == {
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
    }
    queries = [e for e in events if e["subtype"][0]["code"] == "search-type"]
    assert all(e["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientQuery") for e in queries)
    assert all(any(ent.get("role", {}).get("code") == "24" for ent in e["entity"]) for e in queries)
    purposes = {_client(e)["name"]: _client(e)["purposeOfUse"][0]["coding"][0]["code"] for e in reads}
    assert purposes == {"api:alpha": "TREAT", "api:beta": "HOPERAT"}
    assert {_client(e)["network"]["address"] for e in reads} == {"127.0.0.1"}


def test_no_access_to_patient_y_alone_is_returned_for_x(world: World) -> None:
    about_x = {e["id"].split("-")[0] for e in _events(world, patient=f"Patient/{world.x}")}
    about_y = _events(world, patient=world.y)
    only_y = [
        e
        for e in about_y
        if e["subtype"][0]["code"] in ("read", "search-type") and _client(e)["name"] == "api:beta"
    ]
    assert only_y, "beta's read and search of Y are in Y's answer"
    assert not {e["id"].split("-")[0] for e in only_y} & about_x


def test_filters_by_agent_action_and_date(world: World) -> None:
    by_alpha = _events(world, patient=world.x, agent="alpha")
    assert by_alpha and {_client(e)["name"] for e in by_alpha} == {"api:alpha"}
    reads = _events(world, patient=world.x, action="R")
    assert reads and {e["action"] for e in reads} == {"R"}
    assert not _events(world, patient=world.x, date="lt2000-01-01")
    every = {e["id"] for e in _events(world, patient=world.x) if _client(e)["name"] != "api:auditor"}
    since = {
        e["id"]
        for e in _events(world, patient=world.x, date="ge2000-01-01")
        if _client(e)["name"] != "api:auditor"
    }
    assert since == every


def test_only_auditors_may_ask_and_the_refusal_is_audited(world: World) -> None:
    refused = world.get("alpha", "/AuditEvent", patient=world.x)
    assert refused.status_code == 403
    assert refused.json()["resourceType"] == "OperationOutcome"
    with world.dep.db.sessions() as s:
        last = (
            s.execute(
                select(AuditEntry).where(AuditEntry.action == "audit.search").order_by(AuditEntry.seq.desc())
            )
            .scalars()
            .first()
        )
    assert last is not None and last.actor == "api:alpha" and last.outcome == "failure"


def test_pages_follow_the_next_link_without_repeats(world: World) -> None:
    first = world.get("auditor", "/AuditEvent", patient=world.x, _count=2).json()
    ids = [e["resource"]["id"] for e in first["entry"]]
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = httpx.get(following, headers={"Authorization": f"Bearer {TOKENS['auditor']}"}, timeout=30).json()
    ids += [e["resource"]["id"] for e in second["entry"]]
    assert len(ids) == len(set(ids)) == 4


def test_the_json_audit_endpoint_selects_by_patient_and_client(world: World) -> None:
    root = world.base.removesuffix("/fhir")
    headers = {"Authorization": f"Bearer {TOKENS['auditor']}"}
    answer = httpx.get(
        f"{root}/audit", params={"patient": f"Patient/{world.x}", "actor": "api:beta"}, headers=headers
    )
    entries = answer.json()["entries"]
    assert entries and {e["actor"] for e in entries} == {"api:beta"}
    assert all(world.x in e["detail"]["patients"] for e in entries)
    assert all(world.y not in e["detail"]["patients"] for e in entries if e["action"] == "fhir.read")
