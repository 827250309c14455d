"""Serve takes in a summary the model zone handed back (issue 18): checks it again, re-runs
the verifier over the cited versions as stored, and stores it labelled per HL7's AI
Transparency on FHIR IG: the DocumentReference (AIAST, preliminary, sentence -> fact map),
the model's Device, the prompt as a DocumentReference and the Provenance, in one
transaction; or a dead letter with the reason and nothing stored. Read back through the
FHIR API over a real socket.

``verify_stored`` is a recording stand-in here: what is tested is what serve hands it (the
stored versions) and what it does with its verdict; the verifier has its own tests.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import insert, select

from core.db import Database
from core.fhir import validate_resource
from core.settings import Settings
from core.store import put_resource
from core.tables import (
    AuditEntry,
    DeadLetter,
    Job,
    JobOutput,
    JobStatus,
    OutboxEvent,
    Resource,
    ResourceHistory,
)
from sandbox.documents import SUMMARY_TYPES, summary_document_id
from sandbox.verifier import VERIFIER
from sidecar import outputs
from sidecar.api import ApiServer, create_api
from sidecar.outputs import OutputIntake
from tests.fixtures.messages import ADT_A01, ORU_R01
from tests.test_leak_outgoing import ingest
from worker.context import build_context
from worker.leakguard import LeakGuard
from worker.pipeline import PipelineContext

PATIENT, OTHER = "pat-1", "pat-2"
K1 = "Observation/k1/_history/1"  # potassium 6.1, since corrected: the store holds version 2
NA = "Observation/na/_history/1"
PAT = f"Patient/{PATIENT}/_history/1"
PROMPT = "[system]\nWrite a lab report summary.\n\n[user]\n<record>\n[F1] Potassium 6.1 mmol/L (H)\n</record>"
AIAST = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "AIAST")
PSEUDED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "PSEUDED")


@dataclass
class Verdict:
    failures: list[str] = field(default_factory=list)
    code: str = "ungrounded"

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class StandIn:
    """``verify_stored``'s signature; records what it was given."""

    verdict: Verdict = field(default_factory=Verdict)
    calls: list[tuple[list[dict[str, Any]], dict[str, dict[str, Any]], str]] = field(default_factory=list)

    def __call__(
        self, sentences: Sequence[Mapping[str, Any]], resources: Mapping[str, dict[str, Any]], language: str
    ) -> Verdict:
        self.calls.append(([dict(s) for s in sentences], dict(resources), language))
        return self.verdict


@pytest.fixture
def verifier(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    stand_in = StandIn()
    monkeypatch.setattr(outputs, "verify_stored", stand_in)
    return stand_in


def _observation(rid: str, patient: str, code: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"text": code},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": value, "unit": unit},
    }


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[PipelineContext]:
    """Two patients' de-identified records, one Observation with two versions."""
    context = build_context(Settings(data_dir=tmp_path, summary_coalesce_s=0))
    now = datetime.now(UTC)
    with context.db.transaction() as s:
        for patient in (PATIENT, OTHER):
            put_resource(s, {"resourceType": "Patient", "id": patient, "gender": "female"},
                         patient=patient, origin="test", now=now)  # fmt: skip
        put_resource(
            s,
            _observation("k1", PATIENT, "Potassium", 6.1, "mmol/L"),
            patient=PATIENT,
            origin="test",
            now=now,
        )
        put_resource(
            s,
            _observation("k1", PATIENT, "Potassium", 4.1, "mmol/L"),
            patient=PATIENT,
            origin="test",
            now=now,
        )
        put_resource(
            s, _observation("na", PATIENT, "Sodium", 140, "mmol/L"), patient=PATIENT, origin="test", now=now
        )
        put_resource(
            s, _observation("x1", OTHER, "Sodium", 150, "mmol/L"), patient=OTHER, origin="test", now=now
        )
    yield context
    context.db.dispose()


def body(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "lab-report",
        "template": "lab-report/1",
        "language": "en",
        "sentences": [
            {"text": "Potassium 6.1 mmol/L is high.", "facts": [K1]},
            {"text": "Sodium 140 mmol/L is normal.", "facts": [NA]},
        ],
        "inputs": [K1, NA, PAT],
        "prompt": PROMPT,
        "model": {
            "name": "qwen2.5-7b",
            "version": "openai-chat",
            "served": "qwen2.5-7b-instruct-q4",
            "response_id": "chatcmpl-1",
            "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        },
        "attempts": 1,
        "verifier": "sidecar-verifier/1",
    }
    return out | changes


def hand_back(
    db: Database, output: dict[str, Any] | str, *, patient: str = PATIENT, kind: str = "lab-report"
) -> int:
    """A running job, and its output inserted as the model zone does (its own login)."""
    now = datetime.now(UTC)
    with db.transaction() as s:
        job = Job(kind=kind, patient=patient, status=JobStatus.RUNNING, due_at=now, created_at=now,
                  updated_at=now, triggers=1, attempts=1)  # fmt: skip
        s.add(job)
        s.flush()
        job_id = job.id
    sandbox_db = Database(url=db.url, model_zone=True)
    raw = output if isinstance(output, str) else json.dumps(output)
    with sandbox_db.transaction() as s:
        s.execute(insert(JobOutput).values(job_id=job_id, outcome="summary", body=raw, created_at=now))
    sandbox_db.dispose()
    return job_id


def intake(ctx: PipelineContext) -> OutputIntake:
    return OutputIntake(
        ctx.db, LeakGuard(ctx.vault), model_version="2.5-7b-q4", model_weights_digest="sha256:" + "ab" * 32
    )


def stored(db: Database, rtype: str) -> list[dict[str, Any]]:
    with db.sessions() as s:
        rows = s.execute(select(Resource.body).where(Resource.resource_type == rtype)).scalars()
        return [json.loads(b) for b in rows]


def history(db: Database, ref: str) -> dict[str, Any]:
    rtype, rid, _, version = ref.split("/")
    with db.sessions() as s:
        row = s.execute(
            select(ResourceHistory.body).where(
                ResourceHistory.resource_type == rtype,
                ResourceHistory.resource_id == rid,
                ResourceHistory.version == int(version),
            )
        ).scalar_one()
    result: dict[str, Any] = json.loads(row)
    return result


def decoded(attachment: dict[str, Any]) -> str:
    return base64.b64decode(attachment["data"]).decode()


def labels(resource: dict[str, Any]) -> set[tuple[str, str]]:
    return {(lab["system"], lab["code"]) for lab in resource["meta"].get("security", [])}


def test_a_verified_summary_is_stored_labelled_the_fhir_way(ctx: PipelineContext, verifier: StandIn) -> None:
    job_id = hand_back(ctx.db, body())
    assert intake(ctx).run_once() == 1

    with ctx.db.sessions() as s:
        job = s.get_one(Job, job_id)
        assert (job.status, job.error_code) == (JobStatus.DONE, None)
        assert s.execute(select(DeadLetter)).first() is None
        assert s.execute(select(JobOutput)).first() is None
    doc_id = summary_document_id(PATIENT, "lab-report")
    assert job.result == f"DocumentReference/{doc_id}"

    # The verifier ran again over the versions as stored: potassium's first version (6.1),
    # not the current one (4.1), and every input, so its omission rule sees the context.
    [(sentences, resources, language)] = verifier.calls
    assert language == "en" and [s["facts"] for s in sentences] == [[K1], [NA]]
    assert resources == {ref: history(ctx.db, ref) for ref in (K1, NA, PAT)}
    assert resources[K1]["valueQuantity"]["value"] == 6.1

    documents = {d["id"]: d for d in stored(ctx.db, "DocumentReference")}
    [device] = stored(ctx.db, "Device")
    [prov] = stored(ctx.db, "Provenance")
    summary = documents.pop(doc_id)
    [prompt] = documents.values()
    for resource in (summary, device, prompt, prov):
        validate_resource(resource)

    # The summary: AIAST (and the de-identified label every output carries), preliminary,
    # authored by the Device, its text and its sentence -> fact map.
    assert labels(summary) == {AIAST, PSEUDED}
    assert (summary["status"], summary["docStatus"]) == ("current", "preliminary")
    assert summary["type"]["coding"] == [
        {"system": "http://loinc.org", "code": "11502-2", "display": "Laboratory report"}
    ]
    assert summary["subject"] == {"reference": f"Patient/{PATIENT}"}
    assert summary["author"] == [{"reference": f"Device/{device['id']}"}]
    text, mapping = (c["attachment"] for c in summary["content"])
    assert (text["contentType"], text["language"]) == ("text/plain; charset=utf-8", "en")
    assert decoded(text) == "Potassium 6.1 mmol/L is high. Sodium 140 mmol/L is normal."
    assert mapping["contentType"] == "application/json"
    sentence_map = json.loads(decoded(mapping))
    assert sentence_map["template"] == "lab-report/1" and sentence_map["verifier"] == VERIFIER
    assert sentence_map["sentences"] == body()["sentences"]
    # Every cited reference resolves to a stored version saying what the sentence cites.
    cited = [history(ctx.db, ref) for s in sentence_map["sentences"] for ref in s["facts"]]
    assert [(r["code"]["text"], r["valueQuantity"]["value"]) for r in cited] == [
        ("Potassium", 6.1),
        ("Sodium", 140),
    ]

    # The model: the IG's AI Device, names, versions and the configured weights digest.
    assert device["meta"]["profile"] == [
        "http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AI-Device"
    ]
    assert device["type"]["coding"][0]["code"] == "Artificial-Intelligence"
    assert device["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "Large-Language-Models"
    assert device["deviceName"] == [
        {"name": "qwen2.5-7b", "type": "user-friendly-name"},
        {"name": "qwen2.5-7b-instruct-q4", "type": "model-name"},
    ]
    assert [v["value"] for v in device["version"]] == ["2.5-7b-q4", "openai-chat"]
    assert device["identifier"] == [
        {"system": "urn:hl7-fhir-sidecar:model-weights-digest", "value": "sha256:" + "ab" * 32}
    ]

    # The prompt exactly as sent: the IG's AI Input Prompt.
    assert prompt["type"]["coding"][0]["code"] == "AIInputPrompt"
    assert prompt["subject"] == {"reference": f"Patient/{PATIENT}"} and labels(prompt) == {PSEUDED}
    assert decoded(prompt["content"][0]["attachment"]) == PROMPT

    # The Provenance: exactly this version, its author, its inputs and its prompt.
    assert prov["meta"]["profile"] == [
        "http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AI-Provenance"
    ]
    assert prov["target"] == [{"reference": f"DocumentReference/{doc_id}/_history/1"}]
    assert prov["policy"] == ["urn:hl7-fhir-sidecar:template:lab-report/1"]
    assert [c["code"] for r in prov["reason"] for c in r["coding"]] == ["AIAST"]
    assert [(a["type"]["coding"][0]["code"], a["who"]) for a in prov["agent"]] == [
        ("author", {"reference": f"Device/{device['id']}"}),
        ("verifier", {"display": VERIFIER}),
    ]
    assert prov["agent"][0]["role"][0]["coding"][0]["code"] == "Artificial-Intelligence"
    assert [(e["role"], e["what"]["reference"]) for e in prov["entity"]] == [
        ("source", K1),
        ("source", NA),
        ("source", PAT),
        ("derivation", f"DocumentReference/{prompt['id']}/_history/1"),
    ]

    with ctx.db.sessions() as s:
        keys = list(s.execute(select(OutboxEvent.routing_key)).scalars())
        [done] = s.execute(select(AuditEntry).where(AuditEntry.action == "summary.completed")).scalars()
    assert "summary.lab-report.completed" in keys
    detail = json.loads(done.detail)
    assert (detail["response_id"], detail["usage"]) == (
        "chatcmpl-1",
        {"prompt_tokens": 10, "completion_tokens": 5},
    )
    assert (detail["model"], detail["served"], detail["device"]) == (
        "qwen2.5-7b",
        "qwen2.5-7b-instruct-q4",
        f"Device/{device['id']}",
    )


def test_a_new_summary_is_a_new_version_by_the_same_device(ctx: PipelineContext, verifier: StandIn) -> None:
    hand_back(ctx.db, body())
    # A job queued before the report kinds were split: its summary is a lab report.
    legacy = hand_back(
        ctx.db, body(sentences=[{"text": "Sodium 140 mmol/L is normal.", "facts": [NA]}]), kind="report"
    )
    assert intake(ctx).drain() == 2
    doc_id = summary_document_id(PATIENT, "lab-report")
    with ctx.db.sessions() as s:
        assert s.get_one(Job, legacy).result == f"DocumentReference/{doc_id}"
    [summary] = [d for d in stored(ctx.db, "DocumentReference") if d["id"] == doc_id]
    assert summary["meta"]["versionId"] == "2"
    [device] = stored(ctx.db, "Device")
    assert device["meta"]["versionId"] == "1"  # same model, same Device: not a new version
    targets = sorted(p["target"][0]["reference"] for p in stored(ctx.db, "Provenance"))
    assert targets == [f"DocumentReference/{doc_id}/_history/{v}" for v in (1, 2)]
    assert len(stored(ctx.db, "DocumentReference")) == 3  # the summary and one prompt per job


def _two_k1_sentences() -> list[dict[str, Any]]:
    return [
        {"text": "Potassium 6.1 mmol/L is high.", "facts": [K1]},
        {"text": "Sodium is normal.", "facts": []},
    ]


@pytest.mark.parametrize(
    ("output", "code", "reason"),
    [
        (body(inputs=[NA, PAT]), "output-rejected", "sentence 1 cites a reference that is not an input"),
        (
            body(inputs=[K1, NA, PAT, "Observation/x1/_history/1"]),
            "output-rejected",
            "not a resource of the job's patient",
        ),
        (body(sentences=_two_k1_sentences()), "output-rejected", "sentence 2 cites no fact"),
        (
            body(inputs=[K1, NA, PAT, "Observation/na/_history/7"]),
            "output-rejected",
            "version that is not stored",
        ),
        (
            body(inputs=[K1, NA, PAT, f"DocumentReference/{'a' * 32}/_history/1"]),
            "output-rejected",
            "not a clinical resource",
        ),
        (body(inputs=[K1, NA, PAT, K1]), "output-rejected", "listed twice"),
        (body(kind="discharge"), "output-rejected", "not of this job's summary kind"),
        (body(inputs=["Observation/k1"]), "output-rejected", "inputs.0: string_pattern_mismatch"),
        ({k: v for k, v in body().items() if k != "prompt"}, "output-rejected", "prompt: missing"),
        (body(language="fr"), "output-rejected", "language: literal_error"),
        (body(sentences=[]), "output-rejected", "sentences: too_short"),
        ("not json", "output-rejected", "does not follow the contract"),
    ],
)
def test_an_output_that_breaks_the_contract_is_a_dead_letter_and_nothing_is_stored(
    ctx: PipelineContext, verifier: StandIn, output: dict[str, Any] | str, code: str, reason: str
) -> None:
    job_id = hand_back(ctx.db, output)
    assert intake(ctx).run_once() == 1
    _assert_failed(ctx.db, job_id, code, reason)
    assert verifier.calls == []  # refused before the verifier was asked


def test_a_summary_the_verifier_refuses_is_a_dead_letter_and_nothing_is_stored(
    ctx: PipelineContext, verifier: StandIn
) -> None:
    verifier.verdict = Verdict(["summary: abnormal fact(s) F1 cited by no sentence"], code="omission")
    job_id = hand_back(ctx.db, body())
    assert intake(ctx).run_once() == 1
    assert len(verifier.calls) == 1
    _assert_failed(ctx.db, job_id, "omission", "summary: abnormal fact(s) F1 cited by no sentence")


def test_a_verifier_that_breaks_fails_the_job_instead_of_storing_unverified_text(
    ctx: PipelineContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> Verdict:
        raise KeyError("F9")

    monkeypatch.setattr(outputs, "verify_stored", broken)
    job_id = hand_back(ctx.db, body())
    assert intake(ctx).run_once() == 1
    _assert_failed(ctx.db, job_id, "verifier-error", "the verifier failed: KeyError")


@pytest.mark.parametrize("where", ["sentence", "prompt", "model"])
def test_a_known_identifier_anywhere_in_the_output_is_not_stored(
    tmp_path: Path, verifier: StandIn, where: str
) -> None:
    ctx = build_context(Settings(data_dir=tmp_path, summary_coalesce_s=0))
    ingest(ctx, ADT_A01, ORU_R01)  # the real pipeline: the patient's identifier tokens are known
    with ctx.db.sessions() as s:
        patient = s.execute(
            select(Resource.resource_id).where(Resource.resource_type == "Patient")
        ).scalar_one()
        [obs] = (
            s.execute(select(Resource.resource_id).where(Resource.resource_type == "Observation"))
            .scalars()
            .all()[:1]
        )
    ref = f"Observation/{obs}/_history/1"
    output = body(inputs=[ref], sentences=[{"text": "Potassium is high.", "facts": [ref]}])
    if where == "sentence":
        output["sentences"][0]["text"] = "Harriet Quimby has high potassium."
    elif where == "prompt":
        output["prompt"] = PROMPT + "\n[F2] Seen by Quimby, Harriet"
    else:
        output["model"] = {**output["model"], "response_id": "quimby"}
    job_id = hand_back(ctx.db, output, patient=patient)
    assert intake(ctx).run_once() == 1
    _assert_failed(ctx.db, job_id, "answer-leak", "NAME")
    with ctx.db.sessions() as s:
        letter = s.execute(select(DeadLetter).where(DeadLetter.job_id == job_id)).scalar_one()
    assert "quimby" not in letter.reason.lower() and verifier.calls == []
    ctx.db.dispose()


def _assert_failed(db: Database, job_id: int, code: str, reason: str) -> None:
    with db.sessions() as s:
        job = s.get_one(Job, job_id)
        letter = s.execute(select(DeadLetter).where(DeadLetter.job_id == job_id)).scalar_one()
        routing = list(s.execute(select(OutboxEvent.routing_key)).scalars())
        outputs_left = s.execute(select(JobOutput)).first()
    assert (job.status, job.error_code) == (JobStatus.FAILED, code)
    assert (letter.code, letter.stage) == (code, "sandbox") and reason in letter.reason, letter.reason
    assert outputs_left is None
    for rtype in ("DocumentReference", "Device", "Provenance"):
        assert stored(db, rtype) == [], rtype
    assert not [r for r in routing if r.startswith("summary.") or ".Provenance." in r or ".Device." in r]


def test_the_summary_its_device_and_its_provenance_read_back_through_the_fhir_api(
    ctx: PipelineContext, verifier: StandIn
) -> None:
    hand_back(ctx.db, body())
    hand_back(ctx.db, body(sentences=[{"text": "Potassium 6.1 mmol/L is high.", "facts": [K1]}]))
    assert intake(ctx).drain() == 2
    doc_id = summary_document_id(PATIENT, "lab-report")
    token = "t0k3n-of-the-ehr"
    server = ApiServer(create_api(ctx.db, ctx.vault, {"ehr": SecretStr(token)}), "127.0.0.1", 0)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}/fhir"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            document = http.get(f"/DocumentReference/{doc_id}")
            assert document.status_code == 200, document.text
            summary = document.json()
            validate_resource(summary)
            assert summary["meta"]["versionId"] == "2" and AIAST in labels(summary)
            assert summary["docStatus"] == "preliminary"

            [author] = summary["author"]
            device = http.get(f"/{author['reference']}")
            assert device.status_code == 200, device.text
            validate_resource(device.json())
            assert device.json()["type"]["coding"][0]["code"] == "Artificial-Intelligence"

            found = http.get("/Provenance", params={"target": f"DocumentReference/{doc_id}"})
            assert found.status_code == 200, found.text
            bundle = found.json()
            validate_resource(bundle)
            provs = [e["resource"] for e in bundle["entry"]]
            for prov in provs:
                validate_resource(prov)
            assert sorted(p["target"][0]["reference"] for p in provs) == [
                f"DocumentReference/{doc_id}/_history/{v}" for v in (1, 2)
            ]
            assert all(p["agent"][0]["who"] == author for p in provs)

            # One version's Provenance only; and the prompt it names reads back as sent.
            latest = http.get(
                "/Provenance", params={"target": f"DocumentReference/{doc_id}/_history/2"}
            ).json()
            [prov] = [e["resource"] for e in latest["entry"]]
            assert prov["target"] == [{"reference": f"DocumentReference/{doc_id}/_history/2"}]
            prompt_ref = prov["entity"][-1]["what"]["reference"]
            prompt = http.get(f"/{prompt_ref}")
            assert prompt.status_code == 200 and decoded(prompt.json()["content"][0]["attachment"]) == PROMPT
            # The prompt is an entity of the Provenance, not its target: no match.
            by_prompt = http.get("/Provenance", params={"target": prompt_ref.split("/_history/")[0]}).json()
            assert by_prompt["entry"] == []

            unknown = http.get("/Provenance", params={"target": "DocumentReference/MRN7734021"})
            assert unknown.status_code == 200 and unknown.json()["entry"] == []
            # target= is Provenance's: refused when strict; ignored otherwise, which leaves a
            # search across patients, not this client's to make.
            elsewhere = {"target": f"DocumentReference/{doc_id}"}
            strict = {"Prefer": "handling=strict"}
            assert http.get("/Observation", params=elsewhere, headers=strict).status_code == 400
            assert http.get("/Observation", params=elsewhere).status_code == 403
            assert http.get("/Provenance", params={"target": "not a reference"}).status_code == 400
    finally:
        server.stop()
    with ctx.db.sessions() as s:
        searched = [
            e.entity
            for e in s.execute(select(AuditEntry).where(AuditEntry.action == "fhir.search")).scalars()
        ]
    # A target we hold is audited as such; one we do not (maybe an MRN) only as a keyed hash.
    assert f"Provenance?target=DocumentReference/{doc_id}" in searched
    assert not [e for e in searched if "MRN7734021" in e]


def test_a_chinese_summary_is_joined_without_spaces_and_each_kind_has_its_loinc_type(
    ctx: PipelineContext, verifier: StandIn
) -> None:
    sentences = [
        {"text": "血钾6.1 mmol/L，偏高。", "facts": [K1]},
        {"text": "血钠140 mmol/L，正常。", "facts": [NA]},
    ]
    hand_back(ctx.db, body(kind="discharge", language="zh", sentences=sentences), kind="discharge")
    assert intake(ctx).run_once() == 1
    assert verifier.calls[0][2] == "zh"
    [summary] = [
        d for d in stored(ctx.db, "DocumentReference") if d["id"] == summary_document_id(PATIENT, "discharge")
    ]
    text, mapping = (c["attachment"] for c in summary["content"])
    assert (decoded(text), text["language"]) == ("血钾6.1 mmol/L，偏高。血钠140 mmol/L，正常。", "zh")
    assert json.loads(decoded(mapping))["sentences"] == sentences
    assert summary["type"]["coding"][0]["code"] == "18842-5"  # LOINC Discharge summary
    assert {(k, c["code"]) for k, c in SUMMARY_TYPES.items()} == {
        ("discharge", "18842-5"),
        ("lab-report", "11502-2"),
        ("imaging-report", "18748-4"),
        ("digest", "60591-5"),
    }


def test_a_verdict_reached_on_one_output_is_not_used_for_another_under_the_same_id(
    ctx: PipelineContext, verifier: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two relays take in outputs at once (serve's and the relay process's). Between one's
    checks and its write transaction, the other takes the output, and the sandbox hands back
    another patient's output, which SQLite gives the same row id. The first must check that
    one afresh: stored with the first's verdict, one patient's summary went under another."""
    first = hand_back(ctx.db, body())
    slow, other_relay = intake(ctx), intake(ctx)
    checked_on = slow._verdict
    swapped: list[int] = []

    def checks_then_the_other_relay_acts(output_id: int, *, now: datetime) -> Any:
        verdict = checked_on(output_id, now=now)
        assert other_relay.run_once() == 1
        x1 = "Observation/x1/_history/1"
        swapped.append(
            hand_back(
                ctx.db,
                body(
                    sentences=[{"text": "Sodium 150 mmol/L is high.", "facts": [x1]}],
                    inputs=[x1, f"Patient/{OTHER}/_history/1"],
                ),
                patient=OTHER,
            )
        )
        with ctx.db.sessions() as s:
            assert s.execute(select(JobOutput.id)).scalars().all() == [output_id]  # the id again
        return verdict

    monkeypatch.setattr(slow, "_verdict", checks_then_the_other_relay_acts)
    assert slow.run_once() == 1
    [second] = swapped
    with ctx.db.sessions() as s:
        jobs = {j.id: j.result for j in s.execute(select(Job)).scalars()}
        owners = {
            r.resource_id: r.patient
            for r in s.execute(
                select(Resource).where(Resource.resource_type == "DocumentReference")
            ).scalars()
        }
    assert jobs == {
        first: f"DocumentReference/{summary_document_id(PATIENT, 'lab-report')}",
        second: f"DocumentReference/{summary_document_id(OTHER, 'lab-report')}",
    }
    assert owners[summary_document_id(PATIENT, "lab-report")] == PATIENT
    assert owners[summary_document_id(OTHER, "lab-report")] == OTHER
    [theirs] = [
        d for d in stored(ctx.db, "DocumentReference") if d["id"] == summary_document_id(OTHER, "lab-report")
    ]
    assert theirs["subject"]["reference"] == f"Patient/{OTHER}"
    assert "Sodium 150" in decoded(theirs["content"][0]["attachment"])
