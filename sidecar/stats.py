"""Counts for operators and tooling (`sidecar stats --json`). Keys are a contract:
documented in the README; add keys, never rename them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from connectors.journal import journal_id_of, pending_in_journal
from core.db import Database
from core.tables import (
    AppAck,
    AppAckStatus,
    AuditEntry,
    AuditPending,
    DeadLetter,
    InboxEntry,
    InboxStatus,
    IntakeJournalPosition,
    Job,
    JobStatus,
    OutboxEvent,
    PipelineStat,
    QuarantineEntry,
    Resource,
)
from mapping.ids import MESSAGE_SCOPE_AUTHORITY

# A literal, not a bound parameter: SQLite uses a partial index only for a WHERE it can see.
UNLINKED_WHERE = f"authority = '{MESSAGE_SCOPE_AUTHORITY}'"


def collect(db: Database, journal_file: Path | None = None) -> dict[str, Any]:
    """``journal_file``: the MLLP intake journal, when it is on this machine (its messages
    are counted under inbox.journal; elsewhere that key is 0)."""
    with db.reads() as s:
        by_status = dict(s.execute(select(InboxEntry.status, func.count()).group_by(InboxEntry.status)).all())
        # The WHERE clauses match the partial indexes of migration 0012 word for word.
        dialect = s.get_bind().dialect.name
        duplicates = s.execute(
            text("SELECT coalesce(sum(resend_count), 0) FROM inbox WHERE resend_count > 0")
        ).scalar_one()
        repaired = s.execute(
            text(
                "SELECT count(*) FROM inbox WHERE " + ("repaired = 1" if dialect == "sqlite" else "repaired")
            )
        ).scalar_one()
        resources = dict(
            s.execute(
                select(Resource.resource_type, func.count())
                .group_by(Resource.resource_type)
                .order_by(Resource.resource_type)
            ).all()
        )
        published = s.execute(select(func.count()).where(OutboxEvent.sent_at.is_not(None))).scalar_one()
        blocked = s.execute(text("SELECT count(*) FROM outbox WHERE blocked_at IS NOT NULL")).scalar_one()
        # A blocked event is never sent: the rest of the unsent ones are pending (both counts
        # come from indexes; asking for "unsent and not blocked" read every unsent row).
        unsent = s.execute(select(func.count()).where(OutboxEvent.sent_at.is_(None))).scalar_one() - blocked
        jobs = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        app_acks = dict(s.execute(select(AppAck.status, func.count()).group_by(AppAck.status)).all())
        stages = s.execute(
            select(PipelineStat.stage, func.sum(PipelineStat.cpu_s), func.sum(PipelineStat.entries)).group_by(
                PipelineStat.stage
            )
        ).all()
        # Patients scoped to one message (no identifier, or no PID: issue 19), as stored; the
        # WHERE clause matches the partial index of migration 0015 word for word.
        unlinked = s.execute(text(f"SELECT count(*) FROM reid_map WHERE {UNLINKED_WHERE}")).scalar_one()
        return {
            "inbox": {
                "received": sum(by_status.values()),
                "processed": by_status.get(InboxStatus.PROCESSED, 0),
                "failed": by_status.get(InboxStatus.FAILED, 0),
                "pending": by_status.get(InboxStatus.RECEIVED, 0),
                "duplicates": int(duplicates),
                "repaired": repaired,
                "journal": _journaled(s, journal_file),
            },
            "unlinked": unlinked,
            "quarantined": s.execute(select(func.count()).select_from(QuarantineEntry)).scalar_one(),
            "dead_letters": s.execute(
                select(func.count()).select_from(DeadLetter).where(DeadLetter.resolved_at.is_(None))
            ).scalar_one(),
            "resources": resources,
            "events": {"published": published, "pending": unsent, "blocked": blocked},
            "jobs": {status.value: jobs.get(status, 0) for status in JobStatus},
            "app_acks": {status.value: app_acks.get(status, 0) for status in AppAckStatus},
            "audit_entries": s.execute(select(func.count()).select_from(AuditEntry)).scalar_one(),
            "audit_pending": s.execute(select(func.count()).select_from(AuditPending)).scalar_one(),
            "pipeline": {
                # Every stage counts each entry of a batch once; "load" sees them all.
                "entries": int(max((n for _, _, n in stages), default=0) or 0),
                "cpu_ms": {stage: round(float(cpu) * 1000, 1) for stage, cpu, _ in sorted(stages)},
            },
        }


def _journaled(session: Any, journal_file: Path | None) -> int:
    journal_id = journal_id_of(journal_file) if journal_file is not None else None
    if journal_file is None or journal_id is None:
        return 0
    moved = session.execute(
        select(IntakeJournalPosition.moved_seq).where(IntakeJournalPosition.journal_id == journal_id)
    ).scalar_one_or_none()
    return pending_in_journal(journal_file, int(moved or 0))
