"""The identified zone's answer to the sandbox's screening request.

The sandbox sends a text (its prompt, or the model's answer) with the job it belongs
to; this side checks it against the keyed identifier tokens of the job's patient
(``LeakGuard``) and answers with the kinds found. The patient is taken from the job
row, not believed from the request: only a job the sandbox is running right now can be
screened, and only against its own patient, so the screen cannot be used as an oracle
over every patient. Each screening is audited (job, stage, verdict, kinds; never text).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import audit
from core.db import Database
from core.tables import Job, JobStatus
from deid import Vault
from worker.leakguard import LeakGuard

log = logging.getLogger("sidecar.worker.screen")


class ScreenRefused(Exception):
    """The request does not belong to a running job of that patient."""


class ScreenService:
    """Callable as ``sandbox.screen.PromptScreen``: wired in-process when embedded, and
    behind the ``sidecar.screen`` Celery task in production."""

    def __init__(self, db: Database, vault: Vault, *, actor: str = "worker:screen") -> None:
        self._db = db
        self._vault = vault
        self._actor = actor

    def __call__(self, job_id: int, patient: str, text: str, stage: str) -> list[str]:
        now = datetime.now(UTC)
        kinds: list[str] | None = None
        with self._db.transaction() as session:
            job = session.get(Job, job_id)
            if job is not None and job.patient == patient and job.status == JobStatus.RUNNING:
                # A fresh guard each time: the patient's tokens grow as messages arrive.
                kinds = LeakGuard(self._vault).kinds_in(session, patient, text)
                outcome = audit.Outcome.FAILURE if kinds else audit.Outcome.SUCCESS
                detail = {"stage": stage, "verdict": "leak" if kinds else "clean", "kinds": kinds}
            else:
                outcome, detail = audit.Outcome.FAILURE, {"stage": stage, "verdict": "refused"}
            audit.append(
                session,
                actor=self._actor,
                action="text.screened",
                entity=f"job/{job_id}",
                outcome=outcome,
                detail={**detail, "chars": len(text)},
                now=now,
            )
        if kinds is None:
            log.warning("screening refused: not a running job of that patient", extra={"job_id": job_id})
            raise ScreenRefused(f"job {job_id} is not running for that patient")
        if kinds:
            log.error("known identifier in sandbox text", extra={"job_id": job_id, "kinds": kinds})
        return kinds
