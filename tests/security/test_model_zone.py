"""A hostile model inside the model zone reaches no identified data (issue 17).

The probe's findings: on the embedded default the sandbox had the identified zone's own
``Database`` and a screen object carrying the vault, so a model read ``inbox`` and
``reid_map``; the screen's answers (kinds, unlimited) named a surname by bisection; on
PostgreSQL the model zone's role could rewrite ``jobs.patient`` and ``resources`` and
publish through ``outbox``. Here a ``SummaryModel`` (tests/security/hostile_model.py) run
by the real sandbox process of `sidecar serve` tries each of those paths, and more, on
SQLite and on PostgreSQL (the sandbox logged in as a member of ``sidecar_model_zone``):
every attempt fails, and nothing identifying reaches a stored resource or an event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from core.db import Database
from core.settings import Settings
from core.store import put_resource
from core.tables import AuditEntry, DeadLetter, Job, JobOutput, JobStatus, Resource
from sidecar.outputs import OutputIntake
from tests.deployments import REPO, Embedded
from tests.fixtures.messages import ADT_A01, ORU_R01, encoded
from tests.security.hostile_model import STATEMENTS
from tests.test_leak_outgoing import ingest, new_job
from worker.context import build_context
from worker.leakguard import LeakGuard
from worker.pipeline import PipelineContext
from worker.screen import ScreenService

MODEL = "tests.security.hostile_model:HostileModel"
# The patient's identifiers in the fixture messages (PID-3, PID-5): none may get out.
IDENTIFIERS = ["quimby", "harriet", "mrn7734021", "7734021", "110105197604121234"]


def _run_hostile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> tuple[list[dict[str, Any]], Embedded]:
    log = tmp_path / "hostile.jsonl"
    # The sandbox process inherits the environment: where the model writes its attempts.
    monkeypatch.setenv("SIDECAR_TEST_HOSTILE_LOG", str(log))
    dep = Embedded(tmp_path / "data", sandbox_model=MODEL, **overrides)
    dep.start()
    try:
        dep.deliver(encoded(ADT_A01), encoded(ORU_R01))
    finally:
        dep.stop()
    return [json.loads(line) for line in log.read_text().splitlines()], dep


def _assert_nothing_got_through(attempts: list[dict[str, Any]], dep: Embedded) -> None:
    assert attempts, "the hostile model never ran"
    handles = [a for a in attempts if a["path"] == "handles"]
    assert handles and all(h["detail"] for h in handles), "it found no database handle to try"
    tried = {a["attempt"] for a in attempts}
    assert set(STATEMENTS) <= tried
    assert {
        "vault, settings or secret object in the process",
        "vault, secret or database on the screen object",
        "bisect the screen for the surname",
    } <= tried
    succeeded = [a for a in attempts if a["succeeded"]]
    assert succeeded == [], succeeded

    db = dep.db
    with db.sessions() as session:
        bodies = [b.lower() for b in session.execute(select(Resource.body)).scalars()]
        jobs = list(session.execute(select(Job)).scalars())
        letters = list(session.execute(select(DeadLetter).where(DeadLetter.stage == "sandbox")).scalars())
    stored = "\n".join(bodies) + "\n".join(e.decode().lower() for e in dep.events)
    assert not [i for i in IDENTIFIERS if i in stored]
    assert "hostile" not in stored
    # Every job ran and ended, each failure filed with its reason; no job changed patient.
    assert jobs and all(j.status in (JobStatus.DONE, JobStatus.FAILED) for j in jobs)
    assert len({j.patient for j in jobs}) == 1
    failed = {j.id for j in jobs if j.status == JobStatus.FAILED}
    assert failed == {letter.job_id for letter in letters}


def test_a_hostile_model_reaches_nothing_identified_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts, dep = _run_hostile(tmp_path, monkeypatch)
    _assert_nothing_got_through(attempts, dep)
    # The attempts met the authorizer (not, say, a missing table).
    reads = [a for a in attempts if a["attempt"] == "read reid_map"]
    assert reads and all("prohibited" in a["detail"] for a in reads)


def test_a_hostile_model_reaches_nothing_identified_on_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str, sandbox_url: str
) -> None:
    attempts, dep = _run_hostile(tmp_path, monkeypatch, database_url=pg_url, sandbox_database_url=sandbox_url)
    _assert_nothing_got_through(attempts, dep)
    reads = [a for a in attempts if a["attempt"] == "read reid_map"]
    assert reads and all("permission denied" in a["detail"] for a in reads)


def _running_job(ctx: PipelineContext, patient: str | None = None) -> int:
    job_id = new_job(ctx.db, patient) if patient else ingest(ctx, ADT_A01, ORU_R01)[0]
    with ctx.db.transaction() as session:
        session.get_one(Job, job_id).status = JobStatus.RUNNING  # as the sandbox's claim does
    return job_id


def test_the_screen_answers_a_verdict_only_a_few_times_per_job(tmp_path: Path) -> None:
    """The oracle finding: kinds on every call, without limit, let a model bisect a surname
    out of 4,096 candidates in 12 calls. Now: "clean", "leak" or "refused", at most
    screen_max_per_job screenings (3 here; what is tested is the cap), none after a leak."""
    ctx = build_context(Settings(data_dir=tmp_path, summary_coalesce_s=0))
    screen = ScreenService(ctx.db, ctx.vault, max_per_job=3)
    spent = _running_job(ctx)
    answers = [screen(spent, "Potassium 6.1 mmol/L", "prompt") for _ in range(4)]
    assert answers == ["clean", "clean", "clean", "refused"]

    with ctx.db.sessions() as session:
        patient = session.get_one(Job, spent).patient
    leaked = _running_job(ctx, patient)
    answers = [screen(leaked, text, "answer") for text in ("Harriet", "Quimby")]
    assert answers == ["leak", "refused"]  # the first leak ends the job's screenings
    with ctx.db.transaction() as session:
        job = session.get_one(Job, leaked)
        assert (job.status, job.error_code, job.screen_leak) == (JobStatus.FAILED, "answer-leak", True)
        letter = session.execute(select(DeadLetter).where(DeadLetter.job_id == leaked)).scalar_one()
        assert "NAME" in letter.reason and "quimby" not in letter.reason.lower()
        job.status = JobStatus.RUNNING  # the model zone may set its job's status
    assert screen(leaked, "Potassium", "answer") == "refused"
    with ctx.db.sessions() as session:
        audited = [
            json.loads(a.detail)
            for a in session.execute(select(AuditEntry).where(AuditEntry.action == "text.screened")).scalars()
        ]
    # Every screening audited, the kinds only there (the model zone cannot read the log).
    assert [a["verdict"] for a in audited] == ["clean"] * 3 + ["refused", "leak", "refused", "refused"]
    assert audited[4]["kinds"] == ["NAME"]
    assert [a.get("why") for a in audited if a["verdict"] == "refused"] == [
        "screenings-spent",
        "leak-found-before",
        "leak-found-before",
    ]
    ctx.db.dispose()


def test_an_output_that_is_not_the_jobs_own_is_rejected_and_filed(tmp_path: Path) -> None:
    """A model zone that skips its own checks and hands back another patient's records,
    or text carrying the patient's name, gets nothing stored: the identified zone checks
    the output again (sidecar.outputs) and files a dead letter with the reason."""
    ctx = build_context(Settings(data_dir=tmp_path, summary_coalesce_s=0))
    foreign = _running_job(ctx)
    with ctx.db.sessions() as session:
        patient = session.get_one(Job, foreign).patient
    named = _running_job(ctx, patient)
    now = datetime.now(UTC)
    elsewhere = {"resourceType": "Observation", "id": "elsewhere", "status": "final",
                 "code": {"text": "Potassium"}, "subject": {"reference": "Patient/someone-else"}}  # fmt: skip
    with ctx.db.transaction() as session:
        put_resource(session, elsewhere, patient="someone-else", origin="test", now=now)
        [own] = session.execute(
            select(Resource.resource_type, Resource.resource_id, Resource.version).where(
                Resource.patient == patient, Resource.resource_type == "Patient"
            )
        ).all()
    sandbox_db = Database(url=ctx.db.url, model_zone=True)
    others, mine = "Observation/elsewhere/_history/1", f"{own[0]}/{own[1]}/_history/{own[2]}"
    for job_id, cited, text in ((foreign, others, "Potassium 6.1"), (named, mine, "Harriet Q.")):
        body = {
            "kind": "lab-report",
            "template": "lab-report/1",
            "language": "en",
            "sentences": [{"text": text, "facts": [cited]}],
            "inputs": [cited],
            "prompt": f"[F1] {text}",
            "model": {"name": "m", "version": "1", "served": "m"},
            "attempts": 1,
        }
        with sandbox_db.transaction() as session:
            session.execute(
                insert(JobOutput).values(
                    job_id=job_id, outcome="summary", body=json.dumps(body), created_at=now
                )
            )
    sandbox_db.dispose()
    assert OutputIntake(ctx.db, LeakGuard(ctx.vault)).drain() == 2
    with ctx.db.sessions() as session:
        jobs = {j.id: j.error_code for j in session.execute(select(Job)).scalars()}
        letters = {d.job_id: d.reason for d in session.execute(select(DeadLetter)).scalars()}
        documents = session.execute(
            select(Resource).where(Resource.resource_type == "DocumentReference")
        ).all()
    assert (jobs[foreign], jobs[named]) == ("output-rejected", "answer-leak")
    assert "not a resource of the job's patient" in letters[foreign] and "NAME" in letters[named]
    assert documents == []
    ctx.db.dispose()


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_no_child_of_serve_inherits_a_credential_from_the_environment(tmp_path: Path) -> None:
    """The embedded sandbox is a child of `serve`: a secret, API token or database URL the
    operator passed in serve's environment must not be in the model zone's process."""
    secret, token = uuid.uuid4().hex * 2, uuid.uuid4().hex
    env = {**os.environ, "SIDECAR_SECRET": secret, "SIDECAR_API_TOKENS": json.dumps({"ops": token})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(tmp_path / "data"), "--mllp-port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        json.loads(proc.stdout.readline())  # listening: the pipeline and sandbox children run
        deadline = time.monotonic() + 30
        while len(children := _children_of(proc.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)  # two pipeline processes and the sandbox (and spawn's tracker)
        assert len(children) >= 3, children
        # The test can see a credential where there is one: serve's own starting environment.
        assert secret.encode() in Path(f"/proc/{proc.pid}/environ").read_bytes()
        for child in children:
            environ = Path(f"/proc/{child}/environ").read_bytes()
            assert secret.encode() not in environ and token.encode() not in environ, child
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
