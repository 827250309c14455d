"""The leak check on the other ways out: the sandbox's prompt (and the model's answer)
and the HTTP API's responses. A leak is planted the way a mapping bug would plant it: a
resource in the de-identified store whose text carries the patient's real name, for a
patient whose identifier tokens exist because real messages went through the pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from connectors import MllpClient
from connectors.inbox import DatabaseInbox
from core.db import Database
from core.errors import ConfigError
from core.settings import Settings
from core.store import put_resource
from core.tables import AuditEntry, DeadLetter, Job, JobStatus, Resource
from core.tasks import make_celery
from sandbox.models import ModelReply
from sandbox.prompt import Prompt
from sandbox.runner import SCREEN_ATTEMPTS, JobOutcome, run_job
from sandbox.screen import CeleryScreen
from sidecar.app import SidecarApp
from sidecar.outputs import OutputIntake
from tests.deployments import REPO, Embedded, msa, wait_for
from tests.fixtures.messages import ADT_A01, ORU_R01, encoded, inbound
from worker.batch import process
from worker.context import build_context
from worker.deadletters import reopen
from worker.leakguard import LeakGuard
from worker.pipeline import PipelineContext
from worker.screen import ScreenService

LEAK = "Discussed with QUIMBY, Harriet at the bedside"  # a name: no pattern guard sees it


class RecordingModel:
    """The local model stub: records every prompt it is given."""

    name = "recording-stub"
    version = "1"

    def __init__(self, answer_suffix: str = "") -> None:
        self.calls: list[Prompt] = []
        self._suffix = answer_suffix

    def answer(self, prompt: Prompt) -> ModelReply:
        self.calls.append(prompt)
        sentences: list[dict[str, Any]] = [{"text": f.text, "facts": [f.id]} for f in prompt.facts[:3]]
        sentences[0]["text"] += self._suffix
        return ModelReply(json.dumps({"sentences": sentences}), model=self.name)


def leaky_observation(patient: str, rid: str = "leaky1", text: str = LEAK) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"text": "Nursing note"},
        "subject": {"reference": f"Patient/{patient}"},
        "valueString": text,
    }


def plant(db: Database, resource: dict[str, Any], patient: str) -> None:
    """Bypass de-identification, as a mapping bug would."""
    with db.transaction() as s:
        put_resource(s, resource, patient=patient, origin="test:planted", now=datetime.now(UTC))


def patient_of(db: Database) -> str:
    with db.sessions() as s:
        return s.execute(select(Resource.resource_id).where(Resource.resource_type == "Patient")).scalar_one()


def ingest(ctx: PipelineContext, *messages: str) -> list[int]:
    """Real messages through the real pipeline: the patient's tokens land in phi_tokens."""
    inbox = DatabaseInbox(ctx.db)
    job_ids: list[int] = []
    for text in messages:
        raw = encoded(text)
        receipt = inbox.commit(inbound(raw))
        job_ids += process(ctx, receipt.inbox_id).job_ids
    inbox.close()
    return job_ids


def new_job(db: Database, patient: str) -> int:
    now = datetime.now(UTC)
    with db.transaction() as s:
        # A discharge summary: its context has every observation of the patient.
        job = Job(kind="discharge", patient=patient, status=JobStatus.PENDING, due_at=now,
                  created_at=now, updated_at=now, triggers=1, attempts=0)  # fmt: skip
        s.add(job)
        s.flush()
        return job.id


def take_outputs(ctx: PipelineContext) -> int:
    """The identified zone stores what the sandbox handed back (serve's relay loop does)."""
    return OutputIntake(ctx.db, LeakGuard(ctx.vault)).drain()


def audits(db: Database, action: str) -> list[AuditEntry]:
    with db.sessions() as s:
        return list(s.execute(select(AuditEntry).where(AuditEntry.action == action)).scalars())


def test_a_prompt_with_a_known_name_never_reaches_the_model(tmp_path: Path) -> None:
    ctx = build_context(Settings(data_dir=tmp_path, summary_coalesce_s=0))
    db = ctx.db
    [job_id] = ingest(ctx, ADT_A01, ORU_R01)
    patient = patient_of(db)
    screen = ScreenService(db, ctx.vault)

    # Control: the de-identified record passes the screen and is summarised.
    clean_model = RecordingModel()
    assert run_job(db, job_id, clean_model, screen=screen).outcome == JobOutcome.DONE
    assert take_outputs(ctx) == 1
    assert len(clean_model.calls) == 1
    verdicts = [json.loads(a.detail) for a in audits(db, "text.screened")]
    assert [(v["stage"], v["verdict"]) for v in verdicts] == [("prompt", "clean"), ("answer", "clean")]

    plant(db, leaky_observation(patient), patient)
    leaky_job = new_job(db, patient)
    model = RecordingModel()
    result = run_job(db, leaky_job, model, screen=screen)
    take_outputs(ctx)  # the sandbox's failure: the screen already failed the job

    assert result.outcome == JobOutcome.FAILED
    assert model.calls == []  # blocked before the model
    with db.sessions() as s:
        job = s.get_one(Job, leaky_job)
        assert (job.status, job.error_code, job.result) == (JobStatus.FAILED, "prompt-leak", None)
        letter = s.execute(select(DeadLetter).where(DeadLetter.job_id == leaky_job)).scalar_one()
    assert (letter.stage, letter.code) == ("sandbox", "prompt-leak")
    assert "NAME" in letter.reason and "not sent to the model" in letter.reason
    assert "Quimby" not in letter.reason.title()
    failed = [a for a in audits(db, "summary.failed") if a.entity == f"job/{leaky_job}"]
    # The screen failed the job (with the kinds); the sandbox knew only "leak".
    assert [(a.actor, json.loads(a.detail)) for a in failed] == [
        ("worker:screen", {"code": "prompt-leak", "kinds": ["NAME"], "dead_letter": letter.id}),
        ("sandbox", {"code": "prompt-leak"}),
    ]
    screened = audits(db, "text.screened")[-1]
    assert screened.actor == "worker:screen" and screened.outcome == "failure"
    assert json.loads(screened.detail)["kinds"] == ["NAME"]
    assert "quimby" not in (screened.detail + letter.reason).lower()
    ctx.db.dispose()


def test_a_model_answer_carrying_a_known_identifier_is_not_stored(tmp_path: Path) -> None:
    ctx = build_context(Settings(data_dir=tmp_path, summary_coalesce_s=0))
    [job_id] = ingest(ctx, ADT_A01, ORU_R01)
    # A name only: the pattern guard would already catch a phone number.
    model = RecordingModel(answer_suffix="\nAsk Harriet Quimby about her potassium.")
    result = run_job(ctx.db, job_id, model, screen=ScreenService(ctx.db, ctx.vault))
    take_outputs(ctx)
    assert result.outcome == JobOutcome.FAILED and len(model.calls) == 1
    with ctx.db.sessions() as s:
        assert s.get_one(Job, job_id).error_code == "answer-leak"
        stored = s.execute(select(Resource).where(Resource.resource_type == "DocumentReference")).all()
        assert stored == []
    ctx.db.dispose()


def test_without_a_verdict_the_job_waits_then_fails_and_nothing_reaches_the_model(tmp_path: Path) -> None:
    ctx = build_context(Settings(data_dir=tmp_path / "a", summary_coalesce_s=0))
    [job_id] = ingest(ctx, ADT_A01, ORU_R01)

    def down(job_id: int, text: str, stage: str) -> str:
        raise ConnectionError("the screen's side is restarting")

    model = RecordingModel()
    outcomes = [run_job(ctx.db, job_id, model, screen=down, ignore_due=True).outcome for _ in range(6)]
    assert outcomes == [JobOutcome.DEFERRED] * (SCREEN_ATTEMPTS - 1) + [JobOutcome.FAILED, JobOutcome.NOT_DUE]
    assert take_outputs(ctx) == 1
    assert model.calls == []
    with ctx.db.sessions() as s:
        job = s.get_one(Job, job_id)
        assert (job.status, job.error_code) == (JobStatus.FAILED, "screen-unavailable")
        letter = s.execute(select(DeadLetter).where(DeadLetter.job_id == job_id)).scalar_one()
        assert "ConnectionError" in letter.reason and "nothing was sent" in letter.reason
    assert len(audits(ctx.db, "summary.deferred")) == SCREEN_ATTEMPTS - 1
    ctx.db.dispose()


def test_an_operator_retry_of_a_leaked_job_gets_a_fresh_screening_budget(tmp_path: Path) -> None:
    ctx = build_context(Settings(data_dir=tmp_path, summary_coalesce_s=0))
    [job_id] = ingest(ctx, ADT_A01, ORU_R01)
    screen = ScreenService(ctx.db, ctx.vault)
    leaky = RecordingModel(answer_suffix="\nAsk Harriet Quimby about her potassium.")
    assert run_job(ctx.db, job_id, leaky, screen=screen).outcome == JobOutcome.FAILED
    take_outputs(ctx)
    with ctx.db.sessions() as s:
        letter = s.execute(select(DeadLetter).where(DeadLetter.job_id == job_id)).scalar_one()
        assert s.get_one(Job, job_id).screen_leak

    reopen(ctx.db, letter.id)  # the operator, after fixing the model
    assert run_job(ctx.db, job_id, RecordingModel(), screen=screen).outcome == JobOutcome.DONE
    assert take_outputs(ctx) == 1
    with ctx.db.sessions() as s:
        assert s.get_one(Job, job_id).status == JobStatus.DONE
        assert s.execute(select(Resource).where(Resource.resource_type == "DocumentReference")).all()
    ctx.db.dispose()


def test_a_screen_that_refuses_fails_the_job_at_once(tmp_path: Path) -> None:
    ctx = build_context(Settings(data_dir=tmp_path / "a", summary_coalesce_s=0))
    [job_id] = ingest(ctx, ADT_A01, ORU_R01)
    # Miswired: a screen over another database knows no such running job, so it refuses.
    elsewhere = build_context(Settings(data_dir=tmp_path / "b"))
    model = RecordingModel()
    result = run_job(ctx.db, job_id, model, screen=ScreenService(elsewhere.db, elsewhere.vault))
    assert result.outcome == JobOutcome.FAILED and model.calls == []
    assert take_outputs(ctx) == 1
    with ctx.db.sessions() as s:
        assert s.get_one(Job, job_id).error_code == "screen-refused"
    ctx.db.dispose()
    elsewhere.db.dispose()


def test_the_api_withholds_a_leaking_resource_and_serves_clean_ones(tmp_path: Path) -> None:
    token = "t0k3n-for-the-ehr-subscriber"
    tokens = {"ehr-subscriber": token, "auditor": "t0k3n-of-the-auditor"}
    dep = Embedded(tmp_path / "data", api_port=0, api_tokens=tokens, api_auditors=["auditor"])
    dep.start()
    try:
        with MllpClient().connect("127.0.0.1", dep.port, timeout=30) as client:
            for message in (ADT_A01, ORU_R01):
                assert msa(client.send(encoded(message)))[1] == "AA"
        dep.settle()
        # The embedded sandbox loop had its prompt and answer screened in-process.
        screened = [json.loads(a.detail) for a in audits(dep.db, "text.screened")]
        assert [(v["stage"], v["verdict"]) for v in screened] == [("prompt", "clean"), ("answer", "clean")]
        patient = patient_of(dep.db)
        plant(dep.db, leaky_observation(patient), patient)
        assert dep.app is not None and dep.app.api is not None
        base = f"http://127.0.0.1:{dep.app.api.port}"
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.get(f"/fhir/Patient/{patient}").status_code == 401
            assert http.get("/status", headers={"Authorization": "Bearer wrong"}).status_code == 401

            ok = http.get(f"/fhir/Patient/{patient}", headers=auth)
            assert ok.status_code == 200 and ok.headers["content-type"].startswith("application/fhir+json")
            assert ok.json()["id"] == patient

            blocked = http.get("/fhir/Observation/leaky1", headers=auth)
            assert blocked.status_code == 451
            body = blocked.json()
            assert body["resourceType"] == "OperationOutcome" and "NAME" in body["issue"][0]["diagnostics"]
            assert "quimby" not in blocked.text.lower() and "harriet" not in blocked.text.lower()
            assert http.get("/fhir/Observation/leaky1/_history/1", headers=auth).status_code == 451

            found = http.get("/fhir/Observation", params={"patient": f"Patient/{patient}"}, headers=auth)
            assert found.status_code == 200
            bundle = found.json()
            matches = [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
            assert len(matches) >= 2 and "leaky1" not in matches
            assert [e["search"]["mode"] for e in bundle["entry"]][-1] == "outcome"
            assert "quimby" not in found.text.lower()
            # Paging: one match per page, the next link leads to the rest.
            page = http.get(
                "/fhir/Observation", params={"patient": patient, "_count": 1}, headers=auth
            ).json()
            assert [e["resource"]["id"] for e in page["entry"]] == matches[:1]
            [after] = [link["url"] for link in page["link"] if link["relation"] == "next"]
            second = http.get(after, headers=auth).json()
            assert [e["resource"]["id"] for e in second["entry"]] == matches[1:2]

            assert http.get("/fhir/Observation/nope", headers=auth).status_code == 404
            status = http.get("/status", headers=auth)
            assert status.status_code == 200 and status.json()["resources"]["Patient"] == 1

            # The audit log is for auditors only; it shows the withheld reads, by kind.
            assert http.get("/audit", headers=auth).status_code == 403
            auditor = {"Authorization": "Bearer t0k3n-of-the-auditor"}
            log = http.get("/audit", params={"action": "fhir.withheld", "limit": 2}, headers=auditor)
            assert log.status_code == 200 and "quimby" not in log.text.lower()
            first = log.json()
            assert [e["detail"]["kinds"] for e in first["entries"]] == [["NAME"], ["NAME"]]
            rest = http.get(
                "/audit", params={"action": "fhir.withheld", "since": first["next_since"]}, headers=auditor
            ).json()
            assert len(rest["entries"]) == 1 and rest["next_since"] is None

        with dep.db.sessions() as s:
            letters = list(s.execute(select(DeadLetter).where(DeadLetter.stage == "api")).scalars())
        # One open dead letter per withheld version, however often it is asked for.
        assert {(d.code, "Observation/leaky1" in d.reason, "NAME" in d.reason) for d in letters} == {
            ("identifier-leak", True, True)
        }
        assert len(letters) == 1  # read, _history and search asked for the same version
        reads = audits(dep.db, "fhir.read")
        # An id we do not hold is the client's value (it could be an MRN): kept as a hash.
        [unknown] = [a.entity for a in reads if a.entity.startswith("Observation/h:")]
        assert {(a.actor, a.entity, a.outcome) for a in reads} == {
            ("api:ehr-subscriber", f"Patient/{patient}", "success"),
            ("api:ehr-subscriber", "Observation/leaky1", "failure"),
            ("api:ehr-subscriber", unknown, "failure"),
        }
        assert len(audits(dep.db, "fhir.withheld")) == 3  # read, vread, search
        search = audits(dep.db, "fhir.search")[0]
        assert search.outcome == "failure" and json.loads(search.detail)["withheld"] == 1
        assert len(audits(dep.db, "fhir.search")) == 3
        assert len(audits(dep.db, "fhir.vread")) == 1 and len(audits(dep.db, "status.read")) == 1
        assert [a.outcome for a in audits(dep.db, "audit.search")] == ["failure", "success", "success"]
    finally:
        dep.stop()


def test_the_api_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="api_tokens"):
        SidecarApp(Settings(data_dir=tmp_path, mllp_port=0, api_port=0))


def test_production_screening_over_rabbitmq(tmp_path: Path, rabbit_vhost: str) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=rabbit_vhost, summary_coalesce_s=0)
    ctx = build_context(settings)
    db = ctx.db
    [job_id] = ingest(ctx, ADT_A01, ORU_R01)
    patient = patient_of(db)
    plant(db, leaky_observation(patient), patient)
    with db.transaction() as s:  # a discharge summary's context has every observation
        s.get_one(Job, job_id).kind = "discharge"
    celery = make_celery(settings, "test-sandbox", results=True)
    model = RecordingModel()

    # No identified-zone worker yet: no verdict, so nothing goes to the model; the job waits.
    result = run_job(db, job_id, model, screen=CeleryScreen(celery, timeout_s=1.0))
    assert result.outcome == JobOutcome.DEFERRED and model.calls == []
    with db.sessions() as s:
        job = s.get_one(Job, job_id)
        assert job.status == JobStatus.PENDING and job.due_at.replace(tzinfo=UTC) > datetime.now(UTC)
    assert json.loads(audits(db, "summary.deferred")[0].detail)["code"] == "screen-unavailable"

    env = {**os.environ, "SIDECAR_DATA_DIR": str(tmp_path), "SIDECAR_BROKER_URL": rabbit_vhost}
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "worker", "--lane", "0"], cwd=REPO, env=env, stdout=log, stderr=log
    )
    try:
        screen = CeleryScreen(celery, timeout_s=60.0)
        # A request for a job that is not running is refused.
        assert screen(job_id, "anything", "prompt") == "refused"
        result = run_job(db, job_id, model, screen=screen, ignore_due=True)
        worker_log = (tmp_path / "worker.log").read_text()
        assert result.outcome == JobOutcome.FAILED and model.calls == [], worker_log
        with db.sessions() as s:
            assert s.get_one(Job, job_id).error_code == "prompt-leak"
            assert s.execute(select(DeadLetter.code).where(DeadLetter.job_id == job_id)).scalar_one() == (
                "prompt-leak"
            )
        verdicts = [(a.actor, json.loads(a.detail)["verdict"]) for a in audits(db, "text.screened")]
        assert verdicts == [("worker:screen", "refused"), ("worker:screen", "leak")]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        log.close()
        db.dispose()
    wait_for(lambda: worker.poll() is not None, timeout=5)
