"""Clinical moments that call for a summary, and their coalescing into jobs.

Triggers are read from the de-identified resources a message produced (not from HL7),
so the same rules hold for every feed. Only a change (created/updated) triggers: a
resend or replay that changes nothing must not summarise again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.store import StoredChange
from core.tables import Job, JobStatus
from deid import DeidentifiedResource

FINAL_REPORT_STATUSES = frozenset({"final", "amended", "corrected", "appended"})


@dataclass(frozen=True)
class JobRequest:
    kind: str
    patient: str


def summary_triggers(
    resources: Sequence[DeidentifiedResource], changes: Sequence[StoredChange]
) -> list[JobRequest]:
    requests: dict[tuple[str, str], JobRequest] = {}
    for item, change in zip(resources, changes, strict=True):
        if change.change is None or item.patient is None:
            continue
        r = item.resource
        kind: str | None = None
        if r["resourceType"] == "DiagnosticReport" and r.get("status") in FINAL_REPORT_STATUSES:
            kind = "report"
        elif r["resourceType"] == "Encounter" and r.get("status") == "finished":
            kind = "discharge"
        if kind:
            requests[(kind, item.patient)] = JobRequest(kind, item.patient)
    return list(requests.values())


def enqueue_jobs(
    session: Session, requests: Sequence[JobRequest], *, now: datetime, coalesce_s: float
) -> list[int]:
    """One pending job per (kind, patient): a new trigger pushes its due time instead of
    adding a job, so a burst of results for one patient gives one summary."""
    ids: list[int] = []
    due = now + timedelta(seconds=coalesce_s)
    for req in requests:
        job = session.execute(
            select(Job)
            .where(Job.kind == req.kind, Job.patient == req.patient, Job.status == JobStatus.PENDING)
            .with_for_update()
        ).scalar_one_or_none()
        if job is None:
            job = Job(
                kind=req.kind,
                patient=req.patient,
                status=JobStatus.PENDING,
                due_at=due,
                created_at=now,
                updated_at=now,
                triggers=1,
                attempts=0,
            )
            session.add(job)
            session.flush()
        else:
            job.triggers += 1
            job.due_at, job.updated_at = due, now
        ids.append(job.id)
    return ids
