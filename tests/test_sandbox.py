from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DatabaseError

from core.db import Database
from core.settings import Settings
from core.tables import Job, JobStatus
from sandbox import guard
from sandbox.answer import Sentence, parse_answer
from sandbox.facts import facts_for
from sandbox.models import ExtractiveSummarizer
from sandbox.prompt import build_prompt
from sandbox.verifier import verify

CONTEXT: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1976-05-02"},
    {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "Sodium"},
        "valueQuantity": {"value": 139, "unit": "mmol/L"},
        "effectiveDateTime": "2026-03-20T11:30:00+08:00",
    },
    {
        "resourceType": "Observation",
        "id": "o2",
        "status": "final",
        "code": {"coding": [{"code": "2823-3", "display": "Potassium"}]},
        "valueQuantity": {"value": 6.1, "unit": "mmol/L"},
        "interpretation": [{"coding": [{"code": "H"}]}],
        "referenceRange": [{"text": "3.5-5.1"}],
        "effectiveDateTime": "2026-03-20T11:30:00+08:00",
    },
]


def _versioned(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "meta": {"versionId": "1"}} for r in resources]


def test_prompt_puts_abnormal_results_first_and_the_offline_model_passes_the_verifier() -> None:
    prompt = build_prompt("lab-report/1", "lab-report", "en", facts_for(_versioned(CONTEXT), "en"))
    assert prompt.facts[0].line.startswith("[F1] Potassium: 6.1 mmol/L (high; reference 3.5-5.1)")
    assert prompt.facts[0].abnormal and not prompt.facts[1].abnormal
    assert "[F2] Patient: female, born 1976" in prompt.record
    guard.check(prompt.text)
    sentences = parse_answer(ExtractiveSummarizer().answer(prompt).content)
    assert verify(sentences, prompt.facts).ok


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("call 13812345678 today", "cn-mobile"),
        ("id 11010519491231002X", "cn-resident-id"),
        ("mail jane.doe@example.org", "email"),
        ("ssn 123-45-6789", "us-ssn"),
        ("phone (217) 555-0147", "phone"),
        ("MRN: 7734021", "mrn-label"),
        ("see http://his.local/patient/9", "url"),
    ],
)
def test_guard_catches_identifier_shapes_without_echoing_them(text: str, kind: str) -> None:
    with pytest.raises(guard.PromptLeak) as exc:
        guard.check(text)
    assert kind in str(exc.value)
    assert text.split()[-1] not in str(exc.value)


@pytest.mark.parametrize("text", ["Potassium 6.1 mmol/L on 2026-03-20", "LOINC 2823-3", "WBC 11.2 10*3/uL"])
def test_guard_leaves_clinical_text_alone(text: str) -> None:
    guard.check(text)


def test_the_verifier_rejects_an_invented_number() -> None:
    facts = facts_for(_versioned(CONTEXT), "en")
    report = verify([Sentence("Potassium 7.4 mmol/L, high.", ("F1",))], facts)
    assert report.codes == {"value"} and report.code == "ungrounded"


def test_normal_results_follow_abnormal_ones_newest_first() -> None:
    def obs(i: str, when: str, flag: str | None = None) -> dict[str, Any]:
        o: dict[str, Any] = {
            "resourceType": "Observation",
            "id": i,
            "code": {"text": f"T{i}"},
            "valueQuantity": {"value": 1, "unit": "u"},
            "effectiveDateTime": when,
        }
        if flag:
            o["interpretation"] = [{"coding": [{"code": flag}]}]
        return o

    resources = _versioned([obs("1", "2026-01-01"), obs("2", "2026-03-01"), obs("3", "2026-02-01", "H")])
    assert [f.text.split(":")[0] for f in facts_for(resources, "en")] == ["T3", "T2", "T1"]


def test_the_model_zone_connection_on_sqlite_does_only_what_the_allow_list_allows(tmp_path: Path) -> None:
    identified = Database(Settings(data_dir=tmp_path))
    identified.migrate()
    now = datetime.now(UTC)
    with identified.transaction() as session:
        job = Job(
            kind="report", patient="p1", status=JobStatus.PENDING, due_at=now, created_at=now, updated_at=now
        )
        session.add(job)
        session.flush()
        job_id = job.id
    zone = Database(url=identified.url, model_zone=True)
    try:
        with zone.transaction() as session:  # the claim: allowed columns only
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status=JobStatus.RUNNING, attempts=Job.attempts + 1)
            )
        refused = []
        for statement in (
            "UPDATE jobs SET patient = 'p2'",
            "SELECT created_at FROM jobs",  # a column not on the list
            "SELECT count(*) FROM inbox",
            "PRAGMA foreign_keys = OFF",
            f"ATTACH DATABASE '{tmp_path / 'other.db'}' AS other",
            "DELETE FROM job_outputs",
        ):
            with (
                pytest.raises(DatabaseError, match=r"prohibited|not authorized"),
                zone.transaction() as session,
            ):
                session.execute(text(statement))
            refused.append(statement)
        assert len(refused) == 6
    finally:
        zone.dispose()
    with identified.sessions() as session:
        assert session.execute(select(Job.status, Job.patient)).one() == (JobStatus.RUNNING, "p1")
    identified.dispose()
