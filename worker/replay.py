"""Replay: run archived inbox entries through the current mapping and policy.

Resources whose content changed get a new version and an `updated` event; unchanged ones
publish nothing (content hash), so a replay after a mapping fix announces exactly what
the fix changed. A dry run computes the same answer without writing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select

import audit
from core.store import content_hash
from core.tables import InboxEntry, InboxStatus, Resource
from worker.batch import store
from worker.pipeline import PermanentFailure, PipelineContext, change_summary, transform


@dataclass(frozen=True)
class ReplayFilter:
    since: datetime | None = None
    until: datetime | None = None
    sender: str | None = None  # MSH-3|MSH-4 as stored, or just MSH-3 (prefix match)
    message_type: str | None = None  # "ORU^R01", or "ORU" for every trigger


@dataclass
class ReplayReport:
    dry_run: bool
    messages: int = 0
    failed: int = 0
    changes: Counter[str] = field(default_factory=Counter)  # "Observation.updated" -> n

    @property
    def changed_resources(self) -> int:
        return sum(self.changes.values())


def matching_ids(ctx: PipelineContext, flt: ReplayFilter) -> list[int]:
    query = select(InboxEntry.id).where(InboxEntry.status == InboxStatus.PROCESSED)
    if flt.since is not None:
        query = query.where(InboxEntry.received_at >= flt.since)
    if flt.until is not None:
        query = query.where(InboxEntry.received_at < flt.until)
    if flt.sender:
        query = query.where(InboxEntry.sender.startswith(flt.sender, autoescape=True))
    if flt.message_type:
        query = query.where(InboxEntry.message_type.startswith(flt.message_type, autoescape=True))
    with ctx.db.sessions() as session:
        return list(session.execute(query.order_by(InboxEntry.id)).scalars())


def replay(
    ctx: PipelineContext,
    flt: ReplayFilter,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    report = ReplayReport(dry_run=dry_run)
    for inbox_id in matching_ids(ctx, flt):
        with ctx.db.sessions() as session:
            entry = session.get_one(InboxEntry, inbox_id)
            raw, charset = entry.raw, entry.charset
        report.messages += 1
        try:
            transformed = transform(ctx, raw, charset)
        except PermanentFailure:
            report.failed += 1  # the stored version stays; `sidecar convert` shows why
            continue
        now = datetime.now(UTC)
        if dry_run:
            with ctx.db.sessions() as session:
                for item in transformed.resources:
                    r = item.resource
                    head = session.execute(
                        select(Resource.content_hash).where(
                            Resource.resource_type == r["resourceType"], Resource.resource_id == r["id"]
                        )
                    ).scalar_one_or_none()
                    if head is None:
                        report.changes[f"{r['resourceType']}.created"] += 1
                    elif head != content_hash(r):
                        report.changes[f"{r['resourceType']}.updated"] += 1
        else:
            with ctx.db.transaction() as session:
                changes, job_ids = store(session, ctx, inbox_id, transformed, now=now)
                for c in changes:
                    if c.change is not None:
                        report.changes[f"{c.resource_type}.{c.change}"] += 1
                audit.append(
                    session,
                    actor="operator:replay",
                    action="message.replayed",
                    entity=f"inbox/{inbox_id}",
                    detail=change_summary(changes, job_ids),
                    now=now,
                )
        if progress is not None:
            progress(report.messages)
    if dry_run:
        # A dry run writes nothing, but it read identified messages: that is audited too.
        with ctx.db.transaction() as session:
            audit.append(
                session,
                actor="operator:replay",
                action="replay.dry-run",
                entity="inbox",
                detail={
                    "messages": report.messages,
                    "failed": report.failed,
                    "changes": dict(report.changes),
                },
            )
    return report
