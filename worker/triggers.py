"""Clinical moments that call for a summary, and their coalescing into jobs.

Triggers are read from the de-identified resources a message produced (not from HL7),
so the same rules hold for every feed. Only a change (created/updated) triggers: a
resend or replay that changes nothing must not summarise again. The kinds, and what each
shows the model, are the sandbox's templates (sandbox.templates):

- ``discharge``: an Encounter that is finished;
- ``lab-report`` / ``imaging-report``: a DiagnosticReport that is final (or amended,
  corrected, appended), imaging or not by core.reports;
- ``digest``: any change for a patient, due at the next ``summary_digest_hour`` (if set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam
from sqlalchemy.orm import Session

from core.bulk import fetch_in
from core.reports import is_imaging_report
from core.store import StoredChange
from core.tables import Job, JobStatus
from deid import DeidentifiedResource

_JOBS = cast(Table, Job.__table__)
_PUSH_JOB = (
    _JOBS.update()
    .where(_JOBS.c.id == bindparam("k_id"))
    .values(triggers=_JOBS.c.triggers + bindparam("n"), due_at=bindparam("due"), updated_at=bindparam("now"))
)

FINAL_REPORT_STATUSES = frozenset({"final", "amended", "corrected", "appended"})


@dataclass(frozen=True)
class JobRequest:
    kind: str
    patient: str
    due: datetime | None = None  # None: after the coalescing window


def next_digest(now: datetime, hour: int) -> datetime:
    today = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return today if today > now else today + timedelta(days=1)


def summary_triggers(
    resources: Sequence[DeidentifiedResource],
    changes: Sequence[StoredChange],
    *,
    now: datetime | None = None,
    digest_hour: int | None = None,
) -> list[JobRequest]:
    requests: dict[tuple[str, str], JobRequest] = {}
    digest_due = next_digest(now, digest_hour) if now is not None and digest_hour is not None else None
    for item, change in zip(resources, changes, strict=True):
        if change.change is None or item.patient is None:
            continue
        r = item.resource
        kind: str | None = None
        if r["resourceType"] == "DiagnosticReport" and r.get("status") in FINAL_REPORT_STATUSES:
            kind = "imaging-report" if is_imaging_report(r) else "lab-report"
        elif r["resourceType"] == "Encounter" and r.get("status") == "finished":
            kind = "discharge"
        if kind:
            requests[(kind, item.patient)] = JobRequest(kind, item.patient)
        if digest_due is not None:
            requests[("digest", item.patient)] = JobRequest("digest", item.patient, digest_due)
    return list(requests.values())


def enqueue_jobs(
    session: Session, requests: Sequence[JobRequest], *, now: datetime, coalesce_s: float
) -> list[int]:
    """One pending job per (kind, patient): a new trigger pushes its due time instead of
    adding a job, so a burst of results for one patient gives one summary. Returns the job
    id of each request, in order (requests for the same pair share one job). One read and
    at most two multi-row writes for a whole batch of requests."""
    if not requests:
        return []
    coalesced = now + timedelta(seconds=coalesce_s)
    triggers: dict[tuple[str, str], int] = {}
    due_of: dict[tuple[str, str], datetime] = {}
    for req in requests:
        triggers[(req.kind, req.patient)] = triggers.get((req.kind, req.patient), 0) + 1
        due_of[(req.kind, req.patient)] = req.due or coalesced
    pairs = sorted(triggers)
    ids: dict[tuple[str, str], int] = {}
    rows = fetch_in(
        session,
        "SELECT id, kind, patient FROM jobs WHERE status = {mark} AND patient IN {values}",
        sorted({patient for _, patient in pairs}),
        params=[JobStatus.PENDING.value],
        lock=True,
    )
    for job_id, kind, patient in rows:
        if (kind, patient) in triggers:
            ids[(kind, patient)] = job_id
    connection = session.connection()
    pushed = [
        {"k_id": ids[pair], "n": triggers[pair], "due": due_of[pair], "now": now}
        for pair in pairs
        if pair in ids
    ]
    if pushed:
        connection.execute(_PUSH_JOB, pushed)
    new = [pair for pair in pairs if pair not in ids]
    if new:
        new_rows = [
            {
                "kind": kind,
                "patient": patient,
                "status": JobStatus.PENDING,
                "due_at": due_of[(kind, patient)],
                "created_at": now,
                "updated_at": now,
                "triggers": triggers[(kind, patient)],
                "attempts": 0,
            }
            for kind, patient in new
        ]
        returned = connection.execute(
            _JOBS.insert().returning(_JOBS.c.id, sort_by_parameter_order=True), new_rows
        ).scalars()
        ids.update(zip(new, returned, strict=True))
    return [ids[(req.kind, req.patient)] for req in requests]
