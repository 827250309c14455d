"""Runs one summary job: claim → read de-identified context → the kind's template picks
the facts → prompt → PHI guard → known-identifier screen → model → guard + screen → parse →
verifier (a failing answer is asked for once more, naming what failed) → the verified
sentences and their citations handed back (``job_outputs``), all audited.

The sandbox reads only the de-identified store and its job, and writes only its job's
status and timing, its output and its audit entries (core.zones: PostgreSQL grants, the
SQLite authorizer); it imports nothing of the identified zone (import-linter contracts).
The identified zone checks the output again (the verifier too, on the versions it reads
itself) and stores it: the AI-labelled DocumentReference, the model's Device, the prompt,
the Provenance and the event, or a dead letter (sidecar.outputs). The known-identifier
screen is the identified zone's, reached through ``PromptScreen`` (sandbox.screen).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

import audit
from core.db import Database
from core.model_tables import Job, JobOutput, JobOutputKind, JobStatus
from sandbox import guard
from sandbox.answer import AnswerInvalid, Sentence, parse_answer
from sandbox.context import patient_context
from sandbox.documents import summary_document_id
from sandbox.models import ModelError, ModelReply, SummaryModel
from sandbox.prompt import Prompt, build_prompt
from sandbox.screen import (
    KnownIdentifierLeak,
    PromptScreen,
    ScreenRefused,
    ScreenUnavailable,
    Stage,
    require_clean,
)
from sandbox.templates import template_for
from sandbox.verifier import VERIFIER, verify

__all__ = [
    "SCREEN_ATTEMPTS",
    "JobOutcome",
    "JobResult",
    "due_job_ids",
    "requeue_stalled",
    "run_job",
]

log = logging.getLogger("sidecar.sandbox")

# A job whose text could not be screened waits and is tried again (the screen's side may
# be restarting); after this many claims it fails with the reason.
SCREEN_ATTEMPTS = 5
SCREEN_RETRY_BASE_S = 10.0
SCREEN_RETRY_MAX_S = 300.0
MAX_REASON_CHARS = 500
MAX_FEEDBACK_LINES = 20


class JobOutcome(StrEnum):
    DONE = "done"  # the summary handed back; the identified zone stores it
    NOT_DUE = "not-due"  # pushed back by a newer trigger, or already taken
    DEFERRED = "deferred"  # no screening verdict: pending again, due later
    FAILED = "failed"


@dataclass(frozen=True)
class JobResult:
    job_id: int
    outcome: JobOutcome
    document: str | None = None


def requeue_stalled(db: Database, *, older_than_s: float = 300.0) -> int:
    """Jobs left RUNNING by a sandbox that died or lost its database mid-job go back to
    PENDING (running twice is harmless: the output is a new version of the same document)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    with db.transaction() as session:
        result = session.execute(
            update(Job)
            .where(Job.status == JobStatus.RUNNING, Job.updated_at < cutoff)
            .values(status=JobStatus.PENDING, updated_at=datetime.now(UTC))
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def due_job_ids(db: Database, *, now: datetime | None = None, limit: int = 100) -> list[int]:
    now = now or datetime.now(UTC)
    with db.reads() as session:  # a poll: no write lock (run_job claims each one)
        query = select(Job.id).where(Job.status == JobStatus.PENDING, Job.due_at <= now)
        return list(session.execute(query.order_by(Job.due_at).limit(limit)).scalars())


def run_job(
    db: Database,
    job_id: int,
    model: SummaryModel,
    *,
    screen: PromptScreen,
    ignore_due: bool = False,
    language: str = "en",
    max_sentences: int = 12,
) -> JobResult:
    """``screen``: the identified zone's known-identifier check (required: fail closed).
    ``ignore_due``: run a pending job before its coalescing window ends (shutdown drain).
    ``language``: the summary's (en, zh): the facts' labels, the instructions, the checks."""
    now = datetime.now(UTC)
    due_by = datetime.max.replace(tzinfo=UTC) if ignore_due else now
    with db.transaction() as session:
        # Claim atomically: only a due, pending job moves to running, exactly once.
        claimed = session.execute(  # type: ignore[attr-defined]
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.PENDING, Job.due_at <= due_by)
            .values(status=JobStatus.RUNNING, attempts=Job.attempts + 1, updated_at=now)
        ).rowcount
        if not claimed:
            return JobResult(job_id, JobOutcome.NOT_DUE)
        kind, patient = session.execute(select(Job.kind, Job.patient).where(Job.id == job_id)).one()
    # Read after the claim committed (so it holds everything the job was triggered by), and
    # beside the writers: a patient's context grows with its stay, and reading and parsing
    # it inside the claim's transaction held SQLite's write lock, which the pipeline and the
    # inbox wait for, as long.
    with db.reads() as session:
        context = patient_context(session, patient)
    with db.transaction() as session:
        audit.append(
            session,
            actor="sandbox",
            action="context.read",
            entity=f"job/{job_id}",
            detail={"resources": len(context), "types": sorted({r["resourceType"] for r in context})},
            now=now,
            patients=[patient],
        )

    try:
        template = template_for(kind)
        if template is None:
            raise _JobFailure("unknown-kind", f"no summary template for kind {kind!r}")
        facts = template.facts(context, language)
        if not facts:
            raise _JobFailure("empty-context", f"no de-identified facts for a {template.kind} summary")
        prompt = build_prompt(template.name, template.kind, language, facts, max_sentences=max_sentences)
        guard.check(prompt.text)
        require_clean(screen, job_id, prompt.text, Stage.PROMPT)
        sentences, reply, attempts = _answer(db, job_id, model, prompt, screen)
    except ScreenUnavailable as exc:
        return _defer(db, job_id, str(exc))
    except (KnownIdentifierLeak, ScreenRefused, ModelError) as exc:
        return _fail(db, job_id, exc.code, str(exc))
    except (guard.PromptLeak, _JobFailure) as exc:
        return _fail(db, job_id, exc.code, str(exc))

    by_id = {fact.id: fact for fact in prompt.facts}
    body = {
        "kind": template.kind,
        "template": template.name,
        "language": language,
        "sentences": [
            {"text": s.text, "facts": [by_id[i].reference for i in dict.fromkeys(s.facts)]} for s in sentences
        ],
        "inputs": list(dict.fromkeys(fact.reference for fact in prompt.facts)),
        "prompt": prompt.text,
        "model": {
            "name": model.name,
            "version": model.version,
            "served": reply.model,
            "response_id": reply.response_id,
            "usage": reply.usage,
        },
        "attempts": attempts,
        "verifier": VERIFIER,
    }
    with db.transaction() as session:
        _hand_back(session, job_id, JobOutputKind.SUMMARY, now=now, body=json.dumps(body, ensure_ascii=False))
        audit.append(
            session,
            actor="sandbox",
            action="summary.submitted",
            entity=f"job/{job_id}",
            detail={"template": template.name, "sentences": len(sentences), "model": model.name},
            now=now,
        )
    return JobResult(
        job_id, JobOutcome.DONE, f"DocumentReference/{summary_document_id(patient, template.kind)}"
    )


def _answer(
    db: Database, job_id: int, model: SummaryModel, prompt: Prompt, screen: PromptScreen
) -> tuple[list[Sentence], ModelReply, int]:
    """Ask, screen, parse, verify; a failing answer is asked for once more, naming what
    failed. Each call is audited with what the model says it was and how it fared."""
    for attempt in (1, 2):
        reply = model.answer(prompt)
        guard.check(reply.content)
        require_clean(screen, job_id, reply.content, Stage.ANSWER)
        try:
            sentences = parse_answer(reply.content)
            report = verify(sentences, prompt.facts)
            problems, code = report.messages, report.code
        except AnswerInvalid as exc:
            sentences, problems, code = [], [str(exc)], exc.code
        _audit_call(db, job_id, attempt, model, reply, code if problems else None, len(problems))
        if not problems:
            return sentences, reply, attempt
        if attempt == 1:
            prompt = prompt.with_feedback(reply.content, problems[:MAX_FEEDBACK_LINES])
    raise _JobFailure(code, "; ".join(problems))


def _audit_call(
    db: Database,
    job_id: int,
    attempt: int,
    model: SummaryModel,
    reply: ModelReply,
    failed: str | None,
    problems: int,
) -> None:
    with db.transaction() as session:
        audit.append(
            session,
            actor="sandbox",
            action="model.answered",
            entity=f"job/{job_id}",
            outcome=audit.Outcome.FAILURE if failed else audit.Outcome.SUCCESS,
            detail={
                "attempt": attempt,
                "model": model.name,
                "served": reply.model[:200],
                "response_id": (reply.response_id or "")[:200],
                "usage": reply.usage,
                "finish_reason": reply.finish_reason,
                "verdict": failed or "verified",
                "problems": problems,
            },
        )


def _hand_back(
    session: Session,
    job_id: int,
    outcome: JobOutputKind,
    *,
    now: datetime,
    body: str | None = None,
    code: str | None = None,
    reason: str | None = None,
) -> None:
    # Core insert of the allowed columns only (an ORM add would read back more than them).
    session.execute(
        insert(JobOutput).values(
            job_id=job_id, outcome=str(outcome), body=body, code=code, reason=reason, created_at=now
        )
    )


class _JobFailure(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _defer(db: Database, job_id: int, reason: str) -> JobResult:
    """No screening verdict: nothing went to the model. Pending again with back-off, unless
    the attempts are spent or a newer pending job of the patient covers this one."""
    now = datetime.now(UTC)
    with db.transaction() as session:
        kind, patient, attempts = session.execute(
            select(Job.kind, Job.patient, Job.attempts).where(Job.id == job_id)
        ).one()
        newer = session.execute(
            select(Job.id).where(Job.kind == kind, Job.patient == patient, Job.status == JobStatus.PENDING)
        ).first()
        give_up = attempts >= SCREEN_ATTEMPTS or newer is not None
        if not give_up:
            wait = min(SCREEN_RETRY_MAX_S, SCREEN_RETRY_BASE_S * 2 ** max(0, attempts - 1))
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                .values(status=JobStatus.PENDING, due_at=now + timedelta(seconds=wait), updated_at=now)
            )
            audit.append(
                session,
                actor="sandbox",
                action="summary.deferred",
                entity=f"job/{job_id}",
                outcome=audit.Outcome.FAILURE,
                detail={"code": ScreenUnavailable.code, "attempt": attempts, "retry_in_s": wait},
                now=now,
            )
    if give_up:
        why = "a newer pending job covers it" if newer is not None else f"{SCREEN_ATTEMPTS} attempts"
        return _fail(db, job_id, ScreenUnavailable.code, f"{reason}; gave up ({why}); nothing was sent")
    log.warning("summary job deferred: no screening verdict", extra={"job_id": job_id})
    return JobResult(job_id, JobOutcome.DEFERRED)


def _fail(db: Database, job_id: int, code: str, reason: str) -> JobResult:
    """Handed back as a failure: the identified zone fails the job and files the dead
    letter with the reason (the model zone may write neither)."""
    now = datetime.now(UTC)
    with db.transaction() as session:
        _hand_back(
            session, job_id, JobOutputKind.FAILED, now=now, code=code, reason=reason[:MAX_REASON_CHARS]
        )
        audit.append(
            session,
            actor="sandbox",
            action="summary.failed",
            entity=f"job/{job_id}",
            outcome=audit.Outcome.FAILURE,
            detail={"code": code},
            now=now,
        )
    log.warning("summary job failed", extra={"job_id": job_id, "code": code})
    return JobResult(job_id, JobOutcome.FAILED)
