"""Dead letters: list, and retry after a fix (the entry goes back through the pipeline)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import audit
from core.db import Database
from core.errors import SidecarError
from core.tables import AppAck, AppAckStatus, DeadLetter, InboxEntry, InboxStatus, Job, JobStatus


def fail_job(
    session: Session,
    job: Job,
    code: str,
    reason: str,
    *,
    actor: str,
    now: datetime,
    detail: dict[str, Any] | None = None,
) -> DeadLetter:
    """A summary job failed for good, in the caller's transaction: its status, a dead letter
    with the reason (stage ``sandbox``) and a ``summary.failed`` audit entry."""
    job.status, job.error_code, job.updated_at = JobStatus.FAILED, code, now
    letter = DeadLetter(job_id=job.id, stage="sandbox", code=code, reason=reason, created_at=now)
    session.add(letter)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="summary.failed",
        entity=f"job/{job.id}",
        outcome=audit.Outcome.FAILURE,
        detail={"code": code, **(detail or {}), "dead_letter": letter.id},
        now=now,
    )
    return letter


class RetryError(SidecarError):
    code = "retry"


def reopen(db: Database, letter_id: int) -> DeadLetter:
    """Mark the dead letter resolved and put its inbox entry (or summary job) back in line.

    The entry becomes RECEIVED again, so whichever runner is active picks it up (the
    sweeper of a running `sidecar serve`, or the caller processing it at once).
    """
    now = datetime.now(UTC)
    with db.transaction() as session:
        letter = session.get(DeadLetter, letter_id, with_for_update=True)
        if letter is None:
            raise RetryError(f"no dead letter {letter_id}")
        if letter.resolved_at is not None:
            raise RetryError(f"dead letter {letter_id} was already retried")
        if letter.stage == "app-ack" and letter.inbox_id is not None:
            # The message was processed; only its application ACK goes back in line.
            ack = session.execute(
                select(AppAck).where(AppAck.inbox_id == letter.inbox_id).with_for_update()
            ).scalar_one()
            ack.status, ack.attempts, ack.due_at, ack.last_error = AppAckStatus.PENDING, 0, now, None
            entity = f"inbox/{letter.inbox_id}"
        elif letter.inbox_id is not None:
            entry = session.get_one(InboxEntry, letter.inbox_id, with_for_update=True)
            entry.status, entry.error_code = InboxStatus.RECEIVED, None
            entity = f"inbox/{letter.inbox_id}"
        elif letter.job_id is not None:
            job = session.get_one(Job, letter.job_id, with_for_update=True)
            job.status, job.error_code, job.due_at, job.updated_at = JobStatus.PENDING, None, now, now
            # An operator's retry is a new attempt: a fresh screening budget (the cap stops a
            # model bisecting the screen within one run, not a person deciding to run again).
            job.screenings, job.screen_leak = 0, False
            entity = f"job/{letter.job_id}"
        else:
            raise RetryError(f"dead letter {letter_id} names nothing to retry")
        letter.resolved_at = now
        audit.append(
            session,
            actor="operator",
            action="dead-letter.retried",
            entity=entity,
            detail={"dead_letter": letter_id, "stage": letter.stage, "code": letter.code},
            now=now,
        )
        session.expunge(letter)
        return letter
