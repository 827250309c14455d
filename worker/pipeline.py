"""The pipeline as plain functions: load → decode → map → de-identify → store + outbox.

Stage order is the data flow of DESIGN.md. Identified data exists only in memory between
``load`` and ``deidentify``; the only write is one transaction holding de-identified
resources, their events, any summary jobs, the inbox status and the audit entry, so a
crash anywhere leaves the inbox entry RECEIVED and a rerun repeats the work exactly.

Failures are classified once, here: mapping/de-identification problems (and bugs in
them) are permanent and become dead letters; database errors are transient and
propagate so the runner retries them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

import audit
from connectors.hl7 import decode_message
from core.db import Database
from core.errors import DeidError, MappingError, SidecarError
from core.store import StoredChange, add_phi_tokens, put_resource
from core.tables import DeadLetter, InboxEntry, InboxStatus
from deid import DeidentifiedResource, Vault, deidentify
from deid.tokens import identifier_tokens
from mapping import MappingOptions, map_message
from worker.triggers import JobRequest, enqueue_jobs, summary_triggers

log = logging.getLogger("sidecar.worker.pipeline")


class Outcome(StrEnum):
    PROCESSED = "processed"
    SKIPPED = "skipped"  # already processed (a duplicate dispatch): nothing done
    DEAD_LETTERED = "dead-lettered"


@dataclass(frozen=True)
class PipelineContext:
    db: Database
    vault: Vault
    mapping_options: MappingOptions
    coalesce_s: float


@dataclass(frozen=True)
class ProcessResult:
    inbox_id: int
    outcome: Outcome
    changes: list[StoredChange] = field(default_factory=list)
    job_ids: list[int] = field(default_factory=list)


class PermanentFailure(Exception):
    """A stage failed in a way retrying the same input cannot fix (names stage and code)."""

    def __init__(self, stage: str, code: str, reason: str) -> None:
        super().__init__(reason)
        self.stage, self.code, self.reason = stage, code, reason


def process(ctx: PipelineContext, inbox_id: int) -> ProcessResult:
    with ctx.db.sessions() as session:
        entry = session.get(InboxEntry, inbox_id)
        if entry is None or entry.status != InboxStatus.RECEIVED:
            return ProcessResult(inbox_id, Outcome.SKIPPED)
        raw, charset = entry.raw, entry.charset

    try:
        transformed = transform(ctx, raw, charset)
    except PermanentFailure as failure:
        dead_letter(ctx.db, inbox_id, failure.stage, failure.code, failure.reason)
        return ProcessResult(inbox_id, Outcome.DEAD_LETTERED)

    now = datetime.now(UTC)
    with ctx.db.transaction() as session:
        entry = session.execute(
            select(InboxEntry).where(InboxEntry.id == inbox_id).with_for_update()
        ).scalar_one()
        if entry.status != InboxStatus.RECEIVED:  # another worker won the race
            return ProcessResult(inbox_id, Outcome.SKIPPED)
        changes, job_ids = store(session, ctx, inbox_id, transformed, now=now)
        entry.status = InboxStatus.PROCESSED
        entry.processed_at = now
        entry.attempts += 1
        audit.append(
            session,
            actor="worker:pipeline",
            action="message.processed",
            entity=f"inbox/{inbox_id}",
            detail=change_summary(changes, job_ids),
            now=now,
        )
    return ProcessResult(inbox_id, Outcome.PROCESSED, changes, job_ids)


def store(
    session: Session,
    ctx: PipelineContext,
    inbox_id: int,
    transformed: Transformed,
    *,
    now: datetime,
) -> tuple[list[StoredChange], list[int]]:
    """De-identified resources → new versions + outbox events + summary jobs (caller's transaction)."""
    deidentified = transformed.resources
    for patient in transformed.patients:
        add_phi_tokens(session, patient, transformed.tokens)
    origin = f"inbox:{inbox_id}"
    changes = [
        put_resource(session, item.resource, patient=item.patient, origin=origin, now=now)
        for item in deidentified
    ]
    requests: list[JobRequest] = summary_triggers(deidentified, changes)
    job_ids = enqueue_jobs(session, requests, now=now, coalesce_s=ctx.coalesce_s)
    return changes, job_ids


def change_summary(changes: list[StoredChange], job_ids: list[int]) -> dict[str, object]:
    return {
        "resources": len(changes),
        "created": sum(1 for c in changes if c.change == "created"),
        "updated": sum(1 for c in changes if c.change == "updated"),
        "jobs": job_ids,
    }


@dataclass(frozen=True)
class Transformed:
    resources: list[DeidentifiedResource]
    patients: tuple[str, ...]  # pseudonyms
    tokens: dict[str, str]  # keyed identifier token -> kind, for the outgoing leak guard


def transform(ctx: PipelineContext, raw: bytes, charset: str) -> Transformed:
    stage = "decode"
    try:
        text = decode_message(raw, charset).text
        stage = "map"
        mapped = map_message(text, ctx.mapping_options)
        stage = "deid"
        keys = {pid: (key.authority, key.value) for pid, key in mapped.patient_keys.items()}
        result = deidentify(mapped.resources, keys, mapped.phi_values, ctx.vault)
    except (MappingError, DeidError) as exc:
        raise PermanentFailure(stage, exc.code, str(exc)) from exc
    except SidecarError as exc:
        raise PermanentFailure(stage, exc.code, str(exc)) from exc
    except Exception as exc:
        # A bug in a pure stage fails the same way on every retry: dead-letter it with the
        # exception type only (its text may quote patient data).
        raise PermanentFailure(stage, "internal", f"{type(exc).__name__} in stage {stage}") from exc
    return Transformed(
        list(result.resources), result.patients, identifier_tokens(mapped.phi_values, ctx.vault)
    )


def dead_letter(db: Database, inbox_id: int, stage: str, code: str, reason: str) -> None:
    now = datetime.now(UTC)
    with db.transaction() as session:
        entry = session.get(InboxEntry, inbox_id)
        if entry is None or entry.status == InboxStatus.PROCESSED:
            return
        entry.status = InboxStatus.FAILED
        entry.error_code = code
        entry.attempts += 1
        letter = DeadLetter(inbox_id=inbox_id, stage=stage, code=code, reason=reason, created_at=now)
        session.add(letter)
        session.flush()
        audit.append(
            session,
            actor="worker:pipeline",
            action="message.dead-lettered",
            entity=f"inbox/{inbox_id}",
            outcome=audit.Outcome.FAILURE,
            detail={"stage": stage, "code": code, "dead_letter": letter.id},
            now=now,
        )
    log.warning("dead-lettered", extra={"inbox_id": inbox_id, "stage": stage, "code": code})


def pending_inbox_ids(db: Database, *, limit: int = 10_000, older_than: datetime | None = None) -> list[int]:
    """Inbox entries acknowledged but not yet through the pipeline, oldest first."""
    with db.sessions() as session:
        query = select(InboxEntry.id).where(InboxEntry.status == InboxStatus.RECEIVED)
        if older_than is not None:
            query = query.where(InboxEntry.received_at < older_than)
        return list(session.execute(query.order_by(InboxEntry.id).limit(limit)).scalars())
