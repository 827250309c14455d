"""The identified zone's answer to the sandbox's screening request.

The sandbox sends a text (its prompt, or the model's answer) with the job it belongs
to; this side checks it against the keyed identifier tokens of the job's patient
(``LeakGuard``) and answers with a verdict only: "clean", "leak" or "refused". The
patient is the job row's: only a job running right now can be screened, against its own
patient. A job gets at most ``max_per_job`` screenings, and none after a "leak" (which
fails the job here, with its dead letter): a model zone that bisects the screen learns at
most a few bits per job, where kinds on every call gave away a surname among 4,096
candidates in 12 calls. Each screening is audited (job, stage, verdict, kinds; never
text); the model zone cannot read the audit log.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

import audit
from core.db import Database
from core.tables import Job, JobStatus
from deid import Vault
from worker.deadletters import fail_job
from worker.leakguard import LeakGuard

__all__ = ["DEFAULT_MAX_PER_JOB", "ScreenService"]

log = logging.getLogger("sidecar.worker.screen")

DEFAULT_MAX_PER_JOB = 4
CLEAN, LEAK, REFUSED = "clean", "leak", "refused"  # sandbox.screen.Verdict, by value


class ScreenService:
    """Callable as ``sandbox.screen.PromptScreen``: answers the embedded sandbox over its
    link (sidecar.sandbox_process), and the ``sidecar.screen`` Celery task in production."""

    def __init__(
        self,
        db: Database,
        vault: Vault,
        *,
        max_per_job: int = DEFAULT_MAX_PER_JOB,
        actor: str = "worker:screen",
    ) -> None:
        self._db = db
        self._vault = vault
        self._max = max_per_job
        self._actor = actor

    def __call__(self, job_id: int, text: str, stage: str) -> str:
        now = datetime.now(UTC)
        stage = "prompt" if stage == "prompt" else "answer"
        kinds: list[str] = []
        # The text's tokens before the write transaction (keyed hashes of its words: the
        # costly part, and it needs no database); the patient's, read fresh inside it.
        guard = LeakGuard(self._vault)
        tokens = guard.payload_tokens(text)
        with self._db.transaction() as session:
            job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
            refusal = _refusal(job, self._max)
            if job is None or refusal is not None:
                verdict, outcome = REFUSED, audit.Outcome.FAILURE
                detail: dict[str, object] = {"stage": stage, "verdict": verdict, "why": refusal}
            else:
                job.screenings += 1
                # A fresh guard each time: the patient's tokens grow as messages arrive.
                kinds = guard.kinds_of(session, job.patient, tokens)
                verdict = LEAK if kinds else CLEAN
                outcome = audit.Outcome.FAILURE if kinds else audit.Outcome.SUCCESS
                detail = {"stage": stage, "verdict": verdict, "kinds": kinds, "screening": job.screenings}
                if kinds:
                    _fail_job(session, job, stage, kinds, now=now)
            audit.append(
                session,
                actor=self._actor,
                action="text.screened",
                entity=f"job/{job_id}",
                outcome=outcome,
                detail={**detail, "chars": len(text)},
                now=now,
            )
        if verdict == REFUSED:
            log.warning("screening refused", extra={"job_id": job_id, "why": detail["why"]})
        elif kinds:
            log.error("known identifier in sandbox text", extra={"job_id": job_id, "kinds": kinds})
        return verdict


def _refusal(job: Job | None, max_per_job: int) -> str | None:
    if job is not None and job.screen_leak:
        # First: the model zone may set its job's status back to running; not this flag.
        return "leak-found-before"
    if job is None or job.status != JobStatus.RUNNING:
        return "not-running"
    if job.screenings >= max_per_job:
        return "screenings-spent"
    return None


def _fail_job(session: Session, job: Job, stage: str, kinds: list[str], *, now: datetime) -> None:
    """A leak ends the job here, in the screening's transaction: the sandbox is told only
    "leak", and whatever it hands back for this job afterwards is discarded."""
    code = "prompt-leak" if stage == "prompt" else "answer-leak"
    where = "prompt; not sent to the model" if stage == "prompt" else "model's answer; not stored"
    job.screen_leak = True
    reason = f"known identifier(s) of the patient in the {where}: {', '.join(kinds)}"
    fail_job(session, job, code, reason, actor="worker:screen", now=now, detail={"kinds": kinds})
