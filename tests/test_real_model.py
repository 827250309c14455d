"""Summary jobs through a real model: SmolLM2-135M-Instruct under llama-cpp-python's
OpenAI-compatible server, over HTTP, offline (tests/fixtures/llm_server.py).

A 135M model writes some sentences right and many wrong (uncited values, wrong citations,
invented diseases): what the verifier is for. Whatever it writes, every stored sentence
must be supported by the records it cites — checked here without the verifier, from the
stored resource versions' own JSON — and every refused job must be a dead letter with a
reason, nothing of it stored.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select

from connectors.inbox import DatabaseInbox
from core.settings import Settings
from core.tables import AuditEntry, DeadLetter, Job, Resource, ResourceHistory
from sandbox.llm import ModelConfig, OpenAIChatModel
from sandbox.runner import JobOutcome, run_job
from sidecar.outputs import OutputIntake
from tests.fixtures.llm_server import LlmServer, llm_server  # noqa: F401 - the session fixture
from tests.fixtures.messages import inbound
from worker.batch import process
from worker.context import build_context
from worker.leakguard import LeakGuard
from worker.screen import ScreenService

REFUSAL_CODES = {"ungrounded", "omission", "model-bad-answer", "model-truncated", "model-empty"}
# One result per patient: the smallest context a summary can have. (SmolLM2-135M still
# gets them wrong: on this machine every answer is refused, which is the verifier's job.)
RESULTS = [
    ("Sodium", "2951-2", "139", "mmol/L", "135-145", "N"),
    ("Potassium", "2823-3", "6.1", "mmol/L", "3.5-5.1", "H"),
    ("Glucose", "2345-7", "99", "mg/dL", "70-99", "N"),
    ("Hemoglobin", "718-7", "10.1", "g/dL", "12.0-16.0", "L"),
    ("Creatinine", "2160-0", "0.9", "mg/dL", "0.6-1.3", "N"),
    ("Platelets", "777-3", "250", "10*3/uL", "150-400", "N"),
    ("Calcium", "17861-6", "8.1", "mg/dL", "8.6-10.3", "L"),
    ("Albumin", "1751-7", "4.1", "g/dL", "3.5-5.0", "N"),
]


def lab_result(n: int, name: str, code: str, value: str, unit: str, ref: str, flag: str) -> bytes:
    return (
        f"MSH|^~\\&|LIS|GENHOSP|SIDECAR|GENHOSP|20260301121000+0800||ORU^R01^ORU_R01|RM-{n}|P|2.5.1\r"
        f"PID|1||MRN9{n:05d}^^^GENHOSP^MR||Tester{n}^Ann||19700101|F\r"
        f"OBR|1|ORD-{n}|ACC-{n}|{code}^{name}^LN|||20260301113000+0800|||||||||||||||20260301120500+0800|||F\r"
        f"OBX|1|NM|{code}^{name}^LN||{value}|{unit}|{ref}|{flag}|||F|||20260301113000+0800\r"
    ).encode()


# Words our fact lines add around the record's own values (sandbox.facts), and words any
# summary uses; every other word of a stored sentence must be in a cited resource's JSON.
FACT_WORDS = set(
    [
        "patient",
        "born",
        "female",
        "male",
        "encounter",
        "inpatient",
        "outpatient",
        "finished",
        "admitted",
        "discharged",
        "from",
        "to",
        "report",
        "final",
        "amended",
        "reference",
        "high",
        "low",
        "normal",
        "abnormal",
        "critically",
        "significantly",
        "study",
        "condition",
        "the",
        "a",
        "an",
        "of",
        "was",
        "were",
        "is",
        "are",
        "and",
        "with",
        "on",
        "in",
        "at",
        "for",
        "had",
        "has",
        "showed",
        "shows",
        "result",
        "results",
        "level",
        "value",
    ]
)


def versions(session: Any, references: list[str]) -> dict[str, dict[str, Any]]:
    found = {}
    for ref in references:
        rtype, rid, _, version = ref.split("/")
        body = session.execute(
            select(ResourceHistory.body).where(
                ResourceHistory.resource_type == rtype,
                ResourceHistory.resource_id == rid,
                ResourceHistory.version == int(version),
            )
        ).scalar_one()
        found[ref] = json.loads(body)
    return found


def scalars(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in scalars(v)]
    if isinstance(value, list):
        return [s for v in value for s in scalars(v)]
    return [str(value)]


def supported(sentence: str, cited: list[dict[str, Any]]) -> list[str]:
    """What in the sentence no cited version holds: numbers (as numbers), and words."""
    text = " ".join(s for r in cited for s in scalars(r)).lower()
    numbers = {float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)}
    problems = [n for n in re.findall(r"\d+(?:\.\d+)?", sentence) if float(n) not in numbers]
    words = re.findall(r"[a-z]{3,}", sentence.lower())
    problems += [w for w in words if w not in FACT_WORDS and w not in text]
    return problems


def test_a_real_model_over_http_stores_only_what_its_records_support(
    tmp_path: Path,
    llm_server: LlmServer,  # noqa: F811
) -> None:
    # A fixed secret: the same pseudonyms and date shifts, so the same prompts every run
    # (the model's answers then repeat too).
    settings = Settings(data_dir=tmp_path, summary_coalesce_s=0, secret="real-model-test-" + "s" * 48)
    ctx = build_context(settings)
    inbox = DatabaseInbox(ctx.db)
    job_ids: list[int] = []
    for n, result in enumerate(RESULTS):
        job_ids += process(ctx, inbox.commit(inbound(lab_result(n, *result))).inbox_id).job_ids
    inbox.close()
    assert len(job_ids) == len(RESULTS)

    model = OpenAIChatModel(
        ModelConfig(base_url=llm_server.base_url, name=llm_server.model, timeout_s=120, max_tokens=384)
    )
    screen = ScreenService(ctx.db, ctx.vault)
    outcomes = {job_id: run_job(ctx.db, job_id, model, screen=screen).outcome for job_id in job_ids}
    OutputIntake(ctx.db, LeakGuard(ctx.vault)).drain()
    assert set(outcomes.values()) <= {JobOutcome.DONE, JobOutcome.FAILED}

    with ctx.db.sessions() as s:
        calls = [
            json.loads(a.detail)
            for a in s.execute(select(AuditEntry).where(AuditEntry.action == "model.answered")).scalars()
        ]
        jobs = {j.id: j for j in s.execute(select(Job).where(Job.id.in_(job_ids))).scalars()}
        letters = {d.job_id: d for d in s.execute(select(DeadLetter)).scalars()}
        documents = [
            json.loads(b)
            for b in s.execute(
                select(Resource.body).where(Resource.resource_type == "DocumentReference")
            ).scalars()
        ]
        summaries = [d for d in documents if len(d.get("content", [])) > 1]
        provenance = {
            t["reference"]: p
            for p in (
                json.loads(b)
                for b in s.execute(
                    select(Resource.body).where(Resource.resource_type == "Provenance")
                ).scalars()
            )
            for t in p["target"]
        }
        # Every call went to the real server, which says which model served it.
        assert calls and {c["served"] for c in calls} == {llm_server.model}

        for summary in summaries:
            target = f"DocumentReference/{summary['id']}/_history/{summary['meta']['versionId']}"
            sentence_map = json.loads(base64.b64decode(summary["content"][1]["attachment"]["data"]))
            inputs = {e["what"]["reference"] for e in provenance[target]["entity"]}
            for sentence in sentence_map["sentences"]:
                assert sentence["facts"] and set(sentence["facts"]) <= inputs
                cited = list(versions(s, sentence["facts"]).values())
                assert supported(sentence["text"], cited) == [], sentence

    # Each job is either done with its summary stored, or failed with a dead letter and a reason.
    for job_id, outcome in outcomes.items():
        job = jobs[job_id]
        if outcome == JobOutcome.DONE:
            assert job.status == "done" and job_id not in letters
        else:
            assert job.status == "failed" and letters[job_id].code in REFUSAL_CODES and letters[job_id].reason
    done_pairs = {(jobs[j].patient, jobs[j].kind) for j, o in outcomes.items() if o == JobOutcome.DONE}
    assert len(summaries) == len(done_pairs)
    print(
        f"\nreal model: {len(job_ids)} jobs, {len(done_pairs)} stored, "
        f"{sum(o == JobOutcome.FAILED for o in outcomes.values())} refused "
        f"({sorted(letters[j].code for j, o in outcomes.items() if o == JobOutcome.FAILED)}), "
        f"{len(calls)} model calls; kept: "
        + "; ".join(
            json.dumps(json.loads(base64.b64decode(d["content"][1]["attachment"]["data"]))["sentences"])
            for d in summaries
        )
    )
