"""The CapabilityStatement against what the server answers (issue 20): every declared search
parameter, include and sort works under ``Prefer: handling=strict`` and finds the stored
resource its value was taken from; what is not declared is refused under strict handling
and left out of the self link under lenient handling.

The store is fed the shared corpus (other implementers' messages: many resource types) and
a few ORUs, over MLLP to `sidecar serve`. The values searched for are read here from the
stored JSON by the parameters' element paths, the way a client reads a resource it got.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from bench.e2e_messages import message
from connectors.mllp.client import MllpClient
from connectors.mllp.framing import encode_frame
from core.search_index import SEARCH_PARAMETERS
from core.tables import Resource
from tests.corpus import corpus_files, split_messages
from tests.deployments import Embedded

TOKEN = "t0k3n-of-the-conformance-check"
STRICT = {"Authorization": f"Bearer {TOKEN}", "Prefer": "handling=strict"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, list[dict[str, Any]]]]]:
    dep = Embedded(
        tmp_path_factory.mktemp("conformance") / "data",
        api_port=0,
        api_tokens={"checker": SecretStr(TOKEN)},
        api_population_clients=["checker"],
    )
    dep.start()
    try:
        texts = [
            text.encode()
            for path in corpus_files()
            for text in split_messages(path.read_text("utf-8", "replace"))
        ]
        with MllpClient().connect("127.0.0.1", dep.port, timeout=60) as client:
            # Pipelined: some corpus messages ask for no accept ACK (MSH-15 NE or ER), so the
            # last frame is ours and its ACK (answered in order) says every one before it is in.
            client.send_raw(b"".join(encode_frame(t) for t in texts) + encode_frame(message(0, "C", 2)))
            while b"|C-0" not in client.receive():
                pass
            for seq in range(1, 5):
                client.send(message(seq, "C", patient_count=2))
        dep.settle()
        stored: dict[str, list[dict[str, Any]]] = {}
        with dep.db.sessions() as s:
            for rtype, patient, body in s.execute(
                select(Resource.resource_type, Resource.patient, Resource.body)
            ):
                stored.setdefault(rtype, []).append({**json.loads(body), "_owner": patient})
        assert dep.app is not None and dep.app.api is not None
        yield f"http://127.0.0.1:{dep.app.api.port}/fhir", stored
    finally:
        dep.stop()


def _at(node: Any, path: list[str]) -> Iterator[Any]:
    if isinstance(node, list):
        for item in node:
            yield from _at(item, path)
    elif not path:
        yield node
    elif isinstance(node, dict) and path[0] in node:
        yield from _at(node[path[0]], path[1:])


def _token(value: Any) -> str | None:
    """A search value for a token element, as a client writes it."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return None
    if value.get("coding"):
        return _token(value["coding"][0])
    for key in ("code", "value"):
        if isinstance(value.get(key), str):
            return f"{value['system']}|{value[key]}" if value.get("system") else value[key]
    return None


def _value(rtype: str, name: str, kind: str, resource: dict[str, Any]) -> str | None:
    if name in ("patient", "subject"):
        return f"Patient/{resource['_owner']}" if resource["_owner"] else None
    if name == "_id":
        return str(resource["id"])
    if name == "_lastUpdated":
        return str(resource["meta"]["lastUpdated"])
    if rtype == "Provenance" and name == "target":
        return str(resource["target"][0]["reference"]) if resource.get("target") else None
    [parameter] = [p for p in SEARCH_PARAMETERS[rtype] if p.name == name]
    for path in parameter.paths:
        for found in _at(resource, path.split(".")):
            if kind == "date":
                if isinstance(found, str):
                    return found  # eq at the value's own precision
                if isinstance(found, dict) and (found.get("start") or found.get("end")):
                    return f"ge{found['start']}" if found.get("start") else f"le{found['end']}"
            elif kind == "reference" and isinstance(found, dict) and found.get("reference"):
                return str(found["reference"])
            elif kind == "token" and (token := _token(found)):
                return token
    return None


def test_every_declared_search_parameter_works_and_finds_its_resource(
    server: tuple[str, dict[str, list[dict[str, Any]]]],
) -> None:
    base, stored = server
    with httpx.Client(timeout=60) as http:
        statement = http.get(f"{base}/metadata").json()
        checked: list[str] = []
        for entry in statement["rest"][0]["resource"]:
            rtype = entry["type"]
            for param in entry.get("searchParam", []):
                name, kind = param["name"], param["type"]
                candidates = [r for r in stored.get(rtype, []) if _value(rtype, name, kind, r) is not None]
                if not candidates:
                    # Nothing stored to find: the parameter is still understood.
                    sample = {"date": "ge2020-01-01", "reference": "Patient/none"}.get(kind, "none")
                    if name == "_lastUpdated":
                        sample = "ge2020-01-01"
                    answer = http.get(f"{base}/{rtype}", params={name: sample}, headers=STRICT)
                    assert answer.status_code == 200, (rtype, name, answer.text)
                    continue
                resource = candidates[0]
                value = _value(rtype, name, kind, resource)
                params = {name: value, "_count": "1000"}
                answer = http.get(f"{base}/{rtype}", params=params, headers=STRICT)
                assert answer.status_code == 200, (rtype, name, value, answer.text)
                entries = answer.json()["entry"]
                ids = {e["resource"]["id"] for e in entries if e["search"]["mode"] == "match"}
                # Found, or found and withheld by the leak guard (some corpus messages leak).
                withheld = " ".join(
                    i["diagnostics"]
                    for e in entries
                    if e["search"]["mode"] == "outcome"
                    for i in e["resource"]["issue"]
                )
                assert resource["id"] in ids or f"{rtype}/{resource['id']} " in withheld, (rtype, name, value)
                checked.append(f"{rtype}.{name}")
            for include in entry.get("searchInclude", []):
                answer = http.get(
                    f"{base}/{rtype}", params={"_include": include, "_count": 5}, headers=STRICT
                )
                assert answer.status_code == 200, (rtype, include, answer.text)
            for include in entry.get("searchRevInclude", []):
                answer = http.get(
                    f"{base}/{rtype}", params={"_revinclude": include, "_count": 5}, headers=STRICT
                )
                assert answer.status_code == 200, (rtype, include, answer.text)
    # The corpus exercises most of what is declared: types beyond lab results included.
    exercised = {c.split(".")[0] for c in checked}
    assert {
        "Observation",
        "DiagnosticReport",
        "Encounter",
        "Condition",
        "AllergyIntolerance",
        "Patient",
    } <= exercised
    assert len(checked) >= 60, checked


def test_includes_bring_the_referenced_resources(server: tuple[str, dict[str, list[dict[str, Any]]]]) -> None:
    base, stored = server
    # One of the synthetic panels (CHEM10): corpus messages may leak, and a withheld
    # resource would be an outcome entry here instead of an include.
    report = next(r for r in stored["DiagnosticReport"] if r.get("result") and "CHEM10" in str(r["code"]))
    results = {ref["reference"] for ref in report["result"]}
    with httpx.Client(timeout=60) as http:
        bundle = http.get(
            f"{base}/DiagnosticReport",
            params={"_id": report["id"], "_include": "DiagnosticReport:result"},
            headers=STRICT,
        ).json()
        included = {
            f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in bundle["entry"]
            if e["search"]["mode"] == "include"
        }
        assert included == results
        first = sorted(results)[0].split("/")[1]
        back = http.get(
            f"{base}/Observation",
            params={"_id": first, "_revinclude": "DiagnosticReport:result"},
            headers=STRICT,
        ).json()
        assert report["id"] in {
            e["resource"]["id"] for e in back["entry"] if e["search"]["mode"] == "include"
        }
        patient = report["_owner"]
        with_obs = http.get(
            f"{base}/Patient", params={"_id": patient, "_revinclude": "Observation:patient"}, headers=STRICT
        ).json()
        kinds = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in with_obs["entry"]}
        assert kinds == {("Patient", "match"), ("Observation", "include")}


def test_what_is_not_declared_is_refused_when_strict_and_dropped_from_self_when_lenient(
    server: tuple[str, dict[str, list[dict[str, Any]]]],
) -> None:
    base, stored = server
    patient = stored["Observation"][0]["_owner"]
    lenient = {"Authorization": f"Bearer {TOKEN}"}
    refused = [
        {"patient": patient, "not-a-parameter": "x"},
        {"patient": patient, "code:text": "potassium"},
        {"patient": patient, "_include": "Observation:performer"},
        {"patient": patient, "_sort": "value-quantity"},
    ]
    with httpx.Client(timeout=60) as http:
        for params in refused:
            answer = http.get(f"{base}/Observation", params=params, headers=STRICT)
            assert answer.status_code == 400, (params, answer.text)
            assert answer.json()["resourceType"] == "OperationOutcome"
        answer = http.get(f"{base}/Observation", params={"patient": patient, "nope": "1"}, headers=lenient)
        assert answer.status_code == 200
        [self_link] = [link["url"] for link in answer.json()["link"] if link["relation"] == "self"]
        assert "nope" not in self_link and f"patient={patient}" in self_link
        # A known parameter with a value it cannot read is an error under either handling.
        bad_date = http.get(
            f"{base}/Observation", params={"patient": patient, "date": "soon"}, headers=lenient
        )
        assert bad_date.status_code == 400
