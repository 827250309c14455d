"""FHIR Bulk Data export (issue 20) from `sidecar serve` over a real socket, as a bulk
client does it: kick-off with Prefer: respond-async, poll the status URL (202 with
X-Progress, then the manifest), download each NDJSON file with the token.

Over 10,000 stored resources: every line is one resource, valid FHIR, none carrying a
planted identifier; a leak planted in one resource (bypassing de-identification, as a
mapping bug would) is withheld and reported in the manifest's error file; each download
is audited; a cancelled export leaves nothing behind.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from bench.e2e_messages import message
from core.fhir import validate_resource
from core.tables import AuditEntry, DeadLetter, Resource
from tests.deployments import Embedded
from tests.fixtures.messages import ADT_A01, IDENTIFIERS, encoded
from tests.test_leak_outgoing import LEAK, leaky_observation, plant

TOKEN, NARROW = "t0k3n-of-the-research-export", "t0k3n-of-a-one-patient-client"
MESSAGES = 1_000  # 900 ORU (11 resources each) + 100 ADT, over 200 patients: > 10,000 resources


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Embedded, str, str]]:
    dep = Embedded(
        tmp_path_factory.mktemp("bulk") / "data",
        api_port=0,
        api_tokens={"research": SecretStr(TOKEN), "narrow": SecretStr(NARROW)},
        api_population_clients=["research"],
    )
    dep.start()
    try:
        dep.deliver(*[message(seq, "X", patient_count=200) for seq in range(MESSAGES)], encoded(ADT_A01))
        with dep.db.sessions() as s:
            newest = select(Resource.patient).where(Resource.resource_type == "Patient")
            patient = s.execute(newest.order_by(Resource.updated_at.desc())).scalars().first()
        assert patient is not None  # the ADT's: its name is a known identifier
        plant(dep.db, leaky_observation(patient), patient)
        assert dep.app is not None and dep.app.api is not None
        yield dep, f"http://127.0.0.1:{dep.app.api.port}/fhir", patient
    finally:
        dep.stop()


def _export(http: httpx.Client, url: str, **params: str) -> tuple[str, dict[str, Any]]:
    kick = http.get(
        url, params=params, headers={"Prefer": "respond-async", "Accept": "application/fhir+json"}
    )
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]
    deadline = time.monotonic() + 120
    while True:
        status = http.get(status_url)
        if status.status_code == 200:
            return status_url, status.json()
        assert status.status_code == 202 and status.headers["X-Progress"], status.text
        assert time.monotonic() < deadline
        time.sleep(float(status.headers.get("Retry-After", "1")) / 4)


def test_a_system_export_of_ten_thousand_resources_is_complete_valid_screened_and_audited(
    server: tuple[Embedded, str, str],
) -> None:
    dep, base, _patient = server
    with dep.db.sessions() as s:
        stored = dict(
            s.execute(select(Resource.resource_type, func.count()).group_by(Resource.resource_type)).all()
        )
    assert sum(stored.values()) > 10_000
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        _status_url, manifest = _export(http, f"{base}/$export")
        assert manifest["requiresAccessToken"] is True and manifest["request"].endswith("/fhir/$export")
        exported: dict[str, int] = {}
        # Whole values only: a short number may occur inside a pseudonym's hex digits.
        planted = [
            re.compile(rf"(?<![0-9A-Za-z]){re.escape(v)}(?![0-9A-Za-z])") for v in [*IDENTIFIERS, LEAK]
        ]
        for output in manifest["output"]:
            lines = http.get(output["url"]).text.splitlines()
            assert len(lines) == output["count"]
            for line in lines:
                resource = json.loads(line)
                assert resource["resourceType"] == output["type"]
                validate_resource(resource)
                assert not [p.pattern for p in planted if p.search(line)], resource["id"]
            exported[output["type"]] = exported.get(output["type"], 0) + len(lines)
        # Every stored resource is in a file but the one withheld.
        assert exported == stored | {"Observation": stored["Observation"] - 1}
        [error] = manifest["error"]
        problems = [json.loads(line) for line in http.get(error["url"]).text.splitlines()]
        assert len(problems) == error["count"] == 1
        assert "Observation/leaky1" in problems[0]["issue"][0]["diagnostics"] and LEAK not in json.dumps(
            problems
        )
    with dep.db.sessions() as s:
        downloads = (
            s.execute(select(AuditEntry).where(AuditEntry.action == "fhir.export.download")).scalars().all()
        )
        letters = s.execute(select(DeadLetter).where(DeadLetter.stage == "api")).scalars().all()
        completed = (
            s.execute(select(AuditEntry).where(AuditEntry.action == "fhir.export.complete")).scalars().all()
        )
    assert len(downloads) == len(manifest["output"]) + 1
    assert {d.actor for d in downloads} == {"api:research"}
    assert sum(json.loads(d.detail)["resources"] for d in downloads) == sum(exported.values()) + 1
    assert [letter.code for letter in letters] == ["identifier-leak"]
    assert json.loads(completed[-1].detail)["withheld"] == 1


def test_since_type_patient_level_and_who_may_ask(server: tuple[Embedded, str, str]) -> None:
    _dep, base, patient = server
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        _url, only = _export(http, f"{base}/Patient/$export", _type="Patient,DiagnosticReport")
        assert {o["type"] for o in only["output"]} == {"Patient", "DiagnosticReport"}
        later = json.loads(json.dumps(only))["transactionTime"]
        _url, nothing_new = _export(http, f"{base}/$export", _since=later)
        assert nothing_new["output"] == [] and nothing_new["error"] == []
        # Without Prefer: respond-async, or with a parameter it does not know: refused.
        assert http.get(f"{base}/$export").status_code == 400
        refused = http.get(f"{base}/$export", params={"_elements": "id"}, headers={"Prefer": "respond-async"})
        assert refused.status_code == 400
    with httpx.Client(headers={"Authorization": f"Bearer {NARROW}"}, timeout=60) as http:
        assert http.get(f"{base}/$export", headers={"Prefer": "respond-async"}).status_code == 403
    assert patient


def test_a_cancelled_export_is_gone_and_its_files_are_not_anyone_elses(
    server: tuple[Embedded, str, str],
) -> None:
    dep, base, _patient = server
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        status_url, manifest = _export(http, f"{base}/$export", _type="Patient")
        file_url = manifest["output"][0]["url"]
        with httpx.Client(headers={"Authorization": f"Bearer {NARROW}"}, timeout=60) as other:
            assert other.get(status_url).status_code == 404 and other.get(file_url).status_code == 404
        assert http.delete(status_url).status_code == 202
        assert http.get(status_url).status_code == 404 and http.get(file_url).status_code == 404
    job = status_url.rsplit("/", 1)[1]
    assert not (dep.settings.data_dir / "exports" / job).exists()


def test_an_export_on_postgresql_has_every_type_stored_since_the_server_described_itself(
    tmp_path: Path, pg_url: str
) -> None:
    """The types are read when the export is asked for, not from what the server knew when
    it last described itself (then the store was empty); PostgreSQL's timestamps come back
    in a zone of the driver's, and the manifest's Expires header is still an HTTP date."""
    dep = Embedded(
        tmp_path / "data",
        database_url=pg_url,
        api_port=0,
        api_tokens={"research": SecretStr(TOKEN)},
        api_population_clients=["research"],
    )
    dep.start()
    try:
        assert dep.app is not None and dep.app.api is not None
        base = f"http://127.0.0.1:{dep.app.api.port}/fhir"
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
            assert http.get(f"{base}/metadata").status_code == 200  # while nothing is stored
            dep.deliver(*[message(seq, "Q", patient_count=3) for seq in range(12)])
            status_url, manifest = _export(http, f"{base}/$export")
            counts = {o["type"]: o["count"] for o in manifest["output"]}
            assert counts["Observation"] == 110 and counts["Patient"] == 3  # 11 ORU, 1 ADT
            expires = http.get(status_url).headers["Expires"]
            assert parsedate_to_datetime(expires) > datetime.now(UTC)
    finally:
        dep.stop()
